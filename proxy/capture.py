"""Turning what the proxy saw into redacted exchange events.

The handler records raw facts cheaply (`RequestRecord`, `ResponseRecorder`)
and hands them over; the events are built here, after the bytes have gone to
the client, by pure functions. `ResponseRecorder.feed` runs on the response
path, so it swallows its own failures: a recorder bug costs a field, never a
client's stream.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from kgb.documents import parse_json
from proxy import decode
from proxy.redact import (
    Rule,
    credential,
    fingerprint,
    redact_body,
    redact_headers,
    redact_document,
    redact_json,
    redact_optional,
    redact_query,
    redact_stream,
)
from proxy.session import Identity, identify
from proxy.sse import MessageStream, Reassembled

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
    started_ns: int = field(default_factory=time.perf_counter_ns)


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


class ResponseRecorder:
    """A copy of the response body, decoded and (for SSE) reassembled as it streams."""

    def __init__(self, request: RequestRecord, status: int, headers: list[tuple[str, str]]) -> None:
        self._request = request
        self.status = status
        self.headers = headers
        lowered = {name.lower(): value for name, value in headers}
        self.content_encoding = lowered.get("content-encoding")
        self.is_sse = lowered.get("content-type", "").startswith("text/event-stream")
        self._chunks: list[bytes] = []
        self._raw: list[bytes] = []
        self._decoder: decode.Decoder | None = None
        self._decode_failed = False
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stream = MessageStream() if self.is_sse else None
        self._first_byte_ns: int | None = None
        try:
            self._decoder = decode.decoder_for(self.content_encoding)
        except decode.UnsupportedEncoding:
            self._decode_failed = True

    def feed(self, chunk: bytes) -> None:
        if self._first_byte_ns is None:
            self._first_byte_ns = time.perf_counter_ns()
        self._raw.append(chunk)
        if self._decode_failed or self._decoder is None:
            return
        try:
            self._take(self._decoder.feed(chunk))
        except Exception:  # noqa: BLE001 - the recorder must never break the stream
            log.warning("exchange %s: cannot decode %s body; recording it as sent", self._request.exchange_id, self.content_encoding)
            self._decode_failed = True

    def _take(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        if self._stream is not None:
            self._stream.feed(self._text.decode(data))

    def finish(self, *, client_disconnected: bool, upstream_complete: bool) -> ResponseRecord:
        if not self._decode_failed and self._decoder is not None:
            try:
                self._take(self._decoder.flush())
            except Exception:  # noqa: BLE001
                self._decode_failed = True
        assembled = None
        if self._stream is not None:
            self._stream.feed(self._text.decode(b"", final=True))
            assembled = self._stream.finish()
        end = time.perf_counter_ns()
        first = self._first_byte_ns
        return ResponseRecord(
            status=self.status,
            headers=self.headers,
            body=b"".join(self._raw if self._decode_failed else self._chunks),
            content_encoding=self.content_encoding,
            is_sse=self.is_sse,
            assembled=assembled,
            ttfb_ms=None if first is None else (first - self._request.started_ns) / 1e6,
            duration_ms=(end - self._request.started_ns) / 1e6,
            client_disconnected=client_disconnected,
            upstream_complete=upstream_complete,
        )


def failed_response(
    request: RequestRecord, status: int, body: bytes, error: tuple[str, str], headers: list[tuple[str, str]]
) -> ResponseRecord:
    """The record of an exchange the upstream never answered; the body is the proxy's own error JSON."""
    return ResponseRecord(
        status=status,
        headers=headers,
        body=body,
        content_encoding=None,
        is_sse=False,
        assembled=None,
        ttfb_ms=None,
        duration_ms=(time.perf_counter_ns() - request.started_ns) / 1e6,
        client_disconnected=False,
        upstream_complete=False,
        proxy_error=error,
    )


@dataclass
class RequestFacts:
    """What the request event established and the response event reuses."""

    identity: Identity
    key_fingerprint: str | None
    client: str | None


