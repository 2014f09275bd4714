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
(``handler_cancellation``), and the handler then closes the upstream
connection (never pooled again), which is how 2026-07-28 cancels a request.
The upstream side is the API relay's own pooled client (proxy/upstream.py),
one pool for all the HTTP servers, bounded per origin.

Capture is what the API proxy does (proxy/tap.py): the request's head (with
the `Route`: server name, recorded URL, client address), its body, the
response's head, each chunk just before it goes on, and how it ended, appended
to the capture log as raw material. An event stream with a Content-Encoding is
the one exception: its copy is logged decoded (`LogCopy`), so the worker can
save a long stream's state as it does a plain one's. The capture worker reads the messages out
of them and builds the events (proxy/mcp/assemble.py): no JSON-RPC parsing,
redaction or Avro on this loop. OAuth metadata at
``/.well-known/oauth-protected-resource/mcp/NAME`` and
``/.well-known/oauth-authorization-server/mcp/NAME`` is relayed to the
upstream's host the same way (RFC 9728, RFC 8414 path insertion), recorded as an
EXCHANGE only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from proxy import decode, errors

# The API proxy's own small I/O helpers: reading a bounded body, writing to a client that may be gone,
# an answer whose head leaves with its first bytes.
from proxy.app import (
    HOP_BY_HOP,
    METRICS,
    SETTINGS,
    TAP,
    _abort,
    _gone,
    decoded,
    _send,
    answer_for,
    end_to_end,
    read_body,
)
from proxy.capture import RedactionPolicy, RequestRecord
from proxy.mcp.assemble import Route
from proxy.mcp.events import recorded_url
from proxy.mcp.keys import HTTP_POOL, HTTP_UPSTREAMS
from proxy.tap import Exchange, Tap, exchange_id
from proxy.upstream import Origin, Response, UpstreamError, header

log = logging.getLogger(__name__)

_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
HTTP_SCHEMES = ("http", "https")
WELL_KNOWN = ("oauth-protected-resource", "oauth-authorization-server")
KGB_ERROR = -32000  # JSON-RPC's implementation-defined server error range: the relay's own failures
JSON = [("Content-Type", "application/json")]


# --- pure: where a request goes -----------------------------------------


@functools.lru_cache(maxsize=256)  # a client sends the same path and query every call: parsed once, not per request
def target(upstream: str, tail: str, query: str) -> tuple[Origin, str]:
    """The upstream's origin, and the request target: its path with the client's below, its query then the client's."""
    base = URL(upstream)
    path = base.raw_path.rstrip("/") + _encoded(tail) if tail else base.raw_path
    joined = "&".join(part for part in (base.raw_query_string, query) if part)
    return Origin.of(upstream), path + (f"?{joined}" if joined else "")


def well_known_target(upstream: str, kind: str, tail: str, query: str) -> tuple[Origin, str]:
    """RFC 9728 / RFC 8414: the metadata document sits at the origin, its path inserted after the well-known name."""
    path = f"/.well-known/{kind}" + URL(upstream).raw_path.rstrip("/") + _encoded(tail)
    return Origin.of(upstream), path + (f"?{query}" if query else "")


def _encoded(tail: str) -> str:
    """The router hands the tail decoded; it goes on the request line encoded again, so a decoded CR or space
    cannot end the target early."""
    return URL.build(path=tail, encoded=False).raw_path if tail else ""


def error_body(request_body: bytes, kind: str, message: str) -> bytes:
    """The relay's own failure as a JSON-RPC error, answering the request's id when the body is one request."""
    try:
        parsed = orjson.loads(request_body) if request_body else None
    except orjson.JSONDecodeError:
        parsed = None
    ident = parsed.get("id") if isinstance(parsed, dict) and "method" in parsed else None
    return orjson.dumps({"jsonrpc": "2.0", "id": ident, "error": {"code": KGB_ERROR, "message": message, "data": {"type": kind}}})


def http_upstreams(upstreams: Mapping[str, str], policy: RedactionPolicy) -> dict[str, tuple[str, str]]:
    """The HTTP servers of KGB_MCP_UPSTREAMS: NAME to (URL, URL as events hold it), worked out once, not per request."""
    return {name: (url, recorded_url(url, policy)) for name, url in upstreams.items() if URL(url).scheme in HTTP_SCHEMES}


def unknown(name: str, url: str | None) -> str:
    if url is not None:
        return f"KGB MCP relay: {name!r} is a WebSocket server: connect to ws://HOST:PORT/?upstream={name}"
    return f"KGB MCP relay: unknown MCP server {name!r}: not in KGB_MCP_UPSTREAMS"


# --- the relay: thin async shells ---------------------------------------------------------


async def relay(request: web.Request) -> web.StreamResponse:
    """``/mcp/NAME[/tail]``: an MCP endpoint, every message recorded."""
    return await forward(request, None)


