"""Usage facts of an exchange, and the hourly rollups it adds to: pure, no I/O.

An exchange is counted once, when its row in ``usage_exchanges`` holds both
halves: the request brings the model, the conversation kind (`consumers.kinds`,
the kind winni threads it as: ``main`` for every model call that is neither a
sub-agent's nor a side request Claude Code's markers name, whatever the client,
``other`` only for what is no model call), the path and the working directory
Claude Code names (in a system message, or its system prompt); the response
brings the usage, the status, the error, the stop reason, the reply's blocks and
the timings. Both carry the session, the agent, the API key's fingerprint and
when the exchange started, so either half can open the row, whichever arrives
first. The store tells which rows the batch completed; only those are priced
(`billing.cost`) and reach `rollup`, which is what keeps redelivery and replay
from counting anything twice.

Rollups are hourly (UTC), by model, session, kind, project and key: days,
months and ccusage's 5-hour blocks are sums of hours (`consumers.metrics.usage`).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from consumers.kinds import kind_of
from consumers.metrics.billing import Cost, Tokens, Usage, parts_from_json, text, usage_of
from common.documents import parse_json
from schemas.codec import timestamp

# Claude Code names the directory it works in: "Primary working directory: /x" in a list of the
# environment (2.1.3xx, in a ``role: "system"`` message, with " (was /y)" when it moved), or
# "Working directory: /x" in the system prompt's <env> (older releases).
_WORKING_DIRECTORY = re.compile(
    r"^[ \t]*(?:-[ \t]*)?(?:Primary working directory|Working directory):[ \t]*(\S[^\r\n]*?)"
    r"(?:[ \t]+\(was [^\r\n]*\))?[ \t]*$",
    re.MULTILINE,
)
_PROJECT_LIMIT = 1024

# Prometheus's gen_ai_token_type for each token field.
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
    project: str | None
    key_fingerprint: str | None


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
    usage: Usage
    stop_reason: str | None
    blocks: Mapping[str, int]  # the reply's content blocks, by type
    key_fingerprint: str | None
    ttfb_ms: float | None
    duration_ms: float


@dataclass(frozen=True, slots=True)
class Exchange:
    """A completed ``usage_exchanges`` row (both halves known), or one request of a batch's results."""

    exchange_id: str
    session_key: str
    started_at: datetime
    model: str | None
    kind: str
    project: str
    key_fingerprint: str
    status: int
    error_type: str | None
    interrupted: bool
    has_usage: bool
    usage: Usage
    stop_reason: str | None
    blocks: Mapping[str, int]
    ttfb_ms: float | None
    duration_ms: float | None

    @property
    def hour(self) -> datetime:
        return self.started_at.replace(minute=0, second=0, microsecond=0)

    @property
    def day(self) -> date:
        return self.started_at.date()


@dataclass(frozen=True, slots=True)
class Priced:
    exchange: Exchange
    cost: Cost

    @property
    def unpriced(self) -> bool:
        return bool(self.cost.unpriced)


class RollupKey(NamedTuple):
    """What an hourly row is summed by: the leading columns of ``usage_hourly`` and its tallies."""

    hour: datetime
    model: str  # "" when none
    session_key: str
    kind: str
    project: str
    key_fingerprint: str


@dataclass(slots=True)
class Totals:
    """What one hourly rollup row gains from a batch; added to the stored row by the upsert."""

    requests: int = 0
    errors: int = 0
    interrupted: int = 0
    input: int = 0
    output: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    thinking: int = 0
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    cost: Decimal | None = None
    unpriced_requests: int = 0
    long_context_requests: int = 0
    fast_requests: int = 0
    us_only_requests: int = 0
    batch_requests: int = 0
    compactions: int = 0
    ttfb_ms_sum: float = 0.0
    ttfb_count: int = 0
    duration_ms_sum: float = 0.0
    duration_count: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    # (tally, value) -> count: error_type, stop_reason, block (content blocks by type), unpriced (what had no price)
    tallies: Counter[tuple[str, str]] = field(default_factory=Counter)


# --- the halves, from decoded events -----------------------------------------------


