"""The MCP stage: ``kgb.mcp`` events into ``mcp_sessions``, ``mcp_messages``, ``mcp_calls`` and ``mcp_http_requests``.

The pure half (`plan`) reads a batch's events in order with what the tables
already hold (each session's message count, its unanswered calls, the
messages already stored) and returns the rows to write; the async half loads
that state and writes the rows in the caller's transaction.

Rules:
- every message is stored once, at the next position of its session, keyed by
  (event id, part): a redelivered event adds nothing;
- a request opens a call (id uuid5 of its event); an answer (result or error)
  closes the oldest open call of its session with its JSON-RPC id asked the
  other way, preferring one asked on the same connection or HTTP request,
  since a stateless session's clients reuse ids;
- a notification joins a call: ``notifications/progress`` by its token,
  ``notifications/cancelled`` by the id it names (which marks the call
  cancelled), and any other on an HTTP response stream the one request of
  that stream;
- OPEN, CLOSE and EXCHANGE events say when a session was seen, how it ended
  (a WebSocket close, the shim's server exiting, an HTTP DELETE answered
  2xx), and each HTTP request's status, headers and timings.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import orjson

from consumers import mcp
from consumers.source import EventRecord
from consumers.winni.bodies import jsonb_safe
from consumers.winni.store import headers_json, queries, without_nul
from schemas.codec import timestamp

# Fixed forever: call ids derive from it, so a replay finds the same ids.
NAMESPACE = uuid.UUID("3a4f0c1e-6b1d-4c56-9d0e-2f7a8b9c0d11")


class McpSessionRow(NamedTuple):
    session_key: str
    server: str
    transport: str
    upstream_url: str | None
    mcp_session_id: str | None
    protocol_version: str | None
    client_info: str | None
    server_info: str | None
    command: str | None
    first_seen: datetime
    last_seen: datetime
    ended_at: datetime | None
    end_reason: str | None
    message_count: int


class McpMessageRow(NamedTuple):
    session_key: str
    position: int
    event_id: str
    part: int
    connection_id: str
    direction: str
    kind: str | None
    method: str | None
    jsonrpc_id: str | None
    payload: str
    flag: str | None
    call_id: uuid.UUID | None
    occurred_at: datetime


class McpCallRow(NamedTuple):
    call_id: uuid.UUID
    session_key: str
    server: str
    direction: str
    method: str
    jsonrpc_id: str
    name: str | None
    arguments: str | None
    tool_use_name: str | None
    progress_token: str | None
    connection_id: str
    request_event_id: str
    requested_at: datetime


class McpAnswerRow(NamedTuple):
    call_id: uuid.UUID
    result: str | None
    error: str | None
    is_error: bool
    response_event_id: str
    responded_at: datetime
    duration_ms: float


class McpNoteRow(NamedTuple):
    call_id: uuid.UUID
    notifications: str
    cancelled: bool


class McpHttpRow(NamedTuple):
    connection_id: str
    session_key: str
    server: str
    method: str
    path: str
    query: str
    status: int | None
    content_type: str | None
    error_type: str | None
    error_message: str | None
    request_headers: str
    response_headers: str
    request_body_size: int
    response_body_size: int
    started_at: datetime
    ttfb_ms: float | None
    duration_ms: float
    client_disconnected: bool
    upstream_complete: bool


@dataclass
class Writes:
    sessions: dict[str, McpSessionRow] = field(default_factory=dict)
    messages: list[McpMessageRow] = field(default_factory=list)
    calls: list[McpCallRow] = field(default_factory=list)
    answers: list[McpAnswerRow] = field(default_factory=list)
    notes: dict[uuid.UUID, tuple[list[dict[str, Any]], bool]] = field(default_factory=dict)
    http: list[McpHttpRow] = field(default_factory=list)

    def note_rows(self) -> list[McpNoteRow]:
        return [
            McpNoteRow(call_id=call_id, notifications=orjson.dumps(notes).decode(), cancelled=cancelled)
            for call_id, (notes, cancelled) in self.notes.items()
        ]


# --- pure ---------------------------------------------------------------------------


def call_id_of(message: mcp.McpMessage) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{message.event_id}:{message.part}")


def dumps(value: Any) -> str | None:
    """JSON for a jsonb column: the \\u0000 escape jsonb refuses becomes U+FFFD."""
    return None if value is None else jsonb_safe(orjson.dumps(value).decode())


def payload_text(payload: bytes) -> str:
    """The payload as text for ``json_or_text``: JSON stays JSON, anything else becomes readable text."""
    return payload.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def end_of(event: dict[str, Any]) -> str | None:
    """How an event ends its session, if it does."""
    if event["kind"] == "CLOSE":
        process = event.get("process")
        if event.get("error_type") == "server_failed_to_start":
            return "server_failed_to_start"
        if process and process.get("exit_code") is not None:
            return f"exit {process['exit_code']}"
        return f"close {event['close_code']}" if event.get("close_code") is not None else event.get("error_type") or "closed"
    http = event.get("http")
    if event["kind"] == "EXCHANGE" and http and http["method"] == "DELETE" and 200 <= (http["status"] or 0) < 300:
        return "deleted"
    return None


def http_row(event: dict[str, Any]) -> McpHttpRow:
    http = event["http"]
    return McpHttpRow(
        connection_id=event["connection_id"],
        session_key=mcp.session_key(event),
        server=event["upstream"],
        method=http["method"],
        path=http["path"],
        query=http["query"],
        status=http["status"],
        content_type=http["content_type"],
        error_type=event.get("error_type"),
        error_message=event.get("error_message"),
        request_headers=headers_json(http["request_headers"]),
        response_headers=headers_json(http["response_headers"]),
        request_body_size=http["request_body_size"],
        response_body_size=http["response_body_size"],
        started_at=timestamp(http["started_at"]),
        ttfb_ms=http["ttfb_ms"],
        duration_ms=http["duration_ms"],
        client_disconnected=http["client_disconnected"],
        upstream_complete=http["upstream_complete"],
    )


def session_row(
    event: dict[str, Any], previous: McpSessionRow | None, count: int, messages: Sequence[mcp.McpMessage]
) -> McpSessionRow:
    """The session as this event leaves it, merged with what the batch said before (as the upsert merges)."""
    at = timestamp(event["occurred_at"])
    process = event.get("process")
    ended = end_of(event)
    clients = [info for info in map(mcp.client_info, messages) if info]
    servers = [info for info in map(mcp.server_info, messages) if info]
    fresh = McpSessionRow(
        session_key=mcp.session_key(event),
        server=event["upstream"],
        transport=mcp.transport(event),
        upstream_url=event.get("upstream_url"),
        mcp_session_id=event.get("mcp_session_id"),
        protocol_version=event.get("protocol_version"),
        client_info=dumps(clients[0]) if clients else None,
        server_info=dumps(servers[0]) if servers else None,
        command=dumps(process["command"]) if process else None,
        first_seen=at,
        last_seen=at,
        ended_at=at if ended else None,
        end_reason=ended,
        message_count=count,
    )
    if previous is None:
        return fresh
    return previous._replace(
        upstream_url=previous.upstream_url or fresh.upstream_url,
        mcp_session_id=previous.mcp_session_id or fresh.mcp_session_id,
        protocol_version=fresh.protocol_version or previous.protocol_version,
        client_info=previous.client_info or fresh.client_info,
        server_info=previous.server_info or fresh.server_info,
        command=previous.command or fresh.command,
        first_seen=min(previous.first_seen, at),
        last_seen=max(previous.last_seen, at),
        ended_at=fresh.ended_at or previous.ended_at,
        end_reason=fresh.end_reason or previous.end_reason,
        message_count=count,
    )


def noted(open_calls: list[mcp.OpenCall], message: mcp.McpMessage, transport: str) -> tuple[mcp.OpenCall | None, bool]:
    """The call a notification belongs to, and whether it cancels it: progress by its token, cancellation by the
    id it names, and otherwise (progress without a known token too) the one request of its HTTP stream."""
    in_session = [c for c in open_calls if c.session_key == message.session_key]
    if message.method == "notifications/cancelled":
        wanted = mcp.cancelled_request(message)
        return next((c for c in in_session if c.jsonrpc_id == wanted and c.direction == message.direction), None), True
    token = mcp.notified_token(message) if message.method == "notifications/progress" else None
    by_token = next((c for c in in_session if token is not None and c.progress_token == token), None)
    on_stream = [c for c in in_session if c.connection_id == message.connection_id]
    return by_token or (on_stream[0] if transport == "streamable_http" and len(on_stream) == 1 else None), False


def call_row(message: mcp.McpMessage) -> McpCallRow:
    name = mcp.call_target(message)
    return McpCallRow(
        call_id=call_id_of(message),
        session_key=message.session_key,
        server=message.server,
        direction=message.direction,
        method=message.method or "",
        jsonrpc_id=message.jsonrpc_id or "null",
        name=name,
        arguments=dumps(mcp.call_arguments(message)),
        tool_use_name=mcp.claude_tool_name(message.server, name) if message.method == "tools/call" and name else None,
        progress_token=mcp.progress_token(message),
        connection_id=message.connection_id,
        request_event_id=message.event_id,
        requested_at=timestamp(message.occurred_at),
    )


def answer_row(call: mcp.OpenCall, message: mcp.McpMessage) -> McpAnswerRow:
    value = message.value if isinstance(message.value, dict) else {}
    at = timestamp(message.occurred_at)
    return McpAnswerRow(
        call_id=call.call_id,
        result=dumps(value.get("result")),
        error=dumps(value.get("error")),
        is_error=mcp.is_error_result(value),
        response_event_id=message.event_id,
        responded_at=at,
        duration_ms=(at - call.requested_at).total_seconds() * 1000,
    )


@dataclass
class Planner:
    """One batch's walk through its events; `plan` is the whole of it."""

    counts: dict[str, int]
    open_calls: list[mcp.OpenCall]
    stored: set[tuple[str, int]]
    writes: Writes = field(default_factory=Writes)

    def event(self, event: dict[str, Any]) -> None:
        key = mcp.session_key(event)
        messages = [m for m in mcp.messages_of(event) if (m.event_id, m.part) not in self.stored]
        for message in messages:
            self.message(message, mcp.transport(event))
        previous = self.writes.sessions.get(key)
        self.writes.sessions[key] = session_row(event, previous, self.counts.get(key, 0), messages)
        if event["kind"] == "EXCHANGE" and event.get("http"):
            self.writes.http.append(http_row(event))

    def message(self, message: mcp.McpMessage, transport: str) -> None:
        position = self.counts.get(message.session_key, 0)
        self.counts[message.session_key] = position + 1
        self.stored.add((message.event_id, message.part))
        call = self.join(message, transport)
        self.writes.messages.append(
            McpMessageRow(
                session_key=message.session_key,
                position=position,
                event_id=message.event_id,
                part=message.part,
                connection_id=message.connection_id,
                direction=message.direction,
                kind=message.kind,
                method=message.method,
                jsonrpc_id=message.jsonrpc_id,
                payload=payload_text(message.payload),
                flag=message.flag,
                call_id=call,
                occurred_at=timestamp(message.occurred_at),
            )
        )

    def join(self, message: mcp.McpMessage, transport: str) -> uuid.UUID | None:
        """The call this message opens, closes or reports on."""
        if message.kind == "request" and message.jsonrpc_id is not None:
            row = call_row(message)
            self.writes.calls.append(row)
            self.open_calls.append(
                mcp.OpenCall(
                    row.call_id,
                    row.session_key,
                    row.jsonrpc_id,
                    row.direction,
                    row.connection_id,
                    row.requested_at,
                    row.progress_token,
                )
            )
            return row.call_id
        if message.kind in ("response", "error"):
            call = mcp.answered(self.open_calls, message)
            if call is None:
                return None
            self.open_calls.remove(call)
            self.writes.answers.append(answer_row(call, message))
            return call.call_id
        if message.kind == "notification":
            call, cancels = noted(self.open_calls, message, transport)
            if call is None:
                return None
            notes, cancelled = self.writes.notes.get(call.call_id, ([], False))
            notes.append({"method": message.method, "params": message.params, "at": timestamp(message.occurred_at).isoformat()})
            self.writes.notes[call.call_id] = (notes, cancelled or cancels)
            return call.call_id
        return None


