"""The price table: which dollar rates apply to a model's tokens.

Prices are read as `Decimal` straight from the TOML text (never through a
float), so a cost computed from them is exact to the last digit and the
tests can compare it with `==`. The table ships with the code
(``prices.toml``, dated, with its source); ``KGB_PRICES`` names a file that
replaces it whole, for negotiated rates or a model released after the table.

Model ids carry a date suffix (``claude-sonnet-4-5-20250929``), Vertex's an
``@`` one, some an ``-latest``; the table lists the id without it, and an
exact id in the table wins, so one dated release can be priced apart.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kgb.config import SettingsError

_SUFFIX = re.compile(r"(?:[-@]\d{8}|-latest)$")
RATES = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens of each kind."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal


@dataclass(frozen=True)
class PriceTable:
    version: str
    source: str
    web_search_per_1000: Decimal
    models: Mapping[str, Price]

    def price_of(self, model: str | None) -> Price | None:
        """The price of ``model``: its exact id first, then the id without its date suffix."""
        if not model:
            return None
        return self.models.get(model) or self.models.get(canonical_model(model))


def canonical_model(model: str) -> str:
    """``claude-sonnet-4-5-20250929`` → ``claude-sonnet-4-5``; ids without a suffix unchanged."""
    return _SUFFIX.sub("", model)


def parse_prices(text: str, where: str) -> PriceTable:
    """A table from TOML text; ``where`` names the file in errors."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
        models = {name: _price(rates) for name, rates in data["models"].items()}
        return PriceTable(
            version=str(data["version"]),
            source=str(data.get("source", where)),
            web_search_per_1000=_rate(data["web_search_per_1000"]),
            models=MappingProxyType(models),
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


def _price(rates: dict[str, Any]) -> Price:
    unknown = set(rates) - set(RATES)
    if unknown:
        raise ValueError(f"unknown rates {sorted(unknown)}")
    return Price(*(_rate(rates[name]) for name in RATES))


def _rate(value: Any) -> Decimal:
    """A non-negative number; bools and strings are refused (TOML would let them through)."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or value < 0:
        raise ValueError(f"{value!r} is not a price")
    return Decimal(value)
