"""The Streamable HTTP relay's capture-log records back into MCP events: the capture worker's side
of proxy/mcp/http.py, pure.

The relay appends each request's raw material through the `Tap` (proxy/tap.py),
as the API proxy does: an MCP_REQUEST_HEAD (the request head, plus the `Route`:
the server's name, its URL as events may hold it, whether messages are
recorded, the client's address), the body, the response head, each chunk as it
crossed, and the end. `McpAssembler.feed` makes of them the events the relay
used to build on its own loop (schemas/mcp.avsc, unchanged): the request body's
messages once the response head is in, so they carry the session id an
``initialize`` response assigns; each SSE event's data when the chunk that
completes it arrives; a JSON body's message at the end; then one EXCHANGE
event for the HTTP request. Times come from the log, ids from the exchange and
the sequence, so the same records always make the same events.

Records of an exchange whose head it never saw (an API exchange, or one begun
before the checkpoint and published whole) are not its own and give nothing. A
writer-start record closes the exchanges still open as interrupted.
"""

from __future__ import annotations

import codecs
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy import decode
from proxy.assemble import INTERRUPTED, Built, ending, request_of
from proxy.capture import Ending, RedactionPolicy, RequestRecord
from proxy.logformat import Kind
from proxy.logreader import Position, Read
from proxy.mcp import events
from proxy.redact import redact_headers, redact_query
from proxy.sse import SSEEvent, SSEParser
from schemas.codec import MCP

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """What the relay knew of a request beyond its head: where it went and what to record (the head's "mcp")."""

    name: str
    upstream_url: str | None  # as events hold it (events.recorded_url); None for a name not on the list
    messages: bool  # the request's and response's JSON-RPC messages are recorded (not for OAuth metadata)
    client_address: str | None

    def head(self) -> dict[str, Any]:
        return {"name": self.name, "upstream_url": self.upstream_url, "messages": self.messages, "client": self.client_address}

    @classmethod
    def of(cls, head: dict[str, Any]) -> Route:
        return cls(head["name"], head["upstream_url"], head["messages"], head["client"])


def session_of(request: RequestRecord, route: Route, response_headers: list[tuple[str, str]]) -> tuple[str, str | None]:
    """(session key, Mcp-Session-Id): the server's id when there is one, else the stateless key of this client today."""
    session_id = events.header(response_headers, "mcp-session-id") or events.header(request.headers, "mcp-session-id")
    if session_id:
        return session_id, session_id
    day = datetime.fromtimestamp(request.received_at / 1e6, UTC).date().isoformat()
    user_agent = events.header(request.headers, "user-agent")
    return events.stateless_key(route.name, day, route.client_address, user_agent, request.key_fingerprint), None


@dataclass
class Response:
    """The response as far as the log tells: its head, and how many body bytes crossed."""

    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body_size: int = 0


def exchange_fields(
    request: RequestRecord, route: Route, response: Response, how: Ending, policy: RedactionPolicy
) -> dict[str, Any]:
    request_headers, fired = redact_headers(request.headers, policy.extra_headers, policy.rules)
    response_headers, response_fired = redact_headers(response.headers, policy.extra_headers, policy.rules)
    query, query_fired = redact_query(request.query, policy.rules)
    error_type, error_message = how.proxy_error or (None, None)
    return {
        "http": {
            "method": request.method,
            "path": request.path,
            "query": query,
            "request_headers": request_headers,
            "status": response.status,
            "response_headers": response_headers,
            "content_type": events.header(response.headers, "content-type"),
            "request_body_size": len(request.body),
            "response_body_size": response.body_size,
            "started_at": request.received_at,
            "ttfb_ms": how.ttfb_ms,
            "duration_ms": how.duration_ms,
            "client_disconnected": how.client_disconnected,
            "upstream_complete": how.upstream_complete,
        },
        "client_address": route.client_address,
        "error_type": error_type,
        "error_message": error_message,
        "redactions": sorted(set(fired + response_fired + query_fired)),
    }


