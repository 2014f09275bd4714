"""The MCP Streamable HTTP relay: ``http://host:9000/mcp/NAME[/more]`` to the URL KGB_MCP_UPSTREAMS gives NAME.

Every method passes (POST, GET, DELETE, and the rest), with every end-to-end
header both ways (``Mcp-Session-Id``, ``MCP-Protocol-Version``, ``Mcp-Method``,
``Mcp-Name``, ``Mcp-Param-*``, ``Last-Event-ID``, ``Authorization``,
``WWW-Authenticate``): the relay never mints, rewrites or drops a session id.
The client picks the path below NAME and the query; the host is always the
configured one. Responses stream back as they arrive, JSON or
``text/event-stream``, ``:`` keep-alives included, with no read timeout (a GET
stream or a ``subscriptions/listen`` POST stays open as long as the server
keeps it). The app cancels a handler whose client went away
(``handler_cancellation``), and the handler then closes the upstream request,
which is how 2026-07-28 cancels a request.

Capture (`proxy.mcp.events`), after each chunk has gone on: the request body's
messages, each SSE event's data or the JSON body of the response, one MESSAGE
event each, then one EXCHANGE event for the HTTP request. The request's
messages are built once the response's headers are in, so they carry the
session id an ``initialize`` response assigns. OAuth metadata at
``/.well-known/oauth-protected-resource/mcp/NAME`` and
``/.well-known/oauth-authorization-server/mcp/NAME`` is relayed to the
upstream's host the same way (RFC 9728, RFC 8414 path insertion), recorded as an
EXCHANGE only.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy import decode, errors

# The API proxy's own small I/O helpers: reading a bounded body, writing to a client that may be gone.
from proxy.app import HOP_BY_HOP, METRICS, MCP_SINK, SETTINGS, _abort, _decoded, _send, end_to_end, read_body
from proxy.capture import RedactionPolicy, now_us
from proxy.mcp import events
from proxy.mcp.keys import HTTP_SESSION, POLICY
from proxy.redact import redact_headers, redact_query
from proxy.sse import SSEEvent, SSEParser

log = logging.getLogger(__name__)

_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
HTTP_SCHEMES = ("http", "https")
WELL_KNOWN = ("oauth-protected-resource", "oauth-authorization-server")
KGB_ERROR = -32000  # JSON-RPC's implementation-defined server error range: the relay's own failures


# --- pure: where a request goes, what it records -----------------------------------------


def target(upstream: str, tail: str, query: str) -> URL:
    """The upstream URL with the client's path below its own and the client's query after its own."""
    base = URL(upstream)
    path = base.raw_path.rstrip("/") + tail if tail else base.raw_path
    joined = "&".join(part for part in (base.raw_query_string, query) if part)
    return URL(str(base.with_path(path, encoded=True).with_query(None)) + (f"?{joined}" if joined else ""), encoded=True)


def well_known_target(upstream: str, kind: str, tail: str, query: str) -> URL:
    """RFC 9728 / RFC 8414: the metadata document sits at the origin, its path inserted after the well-known name."""
    base = URL(upstream)
    path = f"/.well-known/{kind}" + base.raw_path.rstrip("/") + tail
    return URL(str(base.origin()) + path + (f"?{query}" if query else ""), encoded=True)


def error_body(request_body: bytes, kind: str, message: str) -> bytes:
    """The relay's own failure as a JSON-RPC error, answering the request's id when the body is one request."""
    try:
        parsed = orjson.loads(request_body) if request_body else None
    except orjson.JSONDecodeError:
        parsed = None
    ident = parsed.get("id") if isinstance(parsed, dict) and "method" in parsed else None
    return orjson.dumps({"jsonrpc": "2.0", "id": ident, "error": {"code": KGB_ERROR, "message": message, "data": {"type": kind}}})


@dataclass
class HttpRecord:
    """One request as it arrived; `headers` in wire order with duplicates."""

    name: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    client_address: str | None
    body: bytes = b""
    received_at: int = field(default_factory=now_us)
    started_ns: int = field(default_factory=time.perf_counter_ns)


@dataclass
class Outcome:
    """How the response went, as far as the client is concerned."""

    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body_size: int = 0
    first_byte_ns: int | None = None
    client_disconnected: bool = False
    upstream_complete: bool = False
    error_type: str | None = None
    error_message: str | None = None


def session_of(record: HttpRecord, response_headers: list[tuple[str, str]], key: bytes) -> tuple[str, str | None]:
    """(session key, Mcp-Session-Id): the server's id when there is one, else the stateless key of this client today."""
    session_id = events.header(response_headers, "mcp-session-id") or events.header(record.headers, "mcp-session-id")
    if session_id:
        return session_id, session_id
    day = datetime.fromtimestamp(record.received_at / 1e6, UTC).date().isoformat()
    return events.stateless_key(record.name, day, record.client_address, record.headers, key), None


