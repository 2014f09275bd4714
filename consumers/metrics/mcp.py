"""MCP calls counted: requests and their answers from kgb.mcp into ``mcp_usage_calls`` and ``mcp_usage_daily``.

The pure half pairs a batch's requests and answers with the calls still open
in the table, by the rule every consumer uses (`consumers.mcp.answered`); the
async half writes them in the caller's transaction and returns the calls it
answered now, exactly once each (an answer already counted is known by its
event), for the caller to show on ``/metrics`` after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from consumers import mcp
from consumers.metrics.store import columns, queries
from consumers.source import EventRecord
from schemas.codec import timestamp


class McpUsageCallRow(NamedTuple):
    call_key: str
    session_key: str
    server: str
    transport: str
    direction: str
    method: str
    tool: str | None
    jsonrpc_id: str
    connection_id: str
    day: Any
    requested_at: datetime


class McpUsageAnswerRow(NamedTuple):
    call_key: str
    answer_key: str
    protocol_version: str | None
    responded_at: datetime
    duration_ms: float
    error_type: str | None


@dataclass(frozen=True)
class Counted:
    """One answered call, as ``/metrics`` shows it."""

    server: str
    transport: str
    method: str
    tool: str | None
    protocol_version: str | None
    duration_ms: float
    error_type: str | None


@dataclass
class Pairing:
    calls: list[McpUsageCallRow] = field(default_factory=list)
    answers: list[McpUsageAnswerRow] = field(default_factory=list)


def key(message: mcp.McpMessage) -> str:
    return f"{message.event_id}:{message.part}"


def error_type(value: Any) -> str | None:
    """OpenTelemetry's ``error.type`` for MCP: the JSON-RPC error code, or ``tool_error`` for a failed tool result."""
    if not isinstance(value, dict) or not mcp.is_error_result(value):
        return None
    error = value.get("error")
    return str(error.get("code")) if isinstance(error, dict) and "code" in error else "tool_error"


def pair(events: Sequence[dict[str, Any]], open_calls: list[mcp.OpenCall], counted: set[str]) -> Pairing:
    """The batch's requests to store and its answers to the calls open before or during it."""
    open_calls = list(open_calls)
    out = Pairing()
    for event in events:
        for message in mcp.messages_of(event):
            if message.kind == "request" and message.jsonrpc_id is not None:
                at = timestamp(message.occurred_at)
                out.calls.append(
                    McpUsageCallRow(
                        call_key=key(message),
                        session_key=message.session_key,
                        server=message.server,
                        transport=mcp.transport(event),
                        direction=message.direction,
                        method=message.method or "",
                        tool=mcp.call_target(message),
                        jsonrpc_id=message.jsonrpc_id,
                        connection_id=message.connection_id,
                        day=at.date(),
                        requested_at=at,
                    )
                )
                open_calls.append(
                    mcp.OpenCall(
                        key(message), message.session_key, message.jsonrpc_id, message.direction, message.connection_id, at
                    )
                )
            elif message.kind in ("response", "error") and key(message) not in counted:
                call = mcp.answered(open_calls, message)
                if call is not None:
                    open_calls.remove(call)
                    at = timestamp(message.occurred_at)
                    out.answers.append(
                        McpUsageAnswerRow(
                            call_key=call.call_id,
                            answer_key=key(message),
                            protocol_version=event.get("protocol_version"),
                            responded_at=at,
                            duration_ms=(at - call.requested_at).total_seconds() * 1000,
                            error_type=error_type(message.value),
                        )
                    )
    return out


class McpUsageDailyRow(NamedTuple):
    day: Any
    server: str
    transport: str
    method: str
    tool: str
    calls: int
    errors: int
    duration_ms_sum: float


def daily(answered: Sequence[Any]) -> list[McpUsageDailyRow]:
    """Answered ``mcp_usage_calls`` rows summed per day, server, transport, method and tool."""
    totals: dict[tuple[Any, ...], list[float]] = {}
    for row in answered:
        total = totals.setdefault((row["day"], row["server"], row["transport"], row["method"], row["tool"] or ""), [0, 0, 0.0])
        total[0] += 1
        total[1] += row["error_type"] is not None
        total[2] += row["duration_ms"]
    return [
        McpUsageDailyRow(
            day=day,
            server=server,
            transport=transport,
            method=method,
            tool=tool,
            calls=int(calls),
            errors=int(errors),
            duration_ms_sum=duration,
        )
        for (day, server, transport, method, tool), (calls, errors, duration) in sorted(totals.items())
    ]


def counted_call(row: Any) -> Counted:
    return Counted(
        row["server"],
        row["transport"],
        row["method"],
        row["tool"],
        row["protocol_version"],
        row["duration_ms"],
        row["error_type"],
    )


async def write_mcp_usage(conn: asyncpg.Connection, records: Sequence[EventRecord]) -> list[Counted]:
    """The batch's MCP calls stored and the ones answered now rolled up; call inside a transaction."""
    events = [r.event for r in records if mcp.is_mcp(r.event)]
    if not events:
        return []
    q = queries()
    answers = [key(m) for e in events for m in mcp.messages_of(e) if m.kind in ("response", "error")]
    counted = {row["answer_key"] for row in await conn.fetch(q.mcp_counted_answers, answers)} if answers else set()
    sessions = sorted({mcp.session_key(e) for e in events})
    open_calls = [mcp.open_call(row) for row in await conn.fetch(q.mcp_usage_open, sessions)]
    pairing = pair(events, open_calls, counted)
    if pairing.calls:
        await conn.execute(q.add_mcp_calls, *columns(pairing.calls))
    if not pairing.answers:
        return []
    answered = await conn.fetch(q.answer_mcp_calls, *columns(pairing.answers))
    if answered:
        await conn.execute(q.add_mcp_daily, *columns(daily(answered)))
    return [counted_call(row) for row in answered]