async def relay_well_known(request: web.Request) -> web.StreamResponse:
    """``/.well-known/<kind>/mcp/NAME[/tail]``: OAuth metadata, recorded as an exchange only."""
    return await forward(request, request.match_info["kind"])


async def whole_body(request: web.Request, limit: int) -> bytes:
    """The body, taken at once when all of it came with the head (an MCP message nearly always does):
    no stream to iterate; else read to its end, bounded."""
    content = request.content
    if content.is_eof() and content.total_bytes <= limit:
        return content.read_nowait()
    return await read_body(request, limit)


async def settled(upstream: Response, chunk: bytes) -> bytes:
    """`chunk` and whatever more of the answer reaches the relay within one turn of the loop: a server that
    writes its SSE head, event and end back to back (aiohttp's StreamResponse does, in three writes) often
    has them read apart, and one turn lets the rest in, so the head leaves with the event and the event
    with the end, one client write in place of three. An answer that is all here waits for nothing; one
    whose next bytes are not yet sent waits one turn (microseconds), then goes on as it came."""
    if upstream.at_eof():
        return chunk
    await asyncio.sleep(0)
    return chunk + upstream.take()


def stream_decoder(headers: list[tuple[str, str]]) -> decode.Decoder | None:
    """The decoder for an event stream's Content-Encoding: its copy goes to the log decoded, so the worker
    can save a long stream's state as for a plain one (proxy/mcp/assemble.py). None, the chunks logged as
    they crossed: a body not encoded, one encoded as we cannot undo, or a JSON answer (kept whole, decoded
    by the worker at its end)."""
    content_type = (header(headers, "content-type") or "").lower()
    encoding = header(headers, "content-encoding")
    if not encoding or not content_type.startswith("text/event-stream"):
        return None
    return decode.known_decoder(encoding)


@dataclass
class LogCopy:
    """What the log gets of each chunk of an answer: the chunk, or its decoding (`stream_decoder`). A chunk that
    does not decode goes to the log as it crossed, and so does the rest of the stream (the worker then takes
    it as sent, as it does a body it cannot decode itself); the client's bytes are never touched, and
    nothing here raises into the relay."""

    decoder: decode.Decoder | None
    label: str

    def of(self, chunk: bytes, *, last: bool = False) -> bytes:
        """`last`: the answer is all here, so what the decoder still holds comes out with it."""
        decoder = self.decoder
        if decoder is None:
            return chunk
        try:
            data = decoder.feed(chunk)
        except Exception as exc:  # noqa: BLE001 - a body that does not decode costs its decoding, never the client's stream
            log.warning("mcp request %s: cannot decode the event stream (%s); logging the rest as it crossed", self.label, exc)
            self.decoder = None
            return chunk
        try:
            return data + (decoder.flush() if last else b"")
        except Exception:  # noqa: BLE001 - a cut-short body's end: what decoded is all there is
            return data


def held(tap: Tap, record: RequestRecord, route: dict[str, Any]) -> Exchange:
    """`Tap.request`, its records held for the next one (the response's head or first chunk, or the end):
    the request is whole and small, so it costs no write of its own on the way upstream, as the API
    relay does with a body that came whole (`proxy.app.Body.payload`)."""
    exchange = tap.streaming(record, len(record.body), route)
    exchange.body(record.body, hold=True)
    exchange.body_end()
    return exchange


async def forward(request: web.Request, well_known: str | None) -> web.StreamResponse:
    """`well_known`: the OAuth metadata kind for ``relay_well_known``, None for an MCP endpoint."""
    app, info, query = request.app, request.match_info, request.rel_url.raw_query_string
    name = info["name"]
    record = RequestRecord(
        request.method,
        request.rel_url.raw_path,
        query,
        f"{request.version.major}.{request.version.minor}",
        decoded(request.raw_headers),
        b"",
        exchange_id=exchange_id(),  # RequestRecord's default makes a uuid.UUID for its text, twice the cost
    )
    url, recorded = app[HTTP_UPSTREAMS].get(name, (None, None))
    route = Route(name, recorded, well_known is None, request.remote).head()
    try:
        record.body = await whole_body(request, app[SETTINGS].max_body_bytes)
    except errors.BodyTooLarge as exc:
        return fail(request, app[TAP].request(record, route), record, 413, "body_too_large", str(exc))
    exchange = held(app[TAP], record, route)
    if url is None:
        return fail(request, exchange, record, 404, "unknown_server", unknown(name, app[SETTINGS].mcp_upstreams.get(name)))
    tail = info["tail"]
    origin, where = target(url, tail, query) if well_known is None else well_known_target(url, well_known, tail, query)
    headers = end_to_end(record.headers, request.headers.get("connection"), _NOT_FORWARDED)
    # a body the client framed, even an empty one, goes with its length; none when it had none (a GET)
    body = record.body if record.body or request.content_length is not None else None
    relayed = Relayed(request, exchange)
    try:  # the pool has no read timeout (proxy/mcp/app.py): a GET stream or a long POST answer stays as long as the server keeps it
        upstream = await app[HTTP_POOL].request(origin, request.method, where, headers, body)
    except asyncio.CancelledError:
        relayed.left_early()
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is answered and captured
        failure = errors.translate(exc)
        return fail(request, exchange, record, failure.status, failure.kind, f"KGB MCP relay: {name}: {failure}")
    async with upstream:
        return await relayed.stream(upstream)


