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

A GET stream or a ``subscriptions/listen`` POST may stay open for hours, so an
open request's state is small once its response head is in (the body's size,
not the body; the SSE parser's unfinished event, not the events it made) and
`snapshot` gives it as JSON: the worker saves it beside the checkpoint, which
may then pass the request's head, and a restarted worker `restore`s it and goes
on numbering its events from where it stopped. A compressed event stream is
saved the same way: the relay logs its chunks decoded (proxy/mcp/http.py
`LogCopy`), its response head says so (``"decoded": true``) and its end gives
the size that crossed (``response_bytes``), so no decoder is needed here. A
compressed stream logged as it crossed (by a relay from before the mark) has
a decoder here whose state cannot be saved; it, a request
whose body is still coming, and a JSON answer (kept whole until its end) hold
the checkpoint at their head as before.
"""

from __future__ import annotations

import base64
import codecs
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy import decode
from proxy.assemble import Built, OpenExchanges, ending_of, request_of
from proxy.capture import Ending, RedactionPolicy, RequestRecord, uuid_text
from proxy.logformat import Kind, Record
from proxy.logreader import Position, Read
from proxy.mcp import events
from proxy.redact import redact_headers, redact_query
from proxy.sse import SSEEvent, SSEParser
from proxy.upstream import header
from schemas.codec import MCP

log = logging.getLogger(__name__)

UTF8 = codecs.getincrementaldecoder("utf-8")  # looked up once, not per response


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
    session_id = header(response_headers, "mcp-session-id") or header(request.headers, "mcp-session-id")
    if session_id:
        return session_id, session_id
    day = datetime.fromtimestamp(request.received_at / 1e6, UTC).date().isoformat()
    user_agent = header(request.headers, "user-agent")
    return events.stateless_key(route.name, day, route.client_address, user_agent, request.key_fingerprint), None


@dataclass
class Response:
    """The response as far as the log tells: its head, and how many body bytes crossed."""

    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body_size: int = 0


def exchange_fields(
    request: RequestRecord, body_size: int, route: Route, response: Response, how: Ending, policy: RedactionPolicy
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
            "content_type": header(response.headers, "content-type"),
            "request_body_size": body_size,
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
    completes, a JSON body at its end. A body it cannot decode is taken as sent; it never raises.
    `decoded`: the relay logged its chunks decoded already (the response head's mark), so they are taken as they are."""

    def __init__(self, headers: list[tuple[str, str]], *, decoded: bool = False) -> None:
        self._headers = events.mcp_headers(headers)
        content_type = (header(headers, "content-type") or "").lower()
        self._sse = SSEParser() if content_type.startswith("text/event-stream") else None
        self._text = UTF8(errors="replace")
        self._chunks: list[bytes] = []
        # one encoded as we cannot undo is taken as sent
        self._decoder = None if decoded else decode.known_decoder(header(headers, "content-encoding")) or decode.Unencoded()

    def state(self) -> dict[str, Any] | None:
        """What an event stream holds between chunks, as JSON; None for a JSON body (kept whole until its end)
        and while its decoder's state cannot be saved (a compressed body)."""
        if self._sse is None or (self._decoder is not None and not isinstance(self._decoder, decode.Unencoded)):
            return None
        text, flag = self._text.getstate()
        return {"raw": self._decoder is None, "text": [base64.b64encode(text).decode(), flag], "sse": self._sse.state()}

    @classmethod
    def restored(cls, headers: list[tuple[str, str]], state: dict[str, Any]) -> ResponseCopy:
        copy = cls(headers)
        if state["raw"]:
            copy._decoder = None
        text, flag = state["text"]
        copy._text.setstate((base64.b64decode(text), flag))
        copy._sse = SSEParser.restored(state["sse"])
        return copy

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
    """One open request: what its events need until its end record. Its body is kept only until the
    response head (then its messages are made, and only its size stays)."""

    start: Position
    head: dict[str, Any]  # the MCP_REQUEST_HEAD's JSON, as logged: what a saved state gives back to `opened`
    request: RequestRecord
    route: Route
    stamper: events.Stamper
    body: list[bytes] = field(default_factory=list)
    body_size: int = 0
    response: Response | None = None
    copy: ResponseCopy | None = None
    last_at: int = 0
    resume: Position = Position(0, 0)