def clean(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; nothing we key on needs it."""
    return value.replace("\x00", "") if value and "\x00" in value else value


def request_half(event: dict[str, Any]) -> RequestHalf:
    request = event["request"]
    body = parse_json(request["body"])
    return RequestHalf(
        exchange_id=clean(event["exchange_id"]) or "",
        session_key=clean(event["session_key"]) or "",
        agent_id=clean(event["agent_id"]),
        started_at=_utc(request["received_at"]),
        model=clean(request["model"]) or None,
        kind=kind_of(request["path"], body, event["agent_id"]),
        path=clean(request["path"]) or "",
        project=working_directory(body),
        key_fingerprint=clean(event["api_key_fingerprint"]),
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
        usage=usage_of(usage),
        stop_reason=text(response["stop_reason"]),
        blocks=content_blocks(parse_json(response["message"])),
        key_fingerprint=clean(event["api_key_fingerprint"]),
        ttfb_ms=response["ttfb_ms"],
        duration_ms=response["duration_ms"],
    )


def working_directory(body: Any) -> str | None:
    """The directory Claude Code says it works in: its latest system message's, else its system prompt's; None for other clients."""
    if not isinstance(body, dict):
        return None
    messages = body["messages"] if isinstance(body.get("messages"), list) else []
    said = [m.get("content") for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "system"]
    for content in [*said, body.get("system")]:
        for block in [content] if isinstance(content, str) else content if isinstance(content, list) else []:
            found = _WORKING_DIRECTORY.search(block if isinstance(block, str) else _block_text(block))
            if found:
                return clean(found[1][:_PROJECT_LIMIT])
    return None


def _block_text(block: Any) -> str:
    value = block.get("text") if isinstance(block, dict) else None
    return value if isinstance(value, str) else ""


def content_blocks(message: Any) -> dict[str, int]:
    """A message's content blocks counted by type (``text``, ``tool_use``, ``compaction``, ``fallback``, ...)."""
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return {}
    return dict(Counter(t for b in content if isinstance(b, dict) and (t := text(b.get("type")))))


def error_type_of(status: int, error_type: str | None) -> str | None:
    """Anthropic's (or the proxy's) error type; a bare failing status when neither named one."""
    if error_type:
        return error_type
    return f"http_{status}" if status >= 400 else None


def _utc(micros: int) -> datetime:
    """Both timestamps are required by the schema, so never None; UTC, so ``.date()`` is the UTC day."""
    moment = timestamp(micros)
    assert moment is not None
    return moment


# --- completed rows and rollups --------------------------------------------------------


def exchange_from_row(row: Mapping[str, Any], project: str | None = None) -> Exchange:
    """A completed ``usage_exchanges`` row (as the store returns it); ``project`` stands in when it names none."""
    tokens = Tokens(
        input=row["input_tokens"],
        output=row["output_tokens"],
        cache_write_5m=row["cache_write_5m_tokens"],
        cache_write_1h=row["cache_write_1h_tokens"],
        cache_read=row["cache_read_tokens"],
    )
    parts = parts_from_json(row["parts"], tokens)
    return Exchange(
        exchange_id=row["exchange_id"],
        session_key=row["session_key"],
        started_at=row["started_at"],
        model=row["model"],
        kind=row["kind"],
        project=row["project"] or project or "",
        key_fingerprint=row["key_fingerprint"] or "",
        status=row["status"],
        error_type=row["error_type"],
        interrupted=row["interrupted"],
        has_usage=row["has_usage"],
        usage=Usage(
            parts=parts,
            listed=row["parts"] is not None,
            thinking=row["thinking_tokens"],
            web_search_requests=row["web_search_requests"],
            web_fetch_requests=row["web_fetch_requests"],
            speed=row["speed"],
            inference_geo=row["inference_geo"],
            service_tier=row["service_tier"],
        ),
        stop_reason=row["stop_reason"],
        blocks=orjson.loads(row["content_blocks"]) if row["content_blocks"] else {},
        ttfb_ms=row["ttfb_ms"],
        duration_ms=row["duration_ms"],
    )


def rollup(priced: Iterable[Priced]) -> dict[RollupKey, Totals]:
    """The batch's completed exchanges summed per hour, model, session, kind, project and key."""
    totals: dict[RollupKey, Totals] = defaultdict(Totals)
    for p in priced:
        e = p.exchange
        key = RollupKey(
            hour=e.hour,
            model=e.model or "",
            session_key=e.session_key,
            kind=e.kind,
            project=e.project,
            key_fingerprint=e.key_fingerprint,
        )
        add(totals[key], p)
    return dict(totals)


def add(t: Totals, p: Priced) -> None:
    e, usage, cost = p.exchange, p.exchange.usage, p.cost
    tokens = usage.tokens
    t.requests += 1
    t.interrupted += e.interrupted
    if e.error_type:
        t.errors += 1
        t.tallies["error_type", e.error_type] += 1
    for name in ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read"):
        setattr(t, name, getattr(t, name) + getattr(tokens, name))
    t.thinking += usage.thinking
    t.web_search_requests += usage.web_search_requests
    t.web_fetch_requests += usage.web_fetch_requests
    t.compactions += usage.compactions
    if cost.usd is not None:
        t.cost = cost.usd if t.cost is None else t.cost + cost.usd
    t.unpriced_requests += p.unpriced
    t.long_context_requests += cost.long_context
    t.fast_requests += cost.fast
    t.us_only_requests += cost.us_only
    t.batch_requests += cost.batch
    if e.ttfb_ms is not None:
        t.ttfb_ms_sum += e.ttfb_ms
        t.ttfb_count += 1
    if e.duration_ms is not None:
        t.duration_ms_sum += e.duration_ms
        t.duration_count += 1
    t.first_at = e.started_at if t.first_at is None else min(t.first_at, e.started_at)
    t.last_at = e.started_at if t.last_at is None else max(t.last_at, e.started_at)
    if e.stop_reason:
        t.tallies["stop_reason", e.stop_reason] += 1
    for block, n in e.blocks.items():
        t.tallies["block", block] += n
    for missing in cost.unpriced:
        t.tallies["unpriced", missing] += 1