class ResponseCopy:
    """A response body, decoded, turned into messages as it arrives: each SSE event with data as it
    completes, a JSON body at its end. A body it cannot decode is taken as sent; it never raises."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self._headers = events.mcp_headers(headers)
        content_type = (events.header(headers, "content-type") or "").lower()
        self._sse = SSEParser() if content_type.startswith("text/event-stream") else None
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chunks: list[bytes] = []
        self._decoder: decode.Decoder | None
        try:
            self._decoder = decode.decoder_for(events.header(headers, "content-encoding"))
        except decode.UnsupportedEncoding:
            self._decoder = decode.Unencoded()

    def feed(self, chunk: bytes) -> list[events.Message]:
        try:
            return self._take(self._decoder.feed(chunk) if self._decoder else chunk)
        except Exception:  # noqa: BLE001 - one bad body costs its decoding, never the worker
            log.warning("cannot decode an MCP response body; recording it as sent")
            self._decoder = None
            return self._take(chunk)

    def finish(self) -> list[events.Message]:
        tail: list[events.Message] = []
        if self._decoder is not None:
            try:
                tail = self._take(self._decoder.flush())
            except Exception:  # noqa: BLE001
                self._decoder = None
        if self._sse is not None:
            rest = self._sse.feed(self._text.decode(b"", final=True)) + self._sse.flush()
            return tail + [m for m in map(self._sse_message, rest) if m]
        body = b"".join(self._chunks)
        return [events.Message(events.UPSTREAM_TO_CLIENT, body, self._headers)] if body else []

    def _take(self, data: bytes) -> list[events.Message]:
        if self._sse is None:
            self._chunks.append(data)
            return []
        return [m for m in map(self._sse_message, self._sse.feed(self._text.decode(data))) if m]

    def _sse_message(self, event: SSEEvent) -> events.Message | None:
        """An event with data is a message; a priming event (an id, empty data) is not."""
        if not event.data:
            return None
        sse = {"id": event.id, "event": event.event, "retry": event.retry}
        return events.Message(events.UPSTREAM_TO_CLIENT, event.data.encode(), self._headers, sse)


@dataclass
class Pending:
    """One open request: what its events need until its end record."""

    start: Position
    request: RequestRecord
    route: Route
    stamper: events.Stamper
    body: list[bytes] = field(default_factory=list)
    response: Response | None = None
    copy: ResponseCopy | None = None
    last_at: int = 0


class McpAssembler:
    """The Streamable HTTP relay's exchanges, from their records in log order to their events."""

    def __init__(self, policy: RedactionPolicy) -> None:
        self._policy = policy
        self._open: dict[bytes, Pending] = {}

    @property
    def open_count(self) -> int:
        return len(self._open)

    def open_starts(self) -> Iterator[Position]:
        return (pending.start for pending in self._open.values())

    def feed(self, read: Read) -> list[Built]:
        record = read.record
        if record.kind is Kind.WRITER_START:
            return self.interrupt_all()
        if record.kind is Kind.MCP_REQUEST_HEAD:
            self._open[record.exchange] = opened(read)
            return []
        pending = self._open.get(record.exchange)
        if pending is None:
            return []
        pending.last_at = record.at_ns
        if record.kind is Kind.REQUEST_BODY:
            pending.body.append(record.payload)
            return []
        if record.kind is Kind.RESPONSE_HEAD:
            head = orjson.loads(record.payload)
            return built(record.exchange, pending, self._begin(pending, head["status"], [(n, v) for n, v in head["headers"]]))
        if record.kind is Kind.RESPONSE_CHUNK:
            return built(record.exchange, pending, self._chunk(pending, record.payload, record.at_ns // 1000))
        if record.kind is Kind.END:
            return self._close(record.exchange, ending(record))
        return []

    def interrupt_all(self) -> list[Built]:
        """Close every open request with what it has: its relay is gone."""
        closed: list[Built] = []
        for exchange, pending in list(self._open.items()):
            ended_at = pending.last_at // 1000
            duration_ms = (ended_at - pending.request.received_at) / 1000
            closed += self._close(exchange, Ending(False, False, None, duration_ms, ended_at, INTERRUPTED))
        return closed

    def _begin(self, pending: Pending, status: int | None, headers: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The response's head is in: the session is known, so the request's messages can be made."""
        pending.request.body = b"".join(pending.body)
        pending.body = []
        pending.response = Response(status, headers)
        stamper = pending.stamper
        stamper.session_key, stamper.mcp_session_id = session_of(pending.request, pending.route, headers)
        if not pending.route.messages:
            return []
        pending.copy = ResponseCopy(headers)
        if not pending.request.body:
            return []
        message = events.Message(events.CLIENT_TO_UPSTREAM, pending.request.body, pending.request.headers)
        return self._messages(pending, [message], pending.request.received_at)

    def _chunk(self, pending: Pending, chunk: bytes, at: int) -> list[dict[str, Any]]:
        assert pending.response is not None, "the relay appends a response's head before its body"
        pending.response.body_size += len(chunk)
        return self._messages(pending, pending.copy.feed(chunk), at) if pending.copy is not None else []

    def _close(self, exchange: bytes, how: Ending) -> list[Built]:
        pending = self._open.pop(exchange)
        made = self._begin(pending, None, []) if pending.response is None else []
        if pending.copy is not None:
            made += self._messages(pending, pending.copy.finish(), how.ended_at)
        assert pending.response is not None
        made += pending.stamper.stamped(
            "EXCHANGE", how.ended_at, exchange_fields(pending.request, pending.route, pending.response, how, self._policy)
        )
        return built(exchange, pending, made, last=True)

    def _messages(self, pending: Pending, messages: list[events.Message], at: int) -> list[dict[str, Any]]:
        return [
            event for m in messages for event in pending.stamper.stamped("MESSAGE", at, events.message_fields(m, self._policy))
        ]


def built(exchange: bytes, pending: Pending, made: list[dict[str, Any]], *, last: bool = False) -> list[Built]:
    """Events for the worker to publish, on the MCP topic; with `last`, the final one is its exchange's last."""
    return [Built(exchange, pending.start, event, last and i == len(made) - 1, MCP) for i, event in enumerate(made)]


def opened(read: Read) -> Pending:
    """An MCP_REQUEST_HEAD's request, with the envelope its events share (the exchange id is the connection's)."""
    head = orjson.loads(read.record.payload)
    request, route = request_of(read.record.exchange, head), Route.of(head["mcp"])
    origin = events.Origin(events.STREAMABLE_HTTP, route.name, route.upstream_url, str(uuid.UUID(bytes=read.record.exchange)))
    version = events.header(request.headers, "mcp-protocol-version")
    return Pending(read.at, request, route, events.Stamper(origin, protocol_version=version), last_at=read.record.at_ns)