def exchange_fields(record: HttpRecord, outcome: Outcome, policy: RedactionPolicy) -> dict[str, Any]:
    request_headers, fired = redact_headers(record.headers, policy.extra_headers, policy.rules)
    response_headers, response_fired = redact_headers(outcome.headers, policy.extra_headers, policy.rules)
    query, query_fired = redact_query(record.query, policy.rules)
    end = time.perf_counter_ns()
    first = outcome.first_byte_ns
    return {
        "http": {
            "method": record.method,
            "path": record.path,
            "query": query,
            "request_headers": request_headers,
            "status": outcome.status,
            "response_headers": response_headers,
            "content_type": events.header(outcome.headers, "content-type"),
            "request_body_size": len(record.body),
            "response_body_size": outcome.body_size,
            "started_at": record.received_at,
            "ttfb_ms": None if first is None else (first - record.started_ns) / 1e6,
            "duration_ms": (end - record.started_ns) / 1e6,
            "client_disconnected": outcome.client_disconnected,
            "upstream_complete": outcome.upstream_complete,
        },
        "client_address": record.client_address,
        "error_type": outcome.error_type,
        "error_message": outcome.error_message,
        "redactions": sorted(set(fired + response_fired + query_fired)),
    }


class ResponseCopy:
    """A decoded copy of a response body, turned into messages as it streams: each SSE event with data
    as it completes, a JSON body at its end. Runs on the response path, so it never raises."""

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
        except Exception:  # noqa: BLE001 - the copy must never break the stream
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


# --- the relay: thin async shells ---------------------------------------------------------


def http_upstream(request: web.Request, name: str) -> str | None:
    url = request.app[SETTINGS].mcp_upstreams.get(name)
    return url if url is not None and URL(url).scheme in HTTP_SCHEMES else None


async def relay(request: web.Request) -> web.StreamResponse:
    """``/mcp/NAME[/tail]``: an MCP endpoint, every message recorded."""
    info = request.match_info
    return await forward(request, info["name"], lambda url: target(url, info["tail"], request.rel_url.raw_query_string), True)


async def relay_well_known(request: web.Request) -> web.StreamResponse:
    """``/.well-known/<kind>/mcp/NAME[/tail]``: OAuth metadata, recorded as an exchange only."""
    info = request.match_info
    where = lambda url: well_known_target(url, info["kind"], info["tail"], request.rel_url.raw_query_string)  # noqa: E731
    return await forward(request, info["name"], where, False)


async def forward(request: web.Request, name: str, where: Any, messages: bool) -> web.StreamResponse:
    app = request.app
    record = HttpRecord(
        name,
        request.method,
        request.rel_url.raw_path,
        request.rel_url.raw_query_string,
        _decoded(request.raw_headers),
        request.remote,
    )
    url = http_upstream(request, name)
    origin = events.Origin(events.STREAMABLE_HTTP, name, url and events.recorded_url(url, app[POLICY]))
    recorder = events.Recorder(
        origin, app[POLICY], app[MCP_SINK].submit, protocol_version=events.header(record.headers, "mcp-protocol-version")
    )
    exchange = Exchange(request, record, recorder, messages)
    try:
        record.body = await read_body(request, app[SETTINGS].max_body_bytes)
    except errors.BodyTooLarge as exc:
        return exchange.fail(413, "body_too_large", str(exc))
    if url is None:
        return exchange.fail(404, "unknown_server", unknown(name, request.app[SETTINGS].mcp_upstreams.get(name)))
    outgoing = CIMultiDict(end_to_end(record.headers, request.headers.get("connection"), _NOT_FORWARDED))
    try:
        upstream = await app[HTTP_SESSION].request(
            request.method, where(url), headers=outgoing, data=record.body or None, allow_redirects=False
        )
    except Exception as exc:  # noqa: BLE001 - every failure is answered and captured
        failure = errors.translate(exc)
        return exchange.fail(failure.status, failure.kind, f"KGB MCP relay: {name}: {failure}")
    async with upstream:
        return await exchange.stream(upstream)


