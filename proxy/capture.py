"""Turning what the proxy saw into redacted exchange events.

The relay appends raw facts to the capture log (proxy/tap.py); the capture
worker rebuilds a `RequestRecord` and a `ResponseRecord` from them
(proxy/assemble.py) and builds the events here, by pure functions. Event ids
and times come from the exchange and the log, never from the clock at build
time, so an event built twice (a worker restarted before its checkpoint moved)
is the same event and changes nothing downstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from common.documents import parse_json
from proxy import decode
from proxy.redact import (
    Rule,
    redact_body,
    redact_headers,
    redact_document,
    redact_fields,
    redact_json,
    redact_optional,
    redact_query,
    redact_stream,
)
from proxy.session import Identity, identify
from proxy.sse import Reassembled, reassemble

log = logging.getLogger(__name__)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class RedactionPolicy:
    rules: Sequence[Rule]
    extra_headers: frozenset[str]
    fingerprint_key: bytes


@dataclass
class RequestRecord:
    """The request as it arrived; `headers` in wire order with duplicates."""

    method: str
    path: str
    query: str
    http_version: str
    headers: list[tuple[str, str]]
    body: bytes
    received_at: int = field(default_factory=now_us)
    exchange_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    key_fingerprint: str | None = None  # the relay's, from the credential it redacted before the append


@dataclass
class ResponseRecord:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    content_encoding: str | None
    is_sse: bool
    assembled: Reassembled | None
    ttfb_ms: float | None
    duration_ms: float
    client_disconnected: bool
    upstream_complete: bool
    proxy_error: tuple[str, str] | None = None
    ended_at: int = 0  # when the exchange ended, microseconds since the epoch


class ResponseRecorder:
    """A copy of the response body, decoded as it streams; an SSE body is reassembled at `finish`, in one
    pass over its whole text. Why then: the response event is built only at the end anyway, and feeding
    the reassembly chunk by chunk cost a round of parsing calls per chunk, most of an SSE exchange's
    building (the message is the same either way, proxy/sse.py `MessageStream`)."""

    def __init__(self, request: RequestRecord, status: int, headers: list[tuple[str, str]]) -> None:
        self._request = request
        self.status = status
        self.headers = headers
        lowered = {name.lower(): value for name, value in headers}
        self.content_encoding = lowered.get("content-encoding")
        self.is_sse = lowered.get("content-type", "").startswith("text/event-stream")
        self._raw: list[bytes] = []
        decoder = decode.known_decoder(self.content_encoding)
        self._decode_failed = decoder is None
        # None: nothing to undo (the body is its content, so the decoded chunks are the raw ones), or decoding failed
        self._decoder: decode.Decoder | None = None if isinstance(decoder, decode.Unencoded) else decoder
        self._chunks: list[bytes] = self._raw if self._decoder is None and not self._decode_failed else []

    def feed(self, chunk: bytes) -> None:
        self._raw.append(chunk)
        if self._decoder is None:
            return
        try:
            self._take(self._decoder.feed(chunk))
        except Exception:  # noqa: BLE001 - the recorder must never break the stream
            log.warning(
                "exchange %s: cannot decode %s body; recording it as sent", self._request.exchange_id, self.content_encoding
            )
            self._fail()

    def _take(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)

    def _fail(self) -> None:
        self._decode_failed = True
        self._decoder = None

    def finish(self, ending: Ending) -> ResponseRecord:
        if self._decoder is not None:
            try:
                self._take(self._decoder.flush())
            except Exception:  # noqa: BLE001
                self._fail()
        decoded = b"".join(self._chunks)  # what was decoded, up to a failure: the stream is reassembled from it
        return ResponseRecord(
            status=self.status,
            headers=self.headers,
            body=b"".join(self._raw) if self._decode_failed else decoded,
            content_encoding=self.content_encoding,
            is_sse=self.is_sse,
            assembled=reassemble(decoded.decode(errors="replace")) if self.is_sse else None,
            ttfb_ms=ending.ttfb_ms,
            duration_ms=ending.duration_ms,
            client_disconnected=ending.client_disconnected,
            upstream_complete=ending.upstream_complete,
            proxy_error=ending.proxy_error,
            ended_at=ending.ended_at,
        )


@dataclass(frozen=True)
class Ending:
    """How an exchange ended, as the relay saw it (the END record)."""

    client_disconnected: bool
    upstream_complete: bool
    ttfb_ms: float | None
    duration_ms: float
    ended_at: int
    proxy_error: tuple[str, str] | None = None


EVENT_NAMESPACE = uuid.UUID("6b6762c0-cafe-4e00-8000-6b6762657665")
_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes


def event_id(exchange_id: str, kind: str) -> str:
    """The same exchange and kind always give the same id: a republished event is a duplicate consumers drop."""
    return name_uuid(_NAMESPACE_BYTES, f"{exchange_id}/{kind}")


# UUIDs as text, made without `uuid.UUID` objects: the relay makes one per exchange and the worker several
# (`uuid.UUID`'s str() alone took ~2 % of the relay's CPU per exchange, `uuid.uuid5` twice what this does).


def uuid_text(raw: bytes | bytearray) -> str:
    """16 bytes as a UUID's text, as ``str(uuid.UUID(bytes=raw))`` gives it."""
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def versioned(raw: bytes, version: int) -> bytearray:
    """16 bytes with a UUID's `version` and its RFC 9562 variant set in them, as `uuid.UUID(..., version=)` sets them."""
    marked = bytearray(raw)
    marked[6] = marked[6] & 0x0F | version << 4
    marked[8] = marked[8] & 0x3F | 0x80
    return marked


