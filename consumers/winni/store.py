"""Exchange events to `exchanges` rows, and the few statements that write them.

The pure half turns one decoded event into the parameters of one named query
(`queries.sql`); the async half runs them with ``executemany`` inside the
caller's transaction. Bodies are never parsed here: PostgreSQL decides whether
a body is JSON it can store (`json_or_text`), which is the one parse it must do
anyway. The conversation stage, which parses each request body once for its
own rules, may hand over a `Split` body instead: the body without ``messages``
(stored once per position in ``messages``) and without ``system`` and
``tools`` (stored once per distinct value in ``request_parts``), which keeps
both the rows and PostgreSQL's parsing small (migration 003).

A body becomes jsonb when PostgreSQL accepts it as JSON, else text when it is
UTF-8 without NUL, else bytea. jsonb cannot hold ``\\u0000``, so such a body
stays text; in ``message`` and ``usage`` (convenience copies of what the body
holds exactly) that escape is replaced by U+FFFD instead.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple

import asyncpg
import orjson

from consumers.errors import InvalidEvent
from consumers.source import EventRecord, Reject
from consumers.sql import Queries, load_queries
from consumers.winni.bodies import (
    NUL_ESCAPE,
    PART_FIELDS,
    Body,
    SentKey,
    as_body,
    jsonb_safe,
    part_hashes,
    part_json,
    sent_escape_nul,
)
from consumers.winni.thread_rules import ExchangeLink
from schemas.codec import timestamp

USAGE_COLUMNS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")

_INT64 = range(-(2**63), 2**63)


@cache
def queries() -> Queries:
    return load_queries("consumers.winni")


# --- pure: events to rows ------------------------------------------------------


def headers_json(headers: Iterable[dict[str, str]]) -> str:
    """Headers as one JSON object, names lower-cased, repeated ones joined with ", ".

    An object is what people query (``request_headers->>'anthropic-version'``);
    the wire order and exact spelling stay on the topic.
    """
    merged: dict[str, str] = {}
    for header in headers:
        name = header["name"].lower()
        merged[name] = f"{merged[name]}, {header['value']}" if name in merged else header["value"]
    return orjson.dumps(merged).decode()


def body_columns(body: bytes) -> tuple[str | None, bytes | None]:
    """(text, None) for UTF-8 without NUL, which PostgreSQL may store as jsonb or text; else (None, bytes)."""
    if b"\x00" in body:
        return None, body
    try:
        return body.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, body


def without_nul(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with every NUL in a string made U+FFFD: text columns refuse NUL, and a client that
    put one in a field (``metadata.user_id``, an error message) would otherwise have its
    exchange dead-lettered, hidden from the tables. Bytes (bytea) keep theirs."""
    return [_row_without_nul(row) if any(type(v) is str and "\x00" in v for v in row) else row for row in rows]


def _row_without_nul(row: tuple[Any, ...]) -> tuple[Any, ...]:
    values = [v.replace("\x00", "\ufffd") if type(v) is str else v for v in row]
    make = getattr(row, "_make", None)  # a named row stays one
    return make(values) if make else tuple(values)


def usage_numbers(usage: str | None) -> tuple[int | None, ...]:
    """The token counts worth a column each; anything missing or odd is NULL, never an error."""
    try:
        parsed = orjson.loads(usage) if usage else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        return (None,) * len(USAGE_COLUMNS)
    return tuple(_count(parsed.get(name)) for name in USAGE_COLUMNS)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value in _INT64 else None


class Part(NamedTuple):
    """A ``request_parts`` row to be: its hash, and the value (plain or `bodies.Sent`), serialised only if the table lacks it."""

    hash: bytes
    value: Any


class Split(NamedTuple):
    """A request body as stored when its messages are: the rest, the message count, its parts by field."""

    rest: str
    messages: int
    parts: dict[str, Part]


def split_body(
    raw: bytes, body: Any, hashes: Mapping[str, bytes] | None = None, clean: set[SentKey] | None = None
) -> Split | None:
    """The parsed ``body`` of ``raw`` (a `Body` or the plain JSON) without what is stored elsewhere, or None to store it whole.

    Only a body whose ``messages`` list the conversation stage stores can be
    split, and only one jsonb can hold: a ``\\u0000`` escape keeps it whole,
    as text (a backslash before it is a false alarm, and costs only the saving).
    ``hashes``: the parts' hashes when the caller knows them (`part_hashes`);
    ``clean``: the caller's memory for `sent_escape_nul`, else ``raw`` is scanned.
    """
    body = as_body(body)
    if not isinstance(body, Body) or body.messages is None:
        return None
    rest = orjson.dumps(body.fields)
    if NUL_ESCAPE in rest or (NUL_ESCAPE in raw if clean is None else sent_escape_nul(body, clean)):
        return None
    hashes = part_hashes(body) if hashes is None else hashes
    parts = {name: Part(hashes[name], sent) for name, sent in body.parts.items()}
    return Split(rest.decode(), len(body.messages), parts)