def fail(request: web.Request, exchange: Exchange, record: RequestRecord, status: int, kind: str, message: str) -> web.Response:
    """The relay's own answer (unknown server, body too large, upstream unreachable), captured like any."""
    body = error_body(record.body, kind, message)
    exchange.response_head(status, JSON)
    exchange.chunk(body)
    exchange.end(client_disconnected=False, upstream_complete=False, proxy_error=(kind, message))
    request.app[METRICS].count_request(request.method, status)
    log.warning("mcp request %s: %s", exchange.label, message)
    return web.Response(status=status, body=body, content_type="application/json")


@dataclass
class Relayed:
    """One HTTP request's response streamed back, each chunk appended to the capture log before it goes on."""

    request: web.Request
    exchange: Exchange
    client_disconnected: bool = False
    upstream_complete: bool = False
    broke: tuple[str, str] | None = None
    copy: LogCopy | None = None

    async def stream(self, upstream: Response) -> web.StreamResponse:
        try:
            first = await settled(upstream, upstream.take())
        except asyncio.CancelledError:
            self.left_early()
            raise
        decoder = stream_decoder(upstream.headers)
        if decoder is not None:
            self.copy = LogCopy(decoder, self.exchange.label)
            self.exchange.decoded_chunks()
        response, first = answer_for(upstream.status, upstream.reason, upstream.headers, first, self.exchange)
        try:
            await self._pass(response, upstream, first)
        except asyncio.CancelledError:
            self._gone(upstream)
            raise
        except UpstreamError as exc:
            self.broke = ("upstream_gone", f"{type(exc).__name__}: {exc}")
            log.warning("mcp request %s: upstream stream broke: %s", self.exchange.label, exc)
            _abort(self.request)
        finally:
            self.exchange.end(
                client_disconnected=self.client_disconnected, upstream_complete=self.upstream_complete, proxy_error=self.broke
            )
            self.request.app[METRICS].count_request(self.request.method, upstream.status)
        return response

    async def _pass(self, response: web.StreamResponse, upstream: Response, chunk: bytes) -> None:
        """`chunk`: the bytes that came with the head. The last bytes leave with the end of the answer, in one
        write, their log records (the last chunk and the end) in one append before them: a JSON answer, or an
        SSE answer whose event and end came together, is head, body and end in one of each."""
        if not await _send(response.prepare(self.request)):
            return self._gone(upstream)
        while True:
            if upstream.at_eof():
                return await self._last(response, chunk)
            if chunk:
                self._log(chunk)
                if not await _send(response.write(chunk)):
                    return self._gone(upstream)
            chunk = await settled(upstream, await upstream.next())

    async def _last(self, response: web.StreamResponse, chunk: bytes) -> None:
        """The answer is all here: its end is recorded with its last bytes, before they go on (as the API relay
        does, so a client that leaves while they drain is not told apart)."""
        self.upstream_complete = True
        self.client_disconnected = _gone(self.request)
        self._log(chunk, last=True)
        self.exchange.end(client_disconnected=self.client_disconnected, upstream_complete=True)
        if not await _send(response.write_eof(chunk)):
            self.client_disconnected = True

    def _log(self, chunk: bytes, *, last: bool = False) -> None:
        """`chunk` to the log, decoded for a compressed event stream; `last` holds it for the end."""
        data = chunk if self.copy is None else self.copy.of(chunk, last=last)
        if data or chunk:
            self.exchange.chunk(data, hold=last, crossed=len(chunk))

    def left_early(self) -> None:
        """The client left before the upstream's answer came: the pool closed the upstream connection, and the
        exchange ends here with no response."""
        log.info("mcp request %s: client went away before the answer; closing the upstream request", self.exchange.label)
        self.client_disconnected = True
        self.exchange.end(client_disconnected=True, upstream_complete=False)

    def _gone(self, upstream: Response) -> None:
        """The client left: the upstream connection is closed, which a 2026-07-28 server takes as cancellation."""
        log.info("mcp request %s: client went away; closing the upstream request", self.exchange.label)
        self.client_disconnected = True
        upstream.close()
