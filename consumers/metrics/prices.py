"""The price table: which dollar rates applied to a model's tokens at a given moment.

Prices change (a cache-read cut, a premium withdrawn), and an exchange must be
priced by the rates in force when it happened, so the table is a list of dated
editions (``prices.toml``); each lists the models whose prices it sets, whole.
`PriceTable.price_of` looks a model up in the edition in force at a moment and,
for a model no edition in force lists yet, in the edition that first lists it:
its first price is the only one there is, and an exchange a day before a
model's listing date is likelier an early listing than a free call.

Prices are read as `Decimal` straight from the TOML text (never through a
float), so a cost computed from them is exact to the last digit and the tests
compare it with `==`. The table ships with the code; ``KGB_PRICES`` names a
file that replaces it whole, for negotiated rates or a model released after the
table. A file in the layout before editions (``version``, ``web_search_per_1000``
and ``[models.*]`` at the top) is one edition in force forever.

Model ids carry a date suffix (``claude-sonnet-4-5-20250929``), Vertex's an
``@`` one, some an ``-latest``, Claude Code's a ``[1m]``; the table lists the
id without it, and an exact id in the table wins, so one dated release can be
priced apart.
"""

from __future__ import annotations

import re
import tomllib
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any

from common.config import SettingsError

_SUFFIX = re.compile(r"(?:[-@]\d{8}|-latest)?(?:\[[^\]]*\])?$")
RATES = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_MODEL_KEYS = {*RATES, "long_context", "fast", "us_only_multiplier"}
_EDITION_KEYS = {"effective", "version", "note", "web_search_per_1000", "models"}
_BEGINNING = datetime.min.replace(tzinfo=UTC)
ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens of each kind."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal


@dataclass(frozen=True, slots=True)
class LongContext:
    """The rates of every token of a request whose prompt is over ``above`` tokens."""

    above: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class ModelPrice:
    rates: Rates
    long_context: LongContext | None = None
    fast: Rates | None = None
    us_only_multiplier: Decimal = ONE


@dataclass(frozen=True)
class Edition:
    """The prices in force from ``effective`` on: every model listed so far, as this edition or the last to list it sets it."""

    version: str
    effective: datetime
    web_search_per_1000: Decimal
    models: Mapping[str, ModelPrice]


@dataclass(frozen=True)
class PriceTable:
    source: str
    batch_multiplier: Decimal
    editions: tuple[Edition, ...]  # oldest first

    @property
    def version(self) -> str:
        """The newest edition's version: what a consumer started with this table prices today's exchanges by."""
        return self.editions[-1].version

    @property
    def models(self) -> Mapping[str, ModelPrice]:
        return self.editions[-1].models

    def edition_at(self, at: datetime) -> Edition:
        """The edition in force at ``at``; before the first, the first."""
        index = bisect_right([e.effective for e in self.editions], at) - 1
        return self.editions[max(index, 0)]

    def price_of(self, model: str | None, at: datetime) -> tuple[ModelPrice, Edition] | None:
        """``model``'s price at ``at`` and the edition it comes from: exact id first, then without its suffix."""
        if not model:
            return None
        in_force = self.edition_at(at)
        later = self.editions[self.editions.index(in_force) + 1 :]
        for edition in (in_force, *later):
            for name in (model, canonical_model(model)):
                if name in edition.models:
                    return edition.models[name], edition
        return None


def canonical_model(model: str) -> str:
    """``claude-sonnet-4-5-20250929`` → ``claude-sonnet-4-5``; ids without a suffix unchanged."""
    return _SUFFIX.sub("", model)


def parse_prices(text: str, where: str) -> PriceTable:
    """A table from TOML text; ``where`` names the file in errors."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
        if "editions" not in data:
            data = _one_edition(data)
        return PriceTable(
            source=str(data.get("source", where)),
            batch_multiplier=_rate(data.get("batch_multiplier", Decimal("0.5"))),
            editions=_editions(data["editions"]),
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SettingsError(f"price table {where} is not usable: {type(exc).__name__}: {exc}") from None


def load_prices(path: str | None = None) -> PriceTable:
    """The table in ``path`` (``KGB_PRICES``), else the one shipped beside this module."""
    if path is None:
        return parse_prices((files(__package__) / "prices.toml").read_text(encoding="utf-8"), "prices.toml")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"KGB_PRICES={path}: {exc.strerror}") from None
    return parse_prices(text, path)


def _one_edition(data: dict[str, Any]) -> dict[str, Any]:
    """The layout before editions: one edition, in force from the beginning."""
    edition = {"version": data["version"], "web_search_per_1000": data["web_search_per_1000"], "models": data["models"]}
    return {**{k: v for k, v in data.items() if k in ("source", "batch_multiplier")}, "editions": [edition]}


def _editions(raw: list[dict[str, Any]]) -> tuple[Edition, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("no [[editions]]")
    editions: list[Edition] = []
    for entry in raw:
        unknown = set(entry) - _EDITION_KEYS
        if unknown:
            raise ValueError(f"unknown edition keys {sorted(unknown)}")
        effective = _moment(entry["effective"]) if "effective" in entry else _BEGINNING
        if editions and effective <= editions[-1].effective:
            raise ValueError(f"edition {effective.date()} is not later than {editions[-1].version}")
        models = {name: _model(name, rates) for name, rates in entry.get("models", {}).items()}
        previous = editions[-1] if editions else None
        editions.append(
            Edition(
                version=str(entry.get("version", effective.date().isoformat())),
                effective=effective,
                web_search_per_1000=(
                    _rate(entry["web_search_per_1000"])
                    if "web_search_per_1000" in entry or previous is None
                    else previous.web_search_per_1000
                ),
                models=MappingProxyType({**(previous.models if previous else {}), **models}),
            )
        )
    return tuple(editions)


def _moment(value: Any) -> datetime:
    """A TOML date is its day's 00:00 UTC; a datetime without an offset is UTC."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError(f"effective {value!r} is not a date")


def _model(name: str, entry: dict[str, Any]) -> ModelPrice:
    unknown = set(entry) - _MODEL_KEYS
    if unknown:
        raise ValueError(f"{name}: unknown rates {sorted(unknown)}")
    rates = Rates(*(_rate(entry[k]) for k in RATES))
    long_context = None
    if "long_context" in entry:
        given = dict(entry["long_context"])
        above = given.pop("above")
        if isinstance(above, bool) or not isinstance(above, int) or above <= 0:
            raise ValueError(f"{name}: long_context.above {above!r} is not a token count")
        long_context = LongContext(above, _premium(name, "long_context", rates, given))
    fast = _premium(name, "fast", rates, dict(entry["fast"])) if "fast" in entry else None
    return ModelPrice(rates, long_context, fast, _rate(entry.get("us_only_multiplier", ONE)))


def _premium(name: str, what: str, base: Rates, given: dict[str, Any]) -> Rates:
    """Premium rates: input and output as given, cache rates as given or scaled like the input."""
    unknown = set(given) - set(RATES)
    if unknown or "input" not in given or "output" not in given:
        raise ValueError(f"{name}: {what} needs input and output (and at most the cache rates), got {sorted(given)}")
    scaled = {k: getattr(base, k) * _rate(given["input"]) / base.input if base.input else Decimal(0) for k in RATES[2:]}
    return replace(base, **{**scaled, **{k: _rate(v) for k, v in given.items()}})


def _rate(value: Any) -> Decimal:
    """A non-negative number; bools and strings are refused (TOML would let them through)."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or value < 0:
        raise ValueError(f"{value!r} is not a price")
    return Decimal(value)
