"""The MCP app on KGB_MCP_PORT: the WebSocket relay, the Streamable HTTP relay, its own status pages.

Routes, first match wins:

    /mcp/NAME[/more]                                    Streamable HTTP (`proxy.mcp.http`); a WebSocket upgrade there too is the WebSocket relay
    /.well-known/oauth-*/mcp/NAME[/more]                OAuth metadata of NAME, relayed (`proxy.mcp.http`)
    GET /health, /ready, /metrics                       this app's own
    any path, WebSocket upgrade, ?upstream=NAME         the WebSocket relay (`proxy.mcp.websocket`), as the earlier KGB took it
    GET / without an upgrade                            426, saying where each relay is
    anything else                                       404 with a JSON-RPC error saying the same

Resources are owned here, at the edge: one upstream client per transport (an
aiohttp session for WebSockets, with a read timeout for its handshake; the
proxy's own pool, proxy/upstream.py, for HTTP, with no read timeout, since MCP
streams stay open as long as the server likes) and the capture log,
shared with the API app; the capture worker publishes its events to
KGB_MCP_TOPIC, keyed by each event's session. Handlers are cancelled when their
client goes away, so a relay learns it at once, even on an idle stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from proxy.app import METRICS, SETTINGS, capturing, health, metrics_endpoint, ready
from proxy.capture import RedactionPolicy
from proxy.mcp import http, websocket
from proxy.mcp.keys import HTTP_POOL, HTTP_UPSTREAMS, POLICY, WS_SESSION
from proxy.metrics import ProxyMetrics
from proxy.settings import ProxySettings, fingerprint_key
from proxy.upstream import Pool

STATUS_PAGES = {"/health": health, "/ready": ready, "/metrics": metrics_endpoint}
WHERE = "Streamable HTTP at http://HOST:PORT/mcp/NAME, or connect a WebSocket to ws://HOST:PORT/?upstream=NAME"
_NAME_AND_TAIL = "{name:[^/]+}{tail:(/.*)?}"


def is_upgrade(request: web.Request) -> bool:
    return request.headers.get("upgrade", "").lower() == "websocket"


async def streamable(request: web.Request) -> web.StreamResponse:
    return await (websocket.relay(request) if is_upgrade(request) else http.relay(request))


async def entry(request: web.Request) -> web.StreamResponse:
    """WebSocket upgrades on any other path are relayed; plain HTTP learns where the relays are."""
    if is_upgrade(request):
        return await websocket.relay(request)
    if request.path == "/" and request.method == "GET":
        return web.Response(status=426, headers={"Upgrade": "websocket"}, text=WHERE + "\n")
    return web.Response(status=404, body=no_route(request.method, request.path), content_type="application/json")


def no_route(method: str, path: str) -> bytes:
    """A request for no route of this port, answered the way an MCP client reads a failure: a JSON-RPC error."""
    return http.error_body(b"", "no_route", f"KGB MCP relay: no route for {method} {path}: {WHERE}")


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """The upstream clients: a session with a handshake timeout for WebSockets; for HTTP a pool with no read timeout
    at all, head included (a tool may run for minutes before it answers, a stream stays open as long as the server likes)."""
    settings = app[SETTINGS]
    handshake = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout, sock_read=settings.connect_timeout)
    async with (
        aiohttp.ClientSession(timeout=handshake, cookie_jar=aiohttp.DummyCookieJar()) as session,
        Pool(
            settings.upstream_connections,
            settings.connect_timeout,
            read_timeout=None,
            idle_timeout=settings.upstream_idle_timeout,
        ) as pool,
    ):
        app[WS_SESSION], app[HTTP_POOL] = session, pool
        yield


async def _close_relays(app: web.Application) -> None:
    """On shutdown, before the capture log closes: every WebSocket relay closes with 1001 and records its end."""
    relays: set[websocket.Relay] = app[websocket.RELAYS]
    await asyncio.gather(*(relay.shutdown() for relay in list(relays)))


def build_mcp_app(settings: ProxySettings, metrics: ProxyMetrics | None = None) -> web.Application:
    """The relays on KGB_MCP_PORT, with metrics of their own (served on its port)."""
    app = web.Application(client_max_size=settings.max_body_bytes, handler_args={"handler_cancellation": True})
    app[SETTINGS] = settings
    app[METRICS] = metrics or ProxyMetrics()
    app[websocket.RELAYS] = set()
    app[POLICY] = RedactionPolicy(
        settings.rules(), settings.redact_headers, fingerprint_key(settings, settings.capture.spool_dir)
    )
    app[HTTP_UPSTREAMS] = http.http_upstreams(settings.mcp_upstreams, app[POLICY])
    app.cleanup_ctx.append(capturing)
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_close_relays)
    app.router.add_route("*", "/mcp/" + _NAME_AND_TAIL, streamable)
    app.router.add_route(
        "*", "/.well-known/{kind:" + "|".join(http.WELL_KNOWN) + "}/mcp/" + _NAME_AND_TAIL, http.relay_well_known
    )
    for path, page in STATUS_PAGES.items():
        app.router.add_get(path, page)
    app.router.add_route("*", r"/{tail:[\s\S]*}", entry)  # WebSocket upgrades on any path; the rest is told where to go
    return app