def _envelope(kind: str, request: RequestRecord, facts: RequestFacts, redactions: list[str]) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "exchange_id": request.exchange_id,
        "kind": kind,
        "occurred_at": now_us(),
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


def request_event(request: RequestRecord, policy: RedactionPolicy) -> tuple[dict[str, Any], RequestFacts]:
    """Every field stored is redacted: the identity and the client come from the client's
    headers and body, and a secret there would otherwise reach the tables as a session key."""
    parsed = parse_json(request.body)
    body_json = parsed if isinstance(parsed, dict) else None
    secret = credential(request.headers)
    key_fingerprint = fingerprint(secret, policy.fingerprint_key) if secret else None
    lowered = _CaseInsensitive(request.headers)
    fired: list[str] = []
    facts = RequestFacts(
        _redact_identity(identify(lowered, body_json, key_fingerprint), policy.rules, fired),
        key_fingerprint,
        redact_optional(lowered.get("user-agent"), policy.rules, fired),
    )
    headers, header_fired = redact_headers(request.headers, policy.extra_headers, policy.rules)
    body, body_fired = redact_json(request.body, policy.rules, parsed)
    query, query_fired = redact_query(request.query, policy.rules)
    path = redact_optional(request.path, policy.rules, fired)
    model = body_json.get("model") if body_json else None
    model = redact_optional(model, policy.rules, fired) if isinstance(model, str) else None
    event = _envelope("REQUEST", request, facts, fired + header_fired + body_fired + query_fired)
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
    }
    return event, facts


def _redact_identity(identity: Identity, rules: Sequence[Rule], fired: list[str]) -> Identity:
    return Identity(
        session_key=redact_optional(identity.session_key, rules, fired) or identity.session_key,
        session_source=identity.session_source,
        agent_id=redact_optional(identity.agent_id, rules, fired),
        parent_agent_id=redact_optional(identity.parent_agent_id, rules, fired),
    )


def _json_outcome(body: bytes) -> Reassembled:
    """A non-streamed answer: a message, an error, or something else kept only as the body."""
    parsed = parse_json(body)
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
        body, body_fired = redact_json(response.body, policy.rules)
        outcome = _json_outcome(body)
    derived: list[str] = []
    error_type, error_message = response.proxy_error or (outcome.error_type, outcome.error_message)
    error_message = redact_optional(error_message, policy.rules, derived)
    message = _redact_json(outcome.final_message(), policy.rules, derived)
    if derived and response.is_sse:
        body, body_fired = redact_stream(response.body, policy.rules)
    event = _envelope("RESPONSE", request, facts, fired + body_fired + derived)
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
    if value is None:
        return None
    document, hits = redact_document(value, rules)
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


class Capture:
    """Builds events off the response path and hands them to the publisher.

    Building is scheduled with `call_soon`, so it runs after the handler has
    yielded: the request event once the request is on its way upstream, the
    response event after the last chunk went to the client. Events of one
    exchange are built in order because the loop runs callbacks in order.
    """

    def __init__(self, policy: RedactionPolicy, submit: Submit) -> None:
        self._policy = policy
        self._submit = submit
        self._facts: dict[str, RequestFacts] = {}

    def request(self, request: RequestRecord) -> None:
        soon(self._build_request, request)

    def response(self, request: RequestRecord, response: ResponseRecord) -> None:
        soon(self._build_response, request, response)

    def _build_request(self, request: RequestRecord) -> None:
        event, facts = request_event(request, self._policy)
        self._facts[request.exchange_id] = facts
        self._submit(event)

    def _build_response(self, request: RequestRecord, response: ResponseRecord) -> None:
        facts = self._facts.pop(request.exchange_id, None)
        if facts is None:
            facts = request_event(request, self._policy)[1]
        self._submit(response_event(request, response, facts, self._policy))


def soon(callback: Callable[..., None], *args: Any) -> None:
    """Run `callback` at the next turn of the loop, after the current write; its failure is logged, never raised."""
    asyncio.get_running_loop().call_soon(_guarded, callback, *args)


def _guarded(callback: Callable[..., None], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("building a capture event failed; the exchange was served but this event is lost")