class McpAssembler(OpenExchanges[Pending]):
    """The Streamable HTTP relay's exchanges, from their records in log order to their events."""

    name, head = "mcp", Kind.MCP_REQUEST_HEAD

    def snapshot(self, exchange: bytes) -> dict[str, Any] | None:
        pending = self._open[exchange]
        if pending.response is None:
            return None  # its body is still coming
        copy = None if pending.copy is None else pending.copy.state()
        if pending.copy is not None and copy is None:
            return None
        stamper, response = pending.stamper, pending.response
        return {
            "start": list(pending.start),
            "head": pending.head,
            "body_size": pending.body_size,
            "session": [stamper.session_key, stamper.mcp_session_id],
            "protocol_version": stamper.protocol_version,
            "next_sequence": stamper.next_sequence,
            "response": {"status": response.status, "headers": response.headers, "body_size": response.body_size},
            "copy": copy,
            "last_at": pending.last_at,
        }

    def restore(self, exchange: bytes, state: dict[str, Any], resume: Position) -> None:
        pending = opened(exchange, state["head"], Position(*state["start"]), state["last_at"])
        stamper, saved = pending.stamper, state["response"]
        stamper.session_key, stamper.mcp_session_id = state["session"]
        stamper.protocol_version, stamper.next_sequence = state["protocol_version"], state["next_sequence"]
        pending.response = Response(saved["status"], [(n, v) for n, v in saved["headers"]], saved["body_size"])
        pending.copy = None if state["copy"] is None else ResponseCopy.restored(pending.response.headers, state["copy"])
        pending.body_size, pending.resume = state["body_size"], resume
        self._open[exchange] = pending

    def _opened(self, read: Read) -> Pending:
        return opened(read.record.exchange, orjson.loads(read.record.payload), read.at, read.record.at_ns)

    def _take(self, record: Record, pending: Pending) -> list[Built]:
        if record.kind is Kind.REQUEST_BODY:
            pending.body.append(record.payload)
            return []
        if record.kind is Kind.RESPONSE_HEAD:
            head = orjson.loads(record.payload)
            headers = [(n, v) for n, v in head["headers"]]
            return built(record.exchange, pending, self._begin(pending, head["status"], headers, head.get("decoded", False)))
        if record.kind is Kind.RESPONSE_CHUNK:
            return built(record.exchange, pending, self._chunk(pending, record.payload, record.at_ns // 1000))
        if record.kind is Kind.END:
            end = orjson.loads(record.payload)
            return self._close(record.exchange, ending_of(end, record.at_ns), end.get("response_bytes"))
        return []

    def _begin(
        self, pending: Pending, status: int | None, headers: list[tuple[str, str]], decoded: bool = False
    ) -> list[dict[str, Any]]:
        """The response's head is in: the session is known, so the request's messages can be made. `decoded`:
        the relay logs its chunks decoded (the head's mark)."""
        body = b"".join(pending.body)
        pending.body, pending.body_size = [], len(body)
        pending.response = Response(status, headers)
        stamper = pending.stamper
        stamper.session_key, stamper.mcp_session_id = session_of(pending.request, pending.route, headers)
        if not pending.route.messages:
            return []
        pending.copy = ResponseCopy(headers, decoded=decoded)
        if not body:
            return []
        message = events.Message(events.CLIENT_TO_UPSTREAM, body, pending.request.headers)
        return self._messages(pending, [message], pending.request.received_at)

    def _chunk(self, pending: Pending, chunk: bytes, at: int) -> list[dict[str, Any]]:
        assert pending.response is not None, "the relay appends a response's head before its body"
        pending.response.body_size += len(chunk)
        return self._messages(pending, pending.copy.feed(chunk), at) if pending.copy is not None else []

    def _close(self, exchange: bytes, how: Ending, crossed: int | None = None) -> list[Built]:
        """`crossed`: the size of the body that crossed, when the relay logged it decoded (its end says; an
        exchange closed as interrupted has no end, and counts the decoded bytes)."""
        pending = self._open.pop(exchange)
        made = self._begin(pending, None, []) if pending.response is None else []
        if pending.copy is not None:
            made += self._messages(pending, pending.copy.finish(), how.ended_at)
        assert pending.response is not None
        if crossed is not None:
            pending.response.body_size = crossed
        fields = exchange_fields(pending.request, pending.body_size, pending.route, pending.response, how, self._policy)
        made += pending.stamper.stamped("EXCHANGE", how.ended_at, fields)
        return built(exchange, pending, made, last=True)

    def _messages(self, pending: Pending, messages: list[events.Message], at: int) -> list[dict[str, Any]]:
        return [
            event for m in messages for event in pending.stamper.stamped("MESSAGE", at, events.message_fields(m, self._policy))
        ]


def built(exchange: bytes, pending: Pending, made: list[dict[str, Any]], *, last: bool = False) -> list[Built]:
    """Events for the worker to publish, on the MCP topic; with `last`, the final one is its exchange's last."""
    return [Built(exchange, pending.start, event, last and i == len(made) - 1, MCP) for i, event in enumerate(made)]


def opened(exchange: bytes, head: dict[str, Any], start: Position, last_at: int) -> Pending:
    """An MCP_REQUEST_HEAD's request, with the envelope its events share (the exchange id is the connection's)."""
    request, route = request_of(exchange, head), Route.of(head["mcp"])
    origin = events.Origin(events.STREAMABLE_HTTP, route.name, route.upstream_url, uuid_text(exchange))
    stamper = events.Stamper(origin, protocol_version=header(request.headers, "mcp-protocol-version"))
    return Pending(start, head, request, route, stamper, last_at=last_at)
