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

import hashlib
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple

import asyncpg
import orjson

from consumers.errors import InvalidEvent
from consumers.source import Record, Reject
from consumers.sql import Queries, load_queries
from consumers.winni.bodies import NUL_ESCAPE, PART_FIELDS, Body, SentKey, as_body, plain, sent_escape_nul
from schemas.codec import timestamp

USAGE_COLUMNS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")

# A \u0000 escape not itself escaped: preceded by an even number of backslashes.
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
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


def jsonb_safe(text: str | None) -> str | None:
    """JSON text with ``\\u0000`` escapes, which jsonb refuses, replaced by ``\\ufffd``."""
    if text is None or "\\u0000" not in text:
        return text
    return _NUL_ESCAPE.sub(r"\1\\ufffd", text)


def without_nul(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with every NUL in a string made U+FFFD: text columns refuse NUL, and a client that
    put one in a field (``metadata.user_id``, an error message) would otherwise have its
    exchange dead-lettered, hidden from the tables. Bytes (bytea) keep theirs."""
    return [_row_without_nul(row) if any(type(v) is str and "\x00" in v for v in row) else row for row in rows]


def _row_without_nul(row: tuple[Any, ...]) -> tuple[Any, ...]:
    values = [v.replace("\x00", "\ufffd") if type(v) is str else v for v in row]
    return type(row)._make(values) if hasattr(row, "_fields") else tuple(values)


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


def part_json(value: Any) -> bytes:
    """Content-addressed by the JSON with sorted keys, so the same system prompt is one row."""
    return orjson.dumps(plain(value), option=orjson.OPT_SORT_KEYS)


def part_hash(value: Any) -> bytes:
    return hashlib.blake2b(part_json(value), digest_size=16).digest()


def part_hashes(body: Body) -> dict[str, bytes]:
    """The hash of each of the body's ``PART_FIELDS``, each serialised and hashed in full."""
    return {name: part_hash(sent) for name, sent in body.parts.items()}


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


SHARED_COLUMNS = 7  # the leading parameters both halves' rows share (`shared_columns`)


def shared_columns(event: dict[str, Any]) -> tuple[Any, ...]:
    return (
        event["exchange_id"],
        event["session_key"],
        event["session_source"],
        event["agent_id"],
        event["parent_agent_id"],
        event["api_key_fingerprint"],
        event["client"],
    )


# Where the conversation stage placed a request: (conversation id, reply position, retry of, request hash).
NOT_PLACED = (None, None, None, None)


def request_row(event: dict[str, Any], split: Split | None = None, placed: Sequence[Any] = NOT_PLACED) -> tuple[Any, ...]:
    """Parameters of ``upsert_request``, in order; the body whole unless ``split`` is given; ``placed``
    as `NOT_PLACED` describes."""
    r = event["request"]
    text, raw = body_columns(r["body"]) if split is None else (split.rest, None)
    parts = split.parts if split else {}
    return (
        *shared_columns(event),
        event["event_id"],
        timestamp(event["occurred_at"]),
        r["method"],
        r["path"],
        r["query"],
        r["http_version"],
        r["model"],
        r["stream"],
        timestamp(r["received_at"]),
        headers_json(r["headers"]),
        text,
        raw,
        r["body_size"],
        event["redactions"],
        split and split.messages,
        *(parts[name].hash if name in parts else None for name in PART_FIELDS),
        *placed,
    )


def response_row(event: dict[str, Any]) -> tuple[Any, ...]:
    """Parameters of ``upsert_response``, in order."""
    r = event["response"]
    text, raw = body_columns(r["body"])
    return (
        *shared_columns(event),
        event["event_id"],
        timestamp(event["occurred_at"]),
        r["status"],
        headers_json(r["headers"]),
        text,
        raw,
        r["content_encoding"],
        r["is_sse"],
        jsonb_safe(r["message"]),
        jsonb_safe(r["usage"]),
        *usage_numbers(r["usage"]),
        r["stop_reason"],
        r["error_type"],
        r["error_message"],
        r["error_in_stream"],
        timestamp(r["started_at"]),
        r["ttfb_ms"],
        r["duration_ms"],
        r["client_disconnected"],
        r["upstream_complete"],
        event["redactions"],
    )


def dead_letter_row(reject: Reject) -> tuple[Any, ...]:
    e = reject.envelope
    return (e.topic, e.partition, e.offset, e.key, e.value, printable(reject.reason), reject.error_class)


def printable(text: str) -> str:
    """Reasons quote the bad input, which may hold NUL, which a text column refuses."""
    return text.replace("\x00", "\\x00")


# --- async: rows to the database ----------------------------------------------


async def write_exchanges(
    conn: asyncpg.Connection, records: Sequence[Record], splits: Mapping[str, Split] | None = None,
    placed: Mapping[str, Sequence[Any]] | None = None,
) -> None:
    """The exchanges stage: both halves of every event, in the caller's transaction.

    Request bodies are stored whole, but for the events whose id ``splits`` maps
    to a split body; their parts are stored first, those not stored yet.
    ``placed`` maps an exchange id to where its request landed: its
    ``ExchangeLink`` (`consumers.winni.threads`), exchange id first.
    """
    q = queries()
    splits, placed = splits or {}, placed or {}
    await write_parts(conn, [p for s in splits.values() for p in s.parts.values()])
    requests = [
        request_row(r.event, splits.get(r.event["event_id"]), placed[x][1:] if (x := r.event["exchange_id"]) in placed else NOT_PLACED)
        for r in records if r.event["kind"] == "REQUEST"
    ]
    responses = [response_row(r.event) for r in records if r.event["kind"] == "RESPONSE"]
    pairs = paired(requests, responses)
    if pairs:
        stored = {row[0] for row in await conn.fetch(q.stored_exchanges, list(pairs))}
        whole = [row for exchange_id, row in pairs.items() if exchange_id not in stored]
        if whole:
            await conn.executemany(q.insert_exchange, without_nul(whole))
        done = {row[0] for row in whole}
        requests = [row for row in requests if row[0] not in done]
        responses = [row for row in responses if row[0] not in done]
    if requests:
        await conn.executemany(q.upsert_request, without_nul(requests))
    if responses:
        await conn.executemany(q.upsert_response, without_nul(responses))


def paired(requests: Sequence[tuple[Any, ...]], responses: Sequence[tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """``insert_exchange`` rows, by exchange id, for the exchanges with exactly one request row and
    one response row here (the shared columns are the request's: it is their authority)."""
    asked, answered = Counter(row[0] for row in requests), Counter(row[0] for row in responses)
    replies = {row[0]: row for row in responses if answered[row[0]] == 1}
    return {row[0]: row + replies[row[0]][SHARED_COLUMNS:] for row in requests if asked[row[0]] == 1 and row[0] in replies}


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
