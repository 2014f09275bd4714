"""Usage facts of an exchange, its cost, and the daily rollups it adds to: pure, no I/O.

An exchange is counted once, when its row in ``usage_exchanges`` holds both
halves: the request brings the model, the conversation kind (`consumers.kinds`,
the kind winni threads it as: ``main`` for every model call that is neither a
sub-agent's nor a side request Claude Code's markers name, whatever the client,
``other`` only for what is no model call) and the path;
the response brings the usage, the status, the error and the timings. Both
carry the session, the agent and when the exchange started, so either half
can open the row, whichever arrives first. The store tells which rows the
batch completed; only those reach `price` and `rollup`, which is what keeps
redelivery and replay from counting anything twice.

Token kinds follow Anthropic's usage object: ``input_tokens`` is the input
not read from or written to the cache; cache writes are split by lifetime
from ``cache_creation.ephemeral_5m_input_tokens`` and ``..._1h_...``, or,
from older APIs without the split, all of ``cache_creation_input_tokens``
at the 5-minute rate (the only lifetime those offered).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from consumers.kinds import kind_of
from consumers.metrics.prices import PriceTable
from consumers.winni.store import timestamp
from kgb.documents import parse_json

MILLION = Decimal(1_000_000)
THOUSAND = Decimal(1_000)
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Tokens:
    input: int = 0
    output: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    web_search_requests: int = 0

    def billable(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


# Prometheus's gen_ai_token_type for each token field; web searches are requests, not tokens.
TOKEN_TYPES = {
    "input": "input",
    "output": "output",
    "cache_read": "cache_read",
    "cache_write_5m": "cache_creation_5m",
    "cache_write_1h": "cache_creation_1h",
}


@dataclass(frozen=True, slots=True)
class RequestHalf:
    exchange_id: str
    session_key: str
    agent_id: str | None
    started_at: datetime
    model: str | None
    kind: str
    path: str

    @property
    def day(self) -> date:
        return self.started_at.date()


@dataclass(frozen=True, slots=True)
class ResponseHalf:
    exchange_id: str
    session_key: str
    agent_id: str | None
    started_at: datetime
    status: int
    error_type: str | None
    interrupted: bool
    has_usage: bool
    tokens: Tokens
    ttfb_ms: float | None
    duration_ms: float

    @property
    def day(self) -> date:
        return self.started_at.date()


@dataclass(frozen=True, slots=True)
class Exchange:
    """A completed ``usage_exchanges`` row: both halves known."""

    exchange_id: str
    session_key: str
    day: date
    model: str | None
    kind: str
    status: int
    error_type: str | None
    interrupted: bool
    has_usage: bool
    tokens: Tokens
    ttfb_ms: float | None
    duration_ms: float


@dataclass(frozen=True, slots=True)
class Priced:
    """``cost`` is None exactly when ``unpriced``: billable usage on a model the table lacks."""

    exchange: Exchange
    cost: Decimal | None
    unpriced: bool


RollupKey = tuple[date, str, str, str]  # day, model ("" when none), session, kind


@dataclass(slots=True)
class Totals:
    """What one rollup row gains from a batch; added to the stored row by the upsert."""

    requests: int = 0
    errors: int = 0
    interrupted: int = 0
    input: int = 0
    output: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    web_search_requests: int = 0
    cost: Decimal | None = None
    unpriced_requests: int = 0
    ttfb_ms_sum: float = 0.0
    ttfb_count: int = 0
    duration_ms_sum: float = 0.0
    errors_by_type: dict[str, int] = field(default_factory=dict)


# --- the halves, from decoded events -----------------------------------------------


def clean(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; nothing we key on needs it."""
    return text.replace("\x00", "") if text and "\x00" in text else text


def request_half(event: dict[str, Any]) -> RequestHalf:
    request = event["request"]
    return RequestHalf(
        exchange_id=clean(event["exchange_id"]) or "",
        session_key=clean(event["session_key"]) or "",
        agent_id=clean(event["agent_id"]),
        started_at=_utc(request["received_at"]),
        model=clean(request["model"]) or None,
        kind=kind_of(request["path"], parse_json(request["body"]), event["agent_id"]),
        path=clean(request["path"]) or "",
    )


def response_half(event: dict[str, Any]) -> ResponseHalf:
    response = event["response"]
    error_type = error_type_of(response["status"], clean(response["error_type"]))
    usage = parse_json(response["usage"])
    cut = response["client_disconnected"] or not response["upstream_complete"]
    return ResponseHalf(
        exchange_id=clean(event["exchange_id"]) or "",
        session_key=clean(event["session_key"]) or "",
        agent_id=clean(event["agent_id"]),
        started_at=_utc(response["started_at"]),
        status=response["status"],
        error_type=error_type,
        interrupted=cut and error_type is None,
        has_usage=isinstance(usage, dict),
        tokens=tokens_of(usage),
        ttfb_ms=response["ttfb_ms"],
        duration_ms=response["duration_ms"],
    )