def name_uuid(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``, `namespace` given as its 16 bytes (RFC 9562 §5.5)."""
    return uuid_text(versioned(hashlib.sha1(namespace + name.encode(), usedforsecurity=False).digest()[:16], 5))


@dataclass
class RequestFacts:
    """What the request event established and the response event reuses."""

    identity: Identity
    key_fingerprint: str | None
    client: str | None


def _envelope(kind: str, request: RequestRecord, facts: RequestFacts, redactions: list[str], at: int) -> dict[str, Any]:
    return {
        "event_id": event_id(request.exchange_id, kind),
        "exchange_id": request.exchange_id,
        "kind": kind,
        "occurred_at": at,
        "session_key": facts.identity.session_key,
        "session_source": facts.identity.session_source,
        "agent_id": facts.identity.agent_id,
        "parent_agent_id": facts.identity.parent_agent_id,
        "api_key_fingerprint": facts.key_fingerprint,
        "client": facts.client,
        "redactions": sorted(set(redactions)),
        "request": None,
        "response": None,
    }


def request_event(
    request: RequestRecord, policy: RedactionPolicy, *, body_complete: bool = True
) -> tuple[dict[str, Any], RequestFacts]:
    """Every field stored is redacted: the identity and the client come from the client's
    headers and body, and a secret there would otherwise reach the tables as a session key.
    `body_complete`: whether `request.body` is all the client sent, which only the capture log's
    records tell (proxy/assemble.py)."""
    parsed = parse_json(request.body)
    body_json = parsed if isinstance(parsed, dict) else None
    key_fingerprint = request.key_fingerprint
    lowered = _CaseInsensitive(request.headers)
    identity = identify(lowered, body_json, key_fingerprint)
    model = body_json.get("model") if body_json else None
    fields, fired = redact_fields(
        [
            identity.session_key,
            identity.agent_id,
            identity.parent_agent_id,
            lowered.get("user-agent"),
            request.path,
            model if isinstance(model, str) else None,
        ],
        policy.rules,
    )
    session_key, agent_id, parent_agent_id, client, path, model = fields
    facts = RequestFacts(
        Identity(session_key or identity.session_key, identity.session_source, agent_id, parent_agent_id), key_fingerprint, client
    )
    headers, header_fired = redact_headers(request.headers, policy.extra_headers, policy.rules)
    body, body_fired = redact_json(request.body, policy.rules, parsed)
    query, query_fired = redact_query(request.query, policy.rules)
    event = _envelope("REQUEST", request, facts, fired + header_fired + body_fired + query_fired, request.received_at)
    event["request"] = {
        "method": request.method,
        "path": path,
        "query": query,
        "http_version": request.http_version,
        "headers": headers,
        "body": body,
        "body_size": len(request.body),
        "model": model,
        "stream": bool(body_json.get("stream")) if body_json else False,
        "received_at": request.received_at,
        "body_complete": body_complete,
    }
    return event, facts


def _json_outcome(parsed: Any) -> Reassembled:
    """A non-streamed answer (its body parsed): a message, an error, or something else kept only as the body."""
    result = Reassembled(complete=True)
    if not isinstance(parsed, dict):
        return result
    if parsed.get("type") == "error":
        error = parsed.get("error") or {}
        result.error_type = error.get("type", "unknown_error")
        result.error_message = error.get("message")
    elif parsed.get("type") == "message":
        result.message = parsed
        result.usage = parsed.get("usage")
        result.stop_reason = parsed.get("stop_reason")
    return result


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def response_event(
    request: RequestRecord, response: ResponseRecord, facts: RequestFacts, policy: RedactionPolicy
) -> dict[str, Any]:
    """A stream whose message or error held a secret is rewritten from its events, since
    its raw bytes may hold that secret escaped or split across deltas."""
    headers, fired = redact_headers(response.headers, policy.extra_headers, policy.rules)
    if response.is_sse and response.assembled:
        outcome = response.assembled
        body, body_fired = redact_body(response.body, policy.rules)
    else:
        parsed = parse_json(response.body)
        body, body_fired = redact_json(response.body, policy.rules, parsed)
        outcome = _json_outcome(parsed if body is response.body else parse_json(body))  # a body kept is parsed once
    derived: list[str] = []
    error_type, error_message = response.proxy_error or (outcome.error_type, outcome.error_message)
    error_message = redact_optional(error_message, policy.rules, derived)
    message = _redact_json(outcome.final_message(), policy.rules, derived)
    if derived and response.is_sse:
        body, body_fired = redact_stream(response.body, policy.rules)
    event = _envelope("RESPONSE", request, facts, fired + body_fired + derived, response.ended_at)
    event["response"] = {
        "status": response.status,
        "headers": headers,
        "body": body,
        "content_encoding": response.content_encoding,
        "is_sse": response.is_sse,
        "message": message,
        "usage": _dumps(outcome.usage),
        "stop_reason": outcome.stop_reason,
        "error_type": error_type,
        "error_message": error_message,
        "error_in_stream": response.is_sse and outcome.error_type is not None,
        "started_at": request.received_at,
        "ttfb_ms": response.ttfb_ms,
        "duration_ms": response.duration_ms,
        "client_disconnected": response.client_disconnected,
        "upstream_complete": response.upstream_complete and (not response.is_sse or outcome.complete),
    }
    return event


def _redact_json(value: Any, rules: Sequence[Rule], fired: list[str]) -> str | None:
    """A reassembled message, redacted; None for one nested deeper than orjson writes (the body keeps it).

    It is written once, before redacting: those bytes are orjson's own, so they tell `redact_document`
    whether it is clean without its writing it again, and a clean message (no rule fired, so unchanged)
    is stored as them; only a message that lost a secret is written anew."""
    if value is None:
        return None
    try:
        written = orjson.dumps(value)
        document, hits = redact_document(value, rules, written)
    except orjson.JSONEncodeError:
        return None
    if not hits:
        return written.decode()
    fired.extend(hits)
    return orjson.dumps(document).decode()


class _CaseInsensitive:
    """Header lookup by lower-cased name over a list of pairs; first value wins."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self._map: dict[str, str] = {}
        for name, value in headers:
            self._map.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._map.get(name, default)


Submit = Callable[[dict[str, Any]], None]


def soon(callback: Callable[..., None], *args: Any) -> None:
    """Run `callback` at the next turn of the loop, after the current write; its failure is logged, never raised."""
    asyncio.get_running_loop().call_soon(guarded, callback, *args)


def guarded(callback: Callable[..., None], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("building a capture event failed; the exchange was served but this event is lost")
