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

Capture is what the API proxy does (proxy/tap.py): the request's head (with
the `Route`: server name, recorded URL, client address), its body, the
response's head, each chunk just before it goes on, and how it ended, appended
to the capture log as raw material. The capture worker reads the messages out
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy import errors

# The API proxy's own small I/O helpers: reading a bounded body, writing to a client that may be gone.
from proxy.app import HOP_BY_HOP, METRICS, SETTINGS, TAP, _abort, _decoded, read_body, _send, end_to_end
from proxy.capture import RedactionPolicy, RequestRecord
from proxy.mcp.assemble import Route
from proxy.mcp.events import recorded_url
from proxy.mcp.keys import HTTP_SESSION, HTTP_UPSTREAMS
from proxy.tap import Exchange

log = logging.getLogger(__name__)

_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
HTTP_SCHEMES = ("http", "https")
WELL_KNOWN = ("oauth-protected-resource", "oauth-authorization-server")
KGB_ERROR = -32000  # JSON-RPC's implementation-defined server error range: the relay's own failures
JSON = [("Content-Type", "application/json")]


# --- pure: where a request goes -----------------------------------------


@functools.lru_cache(maxsize=256)  # a client sends the same path and query every call: parsed once, not per request
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


def http_upstreams(upstreams: Mapping[str, str], policy: RedactionPolicy) -> dict[str, tuple[str, str]]:
    """The HTTP servers of KGB_MCP_UPSTREAMS: NAME to (URL, URL as events hold it), worked out once, not per request."""
    return {name: (url, recorded_url(url, policy)) for name, url in upstreams.items() if URL(url).scheme in HTTP_SCHEMES}


def unknown(name: str, url: str | None) -> str:
    if url is not None:
        return f"KGB MCP relay: {name!r} is a WebSocket server: connect to ws://HOST:PORT/?upstream={name}"
    return f"KGB MCP relay: unknown MCP server {name!r}: not in KGB_MCP_UPSTREAMS"


# --- the relay: thin async shells ---------------------------------------------------------

Where = Callable[[str], URL]


async def relay(request: web.Request) -> web.StreamResponse:
    """``/mcp/NAME[/tail]``: an MCP endpoint, every message recorded."""
    info = request.match_info
    return await forward(request, info["name"], lambda url: target(url, info["tail"], request.rel_url.raw_query_string), True)


async def relay_well_known(request: web.Request) -> web.StreamResponse:
    """``/.well-known/<kind>/mcp/NAME[/tail]``: OAuth metadata, recorded as an exchange only."""
    info = request.match_info
    where = lambda url: well_known_target(url, info["kind"], info["tail"], request.rel_url.raw_query_string)  # noqa: E731
    return await forward(request, info["name"], where, False)


async def forward(request: web.Request, name: str, where: Where, messages: bool) -> web.StreamResponse:
    app = request.app
    record = RequestRecord(
        request.method,
        request.rel_url.raw_path,
        request.rel_url.raw_query_string,
        f"{request.version.major}.{request.version.minor}",
        _decoded(request.raw_headers),
        b"",
    )
    url, recorded = app[HTTP_UPSTREAMS].get(name, (None, None))
    route = Route(name, recorded, messages, request.remote).head()
    try:
        record.body = await read_body(request, app[SETTINGS].max_body_bytes)
    except errors.BodyTooLarge as exc:
        return fail(request, app[TAP].request(record, route), record, 413, "body_too_large", str(exc))
    exchange = app[TAP].request(record, route)
    if url is None:
        return fail(request, exchange, record, 404, "unknown_server", unknown(name, app[SETTINGS].mcp_upstreams.get(name)))
    outgoing = CIMultiDict(end_to_end(record.headers, request.headers.get("connection"), _NOT_FORWARDED))
    try:
        upstream = await app[HTTP_SESSION].request(
            request.method, where(url), headers=outgoing, data=record.body or None, allow_redirects=False
        )
    except Exception as exc:  # noqa: BLE001 - every failure is answered and captured
        failure = errors.translate(exc)
        return fail(request, exchange, record, failure.status, failure.kind, f"KGB MCP relay: {name}: {failure}")
    async with upstream:
        return await Relayed(request, exchange).stream(upstream)


def fail(request: web.Request, exchange: Exchange, record: RequestRecord, status: int, kind: str, message: str) -> web.Response:
    """The relay's own answer (unknown server, body too large, upstream unreachable), captured like any."""
    body = error_body(record.body, kind, message)
    exchange.response_head(status, JSON)
    exchange.chunk(body)
    exchange.end(client_disconnected=False, upstream_complete=False, proxy_error=(kind, message))
    request.app[METRICS].requests.labels(method=request.method, status=str(status)).inc()
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

    async def stream(self, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = end_to_end(_decoded(upstream.raw_headers), upstream.headers.get("connection"), HOP_BY_HOP)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(end_to_end(headers, None, frozenset({"content-length"})))
        if "content-length" in upstream.headers and upstream.content_length is not None:
            response.content_length = upstream.content_length
        self.exchange.response_head(upstream.status, headers)
        try:
            await self._pass(response, upstream)
        except asyncio.CancelledError:
            self._gone(upstream)
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.broke = ("upstream_gone", f"{type(exc).__name__}: {exc}")
            log.warning("mcp request %s: upstream stream broke: %s", self.exchange.label, exc)
            _abort(self.request)
        finally:
            self.exchange.end(
                client_disconnected=self.client_disconnected, upstream_complete=self.upstream_complete, proxy_error=self.broke
            )
            self.request.app[METRICS].requests.labels(method=self.request.method, status=str(upstream.status)).inc()
        return response

    async def _pass(self, response: web.StreamResponse, upstream: aiohttp.ClientResponse) -> None:
        if not await _send(response.prepare(self.request)):
            return self._gone(upstream)
        async for chunk in upstream.content.iter_any():
            self.exchange.chunk(chunk)
            if not await _send(response.write(chunk)):
                return self._gone(upstream)
        self.upstream_complete = True
        if not await _send(response.write_eof()):
            self.client_disconnected = True

    def _gone(self, upstream: aiohttp.ClientResponse) -> None:
        """The client left: the upstream request is closed, which a 2026-07-28 server takes as cancellation."""
        log.info("mcp request %s: client went away; closing the upstream request", self.exchange.label)
        self.client_disconnected = True
        upstream.close()
