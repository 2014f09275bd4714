"""What the API bills for one response, from the usage object it reports: pure, no I/O.

Token kinds follow Anthropic's usage object: ``input_tokens`` is the input not
read from or written to the cache; cache writes are split by lifetime from
``cache_creation.ephemeral_5m_input_tokens`` and ``..._1h_...``, or, from older
APIs without the split, all of ``cache_creation_input_tokens`` at the 5-minute
rate (the only lifetime those offered). ``output_tokens_details.thinking_tokens``
is a part of ``output_tokens``, kept for observability, never billed twice.

A response may list ``usage.iterations``: one entry per sampling (the turns of
a server-side tool loop, a server-side ``compaction``, an ``advisor_message``
of another model, the ``fallback_message`` of the model that served a declined
turn). Each is a request of its own to the API's pricing: its own model, and its
own prompt length against a long-context threshold ("each request is priced on
its own"); a ``compaction`` entry's tokens are not in the top-level fields. So
when iterations are listed the bill is their sum, and the top-level counts
only say what the server tools did.

On top of the model's rates, what the usage reports: ``speed: "fast"`` (fast
mode rates, which have no long-context premium), ``inference_geo: "us"``
(the model's US-only multiplier), and batch (the table's batch multiplier, for
Message Batches results). Web search costs the edition's price per 1,000 at
list price; web fetch costs nothing beyond its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from consumers.metrics.prices import Edition, ModelPrice, PriceTable, Rates

MILLION = Decimal(1_000_000)
THOUSAND = Decimal(1_000)
_INT64_MAX = 2**63 - 1
ITERATION_TYPES = ("message", "compaction", "advisor_message", "fallback_message")


@dataclass(frozen=True, slots=True)
class Tokens:
    """Billed tokens of each kind (the names of `prices.RATES`)."""

    input: int = 0
    output: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0

    def prompt(self) -> int:
        """What a long-context threshold is measured against: every input token, cached or not."""
        return self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True, slots=True)
class Part:
    """One sampling: a ``usage.iterations`` entry, or the whole response when it lists none."""

    tokens: Tokens
    model: str | None = None  # None: the requested model
    type: str = "message"


@dataclass(frozen=True, slots=True)
class Usage:
    """The billing facts of one usage object."""

    parts: tuple[Part, ...] = ()
    listed: bool = False  # the parts are ``usage.iterations``
    thinking: int = 0
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    speed: str | None = None
    inference_geo: str | None = None
    service_tier: str | None = None

    @property
    def tokens(self) -> Tokens:
        return sum((p.tokens for p in self.parts), Tokens())

    @property
    def compactions(self) -> int:
        return sum(p.type == "compaction" for p in self.parts)

    @property
    def served_by(self) -> str | None:
        """The model whose output was returned when a fallback served the turn."""
        return next((p.model for p in self.parts if p.type == "fallback_message"), None)

    def billable(self) -> bool:
        return bool(self.tokens) or self.web_search_requests > 0


@dataclass(frozen=True, slots=True)
class Cost:
    """``usd`` is None exactly when something billable lacks a price; ``unpriced`` says what."""

    usd: Decimal | None
    version: str
    unpriced: tuple[str, ...] = ()
    long_context: bool = False
    fast: bool = False
    us_only: bool = False
    batch: bool = False


# --- usage objects -------------------------------------------------------------


def usage_of(raw: Any) -> Usage:
    """The billing facts of Anthropic's usage object; missing or odd values count as 0, never an error."""
    if not isinstance(raw, dict):
        return Usage()
    listed = (
        [entry for entry in raw.get("iterations") or () if isinstance(entry, dict)]
        if isinstance(raw.get("iterations"), list)
        else []
    )
    parts = tuple(_part(entry) for entry in listed) or (Part(tokens_of(raw)),)
    server = _dict(raw.get("server_tool_use"))
    return Usage(
        parts=parts,
        listed=bool(listed),
        thinking=count(_dict(raw.get("output_tokens_details")).get("thinking_tokens")),
        web_search_requests=count(server.get("web_search_requests")),
        web_fetch_requests=count(server.get("web_fetch_requests")),
        speed=text(raw.get("speed")),
        inference_geo=text(raw.get("inference_geo")),
        service_tier=text(raw.get("service_tier")),
    )