def check(event: dict[str, Any]) -> None:
    """Refuse events that break the contract in ways the tables cannot absorb."""
    half = "request" if event["kind"] == "REQUEST" else "response"
    if event.get(half) is None:
        raise InvalidEvent(f"{event['kind']} event {event['event_id']} has no {half}")
    for name in ("event_id", "exchange_id"):
        try:
            uuid.UUID(event[name])
        except ValueError:
            raise InvalidEvent(f"{name} {event[name]!r} is not a UUID") from None


# The leading columns both halves' rows share, in their order (`shared_columns`).
SHARED_COLUMNS = ("exchange_id", "session_key", "session_source", "agent_id", "parent_agent_id", "api_key_fingerprint", "client")


class RequestRow(NamedTuple):
    """Parameters of ``upsert_request``: field order is parameter order (tests/consumers/winni/test_store.py checks it)."""

    exchange_id: str
    session_key: str
    session_source: str
    agent_id: str | None
    parent_agent_id: str | None
    api_key_fingerprint: str | None
    client: str | None
    request_event_id: str
    request_occurred_at: datetime | None
    method: str
    path: str
    query: str | None
    http_version: str | None
    model: str | None
    stream: bool | None
    received_at: datetime | None
    request_headers: str
    request_body: str | None
    request_body_bytes: bytes | None
    request_body_size: int
    request_body_complete: bool
    request_redactions: list[str]
    request_messages: int | None
    request_system: bytes | None
    request_tools: bytes | None
    conversation_id: uuid.UUID | None
    reply_position: int | None
    retry_of: str | None
    request_hash: bytes | None


class ResponseRow(NamedTuple):
    """Parameters of ``upsert_response``, its first fields `SHARED_COLUMNS`; field order is parameter order."""

    exchange_id: str
    session_key: str
    session_source: str
    agent_id: str | None
    parent_agent_id: str | None
    api_key_fingerprint: str | None
    client: str | None
    response_event_id: str
    response_occurred_at: datetime | None
    status: int
    response_headers: str
    response_body: str | None
    response_body_bytes: bytes | None
    response_content_encoding: str | None
    is_sse: bool
    message: str | None
    usage: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_creation_input_tokens: int | None
    cache_read_input_tokens: int | None
    stop_reason: str | None
    error_type: str | None
    error_message: str | None
    error_in_stream: bool
    started_at: datetime | None
    ttfb_ms: float | None
    duration_ms: float
    client_disconnected: bool
    upstream_complete: bool
    response_redactions: list[str]


class DeadLetterRow(NamedTuple):
    """Parameters of ``insert_dead_letter``."""

    topic: str
    kafka_partition: int
    kafka_offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    error_class: str


def shared_columns(event: dict[str, Any]) -> dict[str, Any]:
    return {name: event[name] for name in SHARED_COLUMNS}


def request_row(event: dict[str, Any], split: Split | None = None, placed: ExchangeLink | None = None) -> RequestRow:
    """The body whole unless ``split`` is given; ``placed``: where the conversation stage placed the
    request, if it did."""
    r = event["request"]
    text, raw = body_columns(r["body"]) if split is None else (split.rest, None)
    parts = split.parts if split else {}
    hashes: dict[str, Any] = {f"request_{name}": parts[name].hash if name in parts else None for name in PART_FIELDS}
    return RequestRow(
        **shared_columns(event),
        request_event_id=event["event_id"],
        request_occurred_at=timestamp(event["occurred_at"]),
        method=r["method"],
        path=r["path"],
        query=r["query"],
        http_version=r["http_version"],
        model=r["model"],
        stream=r["stream"],
        received_at=timestamp(r["received_at"]),
        request_headers=headers_json(r["headers"]),
        request_body=text,
        request_body_bytes=raw,
        request_body_size=r["body_size"],
        request_body_complete=r["body_complete"],
        request_redactions=event["redactions"],
        request_messages=split and split.messages,
        **hashes,
        conversation_id=placed and placed.conversation_id,
        reply_position=placed and placed.reply_position,
        retry_of=placed and placed.retry_of,
        request_hash=placed and placed.request_hash,
    )


def usage_columns(usage: str | None) -> dict[str, Any]:
    return dict(zip(USAGE_COLUMNS, usage_numbers(usage), strict=True))