def error_type_of(status: int, error_type: str | None) -> str | None:
    """Anthropic's (or the proxy's) error type; a bare failing status when neither named one."""
    if error_type:
        return error_type
    return f"http_{status}" if status >= 400 else None


def tokens_of(usage: Any) -> Tokens:
    """Token counts from Anthropic's usage object; missing or odd values count as 0."""
    if not isinstance(usage, dict):
        return Tokens()
    split = usage.get("cache_creation")
    if isinstance(split, dict) and ("ephemeral_5m_input_tokens" in split or "ephemeral_1h_input_tokens" in split):
        write_5m, write_1h = _count(split.get("ephemeral_5m_input_tokens")), _count(split.get("ephemeral_1h_input_tokens"))
    else:
        write_5m, write_1h = _count(usage.get("cache_creation_input_tokens")), 0
    server = usage.get("server_tool_use")
    return Tokens(
        input=_count(usage.get("input_tokens")),
        output=_count(usage.get("output_tokens")),
        cache_write_5m=write_5m,
        cache_write_1h=write_1h,
        cache_read=_count(usage.get("cache_read_input_tokens")),
        web_search_requests=_count(server.get("web_search_requests")) if isinstance(server, dict) else 0,
    )


def _count(value: Any) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT64_MAX
    return value if ok else 0


def _utc(micros: int) -> datetime:
    """Both timestamps are required by the schema, so never None; UTC, so ``.date()`` is the UTC day."""
    moment = timestamp(micros)
    assert moment is not None
    return moment


# --- cost and rollups ----------------------------------------------------------


def price(exchange: Exchange, table: PriceTable) -> Priced:
    """Its cost at ``table``'s rates; nothing billable costs 0 whatever the model."""
    tokens = exchange.tokens
    if not tokens.billable():
        return Priced(exchange, Decimal(0), False)
    rates = table.price_of(exchange.model)
    if rates is None:
        return Priced(exchange, None, True)
    per_million = (
        tokens.input * rates.input
        + tokens.output * rates.output
        + tokens.cache_write_5m * rates.cache_write_5m
        + tokens.cache_write_1h * rates.cache_write_1h
        + tokens.cache_read * rates.cache_read
    )
    searches = tokens.web_search_requests * table.web_search_per_1000 / THOUSAND
    return Priced(exchange, per_million / MILLION + searches, False)


def rollup(priced: Iterable[Priced]) -> dict[RollupKey, Totals]:
    """The batch's completed exchanges summed per day, model, session and kind."""
    totals: dict[RollupKey, Totals] = defaultdict(Totals)
    for p in priced:
        e = p.exchange
        add(totals[(e.day, e.model or "", e.session_key, e.kind)], p)
    return dict(totals)


def add(t: Totals, p: Priced) -> None:
    e, tokens = p.exchange, p.exchange.tokens
    t.requests += 1
    t.interrupted += e.interrupted
    if e.error_type:
        t.errors += 1
        t.errors_by_type[e.error_type] = t.errors_by_type.get(e.error_type, 0) + 1
    for name in ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read", "web_search_requests"):
        setattr(t, name, getattr(t, name) + getattr(tokens, name))
    if p.cost is not None:
        t.cost = p.cost if t.cost is None else t.cost + p.cost
    t.unpriced_requests += p.unpriced
    if e.ttfb_ms is not None:
        t.ttfb_ms_sum += e.ttfb_ms
        t.ttfb_count += 1
    t.duration_ms_sum += e.duration_ms


def exchange_from_row(row: Mapping[str, Any]) -> Exchange:
    """A completed ``usage_exchanges`` row (as the store returns it) as an `Exchange`."""
    return Exchange(
        exchange_id=row["exchange_id"],
        session_key=row["session_key"],
        day=row["day"],
        model=row["model"],
        kind=row["kind"],
        status=row["status"],
        error_type=row["error_type"],
        interrupted=row["interrupted"],
        has_usage=row["has_usage"],
        tokens=Tokens(
            input=row["input_tokens"],
            output=row["output_tokens"],
            cache_write_5m=row["cache_write_5m_tokens"],
            cache_write_1h=row["cache_write_1h_tokens"],
            cache_read=row["cache_read_tokens"],
            web_search_requests=row["web_search_requests"],
        ),
        ttfb_ms=row["ttfb_ms"],
        duration_ms=row["duration_ms"],
    )