def plan(
    events: Iterable[dict[str, Any]], counts: dict[str, int], open_calls: list[mcp.OpenCall], stored: set[tuple[str, int]]
) -> Writes:
    planner = Planner(dict(counts), list(open_calls), set(stored))
    for event in events:
        planner.event(event)
    return planner.writes


# --- async: the stage ------------------------------------------------------------------


def mcp_events(records: Sequence[EventRecord]) -> list[dict[str, Any]]:
    return [r.event for r in records if mcp.is_mcp(r.event)]


async def mcp_stage(conn: asyncpg.Connection, records: Sequence[EventRecord]) -> None:
    """A winni stage: the batch's MCP events, in the caller's transaction."""
    events = mcp_events(records)
    if not events:
        return
    q = queries()
    keys = sorted({mcp.session_key(e) for e in events})
    stored = {(row["event_id"], row["part"]) for row in await conn.fetch(q.mcp_stored_messages, [e["event_id"] for e in events])}
    counts = {row["session_key"]: row["message_count"] for row in await conn.fetch(q.mcp_message_counts, keys)}
    open_calls = [mcp.open_call(row) for row in await conn.fetch(q.mcp_open_calls, keys)]
    writes = plan(events, counts, open_calls, stored)
    steps = (
        (q.upsert_mcp_session, [writes.sessions[key] for key in sorted(writes.sessions)]),
        (q.insert_mcp_call, writes.calls),
        (q.insert_mcp_message, writes.messages),
        (q.answer_mcp_call, writes.answers),
        (q.note_mcp_call, writes.note_rows()),
        (q.insert_mcp_http_request, writes.http),
    )
    for sql, rows in steps:
        if rows:
            await conn.executemany(sql, without_nul(rows))