def unknown(name: str, url: str | None) -> str:
    if url is not None:
        return f"KGB MCP relay: {name!r} is a WebSocket server: connect to ws://HOST:PORT/?upstream={name}"
    return f"KGB MCP relay: unknown MCP server {name!r}: not in KGB_MCP_UPSTREAMS"


@dataclass
class Exchange:
    """One HTTP request through the relay: the response streamed back, a copy recorded behind it."""

    request: web.Request
    record: HttpRecord
    recorder: events.Recorder
    messages: bool
    outcome: Outcome = field(default_factory=Outcome)

    def fail(self, status: int, kind: str, message: str) -> web.Response:
        """The relay's own answer (unknown server, body too large, upstream unreachable), captured like any."""
        body = error_body(self.record.body, kind, message)
        headers = [("Content-Type", "application/json")]
        self.outcome = Outcome(status, headers, len(body), time.perf_counter_ns(), error_type=kind, error_message=message)
        log.warning("mcp request %s: %s", self.recorder.origin.connection_id, message)
        self._begin([])
        if self.messages:
            self.recorder.message(events.Message(events.UPSTREAM_TO_CLIENT, body))
        self._end()
        return web.Response(status=status, body=body, content_type="application/json")

    async def stream(self, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = end_to_end(_decoded(upstream.raw_headers), upstream.headers.get("connection"), HOP_BY_HOP)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(end_to_end(headers, None, frozenset({"content-length"})))
        if "content-length" in upstream.headers and upstream.content_length is not None:
            response.content_length = upstream.content_length
        self.outcome.status, self.outcome.headers = upstream.status, headers
        copy = ResponseCopy(headers)
        self._begin(headers)
        try:
            await self._pass(response, upstream, copy)
        except asyncio.CancelledError:
            self._gone(upstream)
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.outcome.error_type, self.outcome.error_message = "upstream_gone", f"{type(exc).__name__}: {exc}"
            log.warning("mcp request %s: upstream stream broke: %s", self.recorder.origin.connection_id, exc)
            _abort(self.request)
        finally:
            self._end(copy)
        return response

    async def _pass(self, response: web.StreamResponse, upstream: aiohttp.ClientResponse, copy: ResponseCopy) -> None:
        if not await _send(response.prepare(self.request)):
            return self._gone(upstream)
        async for chunk in upstream.content.iter_any():
            if not await _send(response.write(chunk)):
                return self._gone(upstream)
            self._took(chunk, copy)
        self.outcome.upstream_complete = True
        if not await _send(response.write_eof()):
            self.outcome.client_disconnected = True

    def _took(self, chunk: bytes, copy: ResponseCopy) -> None:
        if self.outcome.first_byte_ns is None:
            self.outcome.first_byte_ns = time.perf_counter_ns()
        self.outcome.body_size += len(chunk)
        if self.messages:
            for message in copy.feed(chunk):
                self.recorder.message(message)

    def _gone(self, upstream: aiohttp.ClientResponse) -> None:
        """The client left: the upstream request is closed, which a 2026-07-28 server takes as cancellation."""
        log.info("mcp request %s: client went away; closing the upstream request", self.recorder.origin.connection_id)
        self.outcome.client_disconnected = True
        upstream.close()

    def _begin(self, response_headers: list[tuple[str, str]]) -> None:
        """The response's headers are in: the session is known, so the request's messages can be recorded."""
        self.recorder.session_key, self.recorder.mcp_session_id = session_of(
            self.record, response_headers, self.recorder.policy.fingerprint_key
        )
        if self.messages and self.record.body:
            headers = self.record.headers
            self.recorder.message(
                events.Message(events.CLIENT_TO_UPSTREAM, self.record.body, headers), at=self.record.received_at
            )

    def _end(self, copy: ResponseCopy | None = None) -> None:
        if copy is not None and self.messages:
            for message in copy.finish():
                self.recorder.message(message)
        self.recorder.record("EXCHANGE", exchange_fields, self.record, self.outcome, self.recorder.policy)
        metrics = self.request.app[METRICS]
        metrics.requests.labels(method=self.record.method, status=str(self.outcome.status or 0)).inc()