def tokens_of(usage: dict[str, Any]) -> Tokens:
    split = usage.get("cache_creation")
    if isinstance(split, dict) and ("ephemeral_5m_input_tokens" in split or "ephemeral_1h_input_tokens" in split):
        write_5m, write_1h = count(split.get("ephemeral_5m_input_tokens")), count(split.get("ephemeral_1h_input_tokens"))
    else:
        write_5m, write_1h = count(usage.get("cache_creation_input_tokens")), 0
    return Tokens(
        input=count(usage.get("input_tokens")),
        output=count(usage.get("output_tokens")),
        cache_write_5m=write_5m,
        cache_write_1h=write_1h,
        cache_read=count(usage.get("cache_read_input_tokens")),
    )


def _part(entry: dict[str, Any]) -> Part:
    kind = entry.get("type")
    return Part(tokens_of(entry), text(entry.get("model")), kind if kind in ITERATION_TYPES else "message")


def count(value: Any) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT64_MAX
    return value if ok else 0


def text(value: Any) -> str | None:
    """A short string field as stored: PostgreSQL text cannot hold NUL."""
    return value.replace("\x00", "")[:200] or None if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parts_json(usage: Usage) -> str | None:
    """The iterations as stored (``usage_exchanges.parts``): only when the usage listed them."""
    if not usage.listed:
        return None
    return orjson.dumps([[p.type, p.model, *(getattr(p.tokens, f.name) for f in fields(Tokens))] for p in usage.parts]).decode()


def parts_from_json(stored: str | None, tokens: Tokens) -> tuple[Part, ...]:
    """`parts_json` read back; without it, one part of ``tokens``."""
    if stored is None:
        return (Part(tokens),)
    return tuple(Part(Tokens(*numbers), model, type_) for type_, model, *numbers in orjson.loads(stored))


# --- cost ----------------------------------------------------------------------------


def cost(usage: Usage, model: str | None, at: datetime, table: PriceTable, *, batch: bool = False) -> Cost:
    """The bill of ``usage`` for a request to ``model`` made at ``at``; nothing billable costs 0 whatever the model.

    ``version`` is the newest edition that priced it: the one in force, or a later
    one that first lists a part's model.
    """
    in_force = table.edition_at(at)
    batch = batch or usage.service_tier == "batch"
    if not usage.billable():
        return Cost(Decimal(0), in_force.version)
    priced = [_price_part(part, model, at, table, usage, batch) for part in usage.parts if part.tokens]
    missing = tuple(dict.fromkeys(p.missing for p in priced if p.missing))
    newest = max((p.edition for p in priced if p.edition), key=lambda e: e.effective, default=in_force)
    searches = usage.web_search_requests * in_force.web_search_per_1000 / THOUSAND
    return Cost(
        usd=None if missing else sum((p.usd for p in priced), searches),
        version=max(newest, in_force, key=lambda e: e.effective).version,
        unpriced=missing,
        long_context=any(p.long_context for p in priced),
        fast=any(p.fast for p in priced),
        us_only=any(p.us_only for p in priced),
        batch=batch,
    )


@dataclass(frozen=True, slots=True)
class _PartCost:
    usd: Decimal = Decimal(0)
    edition: Edition | None = None
    missing: str | None = None  # what has no price
    long_context: bool = False
    fast: bool = False
    us_only: bool = False


def _price_part(part: Part, model: str | None, at: datetime, table: PriceTable, usage: Usage, batch: bool) -> _PartCost:
    name = part.model or model
    found = table.price_of(name, at)
    if found is None:
        return _PartCost(missing=name or "(no model)")
    price, edition = found
    fast = usage.speed == "fast"
    rates = _rates(price, part.tokens, fast)
    if rates is None:
        return _PartCost(edition=edition, missing=f"{name} (fast mode)")
    us_only = usage.inference_geo == "us" and price.us_only_multiplier != 1
    multiplier = (price.us_only_multiplier if us_only else Decimal(1)) * (table.batch_multiplier if batch else Decimal(1))
    per_million = sum((getattr(part.tokens, f.name) * getattr(rates, f.name) for f in fields(Tokens)), Decimal(0))
    return _PartCost(
        usd=per_million * multiplier / MILLION,
        edition=edition,
        long_context=not fast and rates is not price.rates,
        fast=fast,
        us_only=us_only,
    )


def _rates(price: ModelPrice, tokens: Tokens, fast: bool) -> Rates | None:
    """Fast mode's rates (None when the model has none), else the long-context ones over the threshold."""
    if fast:
        return price.fast
    if price.long_context is not None and tokens.prompt() > price.long_context.above:
        return price.long_context.rates
    return price.rates