def response_row(event: dict[str, Any]) -> ResponseRow:
    r = event["response"]
    text, raw = body_columns(r["body"])
    return ResponseRow(
        **shared_columns(event),
        response_event_id=event["event_id"],
        response_occurred_at=timestamp(event["occurred_at"]),
        status=r["status"],
        response_headers=headers_json(r["headers"]),
        response_body=text,
        response_body_bytes=raw,
        response_content_encoding=r["content_encoding"],
        is_sse=r["is_sse"],
        message=jsonb_safe(r["message"]),
        usage=jsonb_safe(r["usage"]),
        **usage_columns(r["usage"]),
        stop_reason=r["stop_reason"],
        error_type=r["error_type"],
        error_message=r["error_message"],
        error_in_stream=r["error_in_stream"],
        started_at=timestamp(r["started_at"]),
        ttfb_ms=r["ttfb_ms"],
        duration_ms=r["duration_ms"],
        client_disconnected=r["client_disconnected"],
        upstream_complete=r["upstream_complete"],
        response_redactions=event["redactions"],
    )


def dead_letter_row(reject: Reject) -> DeadLetterRow:
    e = reject.envelope
    return DeadLetterRow(
        topic=e.topic,
        kafka_partition=e.partition,
        kafka_offset=e.offset,
        key=e.key,
        value=e.value,
        reason=printable(reject.reason),
        error_class=reject.error_class,
    )


def printable(text: str) -> str:
    """Reasons quote the bad input, which may hold NUL, which a text column refuses."""
    return text.replace("\x00", "\\x00")


# --- async: rows to the database ----------------------------------------------


async def write_exchanges(
    conn: asyncpg.Connection,
    records: Sequence[EventRecord],
    splits: Mapping[str, Split] | None = None,
    placed: Mapping[str, ExchangeLink] | None = None,
) -> None:
    """The exchanges stage: both halves of every event, in the caller's transaction.

    Request bodies are stored whole, but for the events whose id ``splits`` maps
    to a split body; their parts are stored first, those not stored yet.
    ``placed`` maps an exchange id to where its request landed.
    """
    q = queries()
    splits, placed = splits or {}, placed or {}
    await write_parts(conn, [p for s in splits.values() for p in s.parts.values()])
    requests = [
        request_row(r.event, splits.get(r.event["event_id"]), placed.get(r.event["exchange_id"]))
        for r in records
        if r.event["kind"] == "REQUEST"
    ]
    responses = [response_row(r.event) for r in records if r.event["kind"] == "RESPONSE"]
    pairs = paired(requests, responses)
    if pairs:
        stored = {row[0] for row in await conn.fetch(q.stored_exchanges, list(pairs))}
        whole = {exchange_id: row for exchange_id, row in pairs.items() if exchange_id not in stored}
        if whole:
            await conn.executemany(q.insert_exchange, without_nul(list(whole.values())))
        requests = [row for row in requests if row.exchange_id not in whole]
        responses = [row for row in responses if row.exchange_id not in whole]
    if requests:
        await conn.executemany(q.upsert_request, without_nul(requests))
    if responses:
        await conn.executemany(q.upsert_response, without_nul(responses))


def exchange_row(request: RequestRow, response: ResponseRow) -> tuple[Any, ...]:
    """Parameters of ``insert_exchange``: the request's, then the response's past `SHARED_COLUMNS` (the
    request is their authority)."""
    return (*request, *response[len(SHARED_COLUMNS) :])


def paired(requests: Sequence[RequestRow], responses: Sequence[ResponseRow]) -> dict[str, tuple[Any, ...]]:
    """`exchange_row` rows, by exchange id, for the exchanges with exactly one request row and one
    response row here."""
    asked, answered = Counter(row.exchange_id for row in requests), Counter(row.exchange_id for row in responses)
    replies = {row.exchange_id: row for row in responses if answered[row.exchange_id] == 1}
    return {
        row.exchange_id: exchange_row(row, replies[row.exchange_id])
        for row in requests
        if asked[row.exchange_id] == 1 and row.exchange_id in replies
    }


async def write_parts(conn: asyncpg.Connection, parts: Iterable[Part]) -> None:
    """Parts not stored yet, in hash order (two writers inserting the same ones never deadlock).

    Asking first spares PostgreSQL parsing a 70 KB part it already holds, and
    this process serialising it.
    """
    distinct = {p.hash: p.value for p in parts}
    if not distinct:
        return
    stored = {row["hash"] for row in await conn.fetch(queries().stored_parts, list(distinct))}
    new = sorted((h, v) for h, v in distinct.items() if h not in stored)
    if new:
        await conn.execute(queries().insert_parts, [h for h, _ in new], [part_json(v).decode() for _, v in new])


async def write_dead_letters(conn: asyncpg.Connection, rejects: Sequence[Reject]) -> None:
    if rejects:
        await conn.executemany(queries().insert_dead_letter, [dead_letter_row(r) for r in rejects])


async def mark_unanswered(conn: asyncpg.Connection, after_s: float) -> int:
    """Mark the request-only rows stored more than `after_s` seconds ago; returns how many."""
    status = await conn.execute(queries().mark_unanswered, after_s)
    return int(status.rsplit(" ", 1)[1])
