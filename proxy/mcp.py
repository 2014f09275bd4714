"""The MCP WebSocket relay: ``ws://host:9000/<any path>?upstream=NAME``.

One relay per client connection, two pumps, one per direction::

    client ──frame──► pump ──send──► upstream        then: recorder.frame(...)
    client ◄──send─── pump ◄──frame── upstream        then: recorder.frame(...)

Each frame is forwarded as it came (text as text, binary as binary, the
payload bytes never decoded or re-encoded) before a copy goes to the recorder,
which numbers it and builds its event later in the loop (STYLE 2): a recorder
failure costs an event, never a frame. aiohttp answers pings on both sides.

The first pump to stop says how the connection ended (`Ending`): that side's
close code and reason go to the other side, then are echoed back to it. A side
that vanishes without a close frame gets its peer 1001 (client gone) or 1011
(upstream gone). NAME outside KGB_MCP_UPSTREAMS is accepted then closed with
4001, an unreachable upstream with 1011, as the earlier KGB did; both are
captured like any connection: OPEN, then CLOSE with the error.

Events (schemas/mcp.avsc) go to KGB_MCP_TOPIC through a publisher of their
own, keyed by connection id. This app also answers plain HTTP GETs of
``/health``, ``/ready`` and ``/metrics`` on its port, for its own publisher.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web
from yarl import URL

from proxy.app import HOP_BY_HOP, METRICS, PUBLISHER, SESSION, SETTINGS, end_to_end, health, metrics_endpoint, ready
from proxy.capture import Submit, soon, now_us
from proxy.metrics import ProxyMetrics
from proxy.publish import Publisher
from proxy.redact import Rule, redact_body, redact_headers, redact_query, redact_text
from proxy.settings import ProxySettings

log = logging.getLogger(__name__)

MCP_SCHEMA = "mcp"
UNKNOWN_UPSTREAM = 4001
UPSTREAM_UNREACHABLE = 1011
GOING_AWAY = 1001
NO_STATUS = 1005
MAX_REASON_BYTES = 123  # RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code
SHUTDOWN_REASON = "KGB proxy shutting down"

CLIENT, UPSTREAM, PROXY = "client", "upstream", "proxy"
DIRECTION = {CLIENT: "CLIENT_TO_UPSTREAM", UPSTREAM: "UPSTREAM_TO_CLIENT", PROXY: None}
OTHER = {CLIENT: UPSTREAM, UPSTREAM: CLIENT}
FRAME_TYPES = {WSMsgType.TEXT: "TEXT", WSMsgType.BINARY: "BINARY"}

# The WebSocket handshake is between the client and us, and again between us and the upstream.
_NOT_FORWARDED = HOP_BY_HOP | {
    "host", "content-length", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept",
}

RELAYS = web.AppKey("relays", set)
RULES = web.AppKey("rules", tuple)


# --- how a connection ends: pure -----------------------------------------------------


@dataclass(frozen=True)
class Ending:
    """Who ended a connection (client, upstream, or the proxy itself), with which close frame
    (`code` None: that side vanished without one), and the failure if it was one."""

    side: str
    code: int | None
    reason: str = ""
    error_type: str | None = None
    error_message: str | None = None


def ending_of(message: aiohttp.WSMessage, side: str) -> Ending:
    """The non-data message that stopped `side`'s pump. CLOSING only comes from our own
    close() while the pump waits, which only a shutdown does before a pump stops."""
    if message.type is WSMsgType.CLOSE:
        return Ending(side, message.data or NO_STATUS, message.extra or "")
    if message.type is WSMsgType.CLOSING:
        return Ending(PROXY, GOING_AWAY, SHUTDOWN_REASON)
    if message.type is WSMsgType.ERROR:
        return Ending(side, None, "", "protocol_error", str(message.data))
    return gone(side)


def gone(side: str) -> Ending:
    return Ending(side, None, "", f"{side}_gone", "connection lost without a close frame")


def sendable(code: int) -> bool:
    """Codes an endpoint may put in a close frame (RFC 6455 §7.4); 1005 and 1006 only describe one."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def peer_close(ending: Ending) -> tuple[int, str]:
    """The close frame the other side gets: the same one when it can be sent, else one that says what happened."""
    if ending.code is not None and sendable(ending.code):
        return ending.code, ending.reason
    if ending.code == NO_STATUS:
        return 1000, ending.reason
    why = ending.error_message or f"closed with {ending.code}"
    return UPSTREAM_UNREACHABLE if ending.side == UPSTREAM else GOING_AWAY, f"{ending.side}: {why}"


def reason_bytes(reason: str) -> bytes:
    """A close reason cut to what fits in a close frame, on a character boundary."""
    return reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore").encode()


def refusal(name: str) -> str:
    if not name:
        return "no upstream named: connect to ?upstream=NAME"
    return f"unknown upstream {name!r}: not in KGB_MCP_UPSTREAMS"


def without_credentials(url: str) -> str:
    """An upstream URL as recorded: user and password in it stay out of the events."""
    return str(URL(url).with_user(None))


# --- events: pure --------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    """The client's upgrade request, as it arrived."""

    path: str
    query: str
    headers: list[tuple[str, str]]
    subprotocol: str | None = None


def _long(value: Any) -> int | None:
    return value if type(value) is int and -(2**63) <= value < 2**63 else None


def jsonrpc_message(item: Any) -> dict[str, Any] | None:
    """One JSON-RPC 2.0 message classified: a method with an id is a request, without one a
    notification; otherwise `error` or `result` make it an error or a response."""
    if not isinstance(item, dict):
        return None
    found: dict[str, Any] = {"method": None, "id": orjson.dumps(item["id"]).decode() if "id" in item else None,
                             "error_code": None, "error_message": None}
    method, error = item.get("method"), item.get("error")
    if isinstance(method, str):
        return found | {"kind": "REQUEST" if "id" in item else "NOTIFICATION", "method": method}
    if isinstance(error, dict):
        message = error.get("message")
        return found | {"kind": "ERROR", "error_code": _long(error.get("code")),
                        "error_message": message if isinstance(message, str) else None}
    if "result" in item:
        return found | {"kind": "RESPONSE"}
    return None


def jsonrpc_messages(payload: bytes) -> list[dict[str, Any]]:
    """The messages of a text frame: one, or several for a batch; none when it is not JSON-RPC."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    return [message for message in map(jsonrpc_message, items) if message is not None]


def open_fields(handshake: Handshake, rules: Sequence[Rule], extra_headers: frozenset[str]) -> dict[str, Any]:
    headers, fired = redact_headers(handshake.headers, extra_headers, rules)
    query, query_fired = redact_query(handshake.query, rules)
    return {
        "handshake": {"path": handshake.path, "query": query, "headers": headers, "subprotocol": handshake.subprotocol},
        "redactions": sorted(set(fired + query_fired)),
    }


def frame_fields(side: str, frame_type: WSMsgType, payload: bytes, rules: Sequence[Rule]) -> dict[str, Any]:
    """JSON-RPC is read from the redacted payload, so a secret in an error message stays out too."""
    redacted, fired = redact_body(payload, rules)
    return {
        "direction": DIRECTION[side],
        "frame_type": FRAME_TYPES[frame_type],
        "payload": redacted,
        "payload_size": len(payload),
        "jsonrpc": jsonrpc_messages(redacted) if frame_type is WSMsgType.TEXT else [],
        "redactions": sorted(set(fired)),
    }


def close_fields(ending: Ending, rules: Sequence[Rule]) -> dict[str, Any]:
    reason, fired = redact_text(ending.reason, rules)
    error, error_fired = redact_text(ending.error_message or "", rules)
    return {
        "direction": DIRECTION[ending.side],
        "close_code": ending.code,
        "close_reason": reason or None,
        "error_type": ending.error_type,
        "error_message": error or None,
        "redactions": sorted(set(fired + error_fired)),
    }


@dataclass
class Recorder:
    """One connection's capture. Numbering and timestamps happen at once, in forwarding
    order; redaction and the rest of the event later in the loop (proxy.capture's `soon`),
    which runs callbacks in order, so events are submitted in sequence order."""

    upstream: str
    upstream_url: str | None  # as recorded: `without_credentials`
    rules: Sequence[Rule]
    extra_headers: frozenset[str]
    submit: Submit
    connection_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _sequence: itertools.count = field(default_factory=itertools.count)

    def opened(self, handshake: Handshake) -> None:
        self._record("OPEN", open_fields, handshake, self.rules, self.extra_headers)

    def frame(self, side: str, frame_type: WSMsgType, payload: bytes) -> None:
        self._record("FRAME", frame_fields, side, frame_type, payload, self.rules)

    def closed(self, ending: Ending) -> None:
        self._record("CLOSE", close_fields, ending, self.rules)

    def _record(self, kind: str, build: Callable[..., dict[str, Any]], *args: Any) -> None:
        event = {
            "event_id": str(uuid.uuid4()),
            "connection_id": self.connection_id,
            "upstream": self.upstream,
            "upstream_url": self.upstream_url,
            "sequence": next(self._sequence),
            "occurred_at": now_us(),
            "kind": kind,
        }
        soon(self._complete, event, build, args)

    def _complete(self, event: dict[str, Any], build: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
        self.submit(event | build(*args))


# --- the relay: thin async shells ----------------------------------------------------

AnyWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def pump(source: AnyWebSocket, sink: AnyWebSocket, side: str, recorder: Recorder) -> Ending:
    """Forward `side`'s frames until it stops sending; how it stopped is the result."""
    while True:
        message = await source.receive()
        if message.type not in FRAME_TYPES:
            return ending_of(message, side)
        try:
            await sink.send_frame(message.data, message.type)
        except ConnectionError:
            return gone(OTHER[side])
        recorder.frame(side, message.type, message.data)


@dataclass(eq=False)
class Relay:
    """Hashable by identity: the app keeps the open ones in a set, to close them at shutdown."""

    client: web.WebSocketResponse
    upstream: aiohttp.ClientWebSocketResponse
    recorder: Recorder

    async def run(self) -> Ending:
        """Both pumps until one stops; its ending closes the other side, then is echoed to its own."""
        pumps = {
            asyncio.create_task(pump(self.client, self.upstream, CLIENT, self.recorder)): (self.client, self.upstream),
            asyncio.create_task(pump(self.upstream, self.client, UPSTREAM, self.recorder)): (self.upstream, self.client),
        }
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            ending = first.result()
            origin, peer = pumps[first]
            code, reason = peer_close(ending)
            await peer.close(code=code, message=reason_bytes(reason))
            await origin.close(code=code, message=reason_bytes(reason))
            await asyncio.gather(*pumps)
            return ending
        finally:
            for task in pumps:
                task.cancel()

    async def shutdown(self) -> None:
        message = reason_bytes(SHUTDOWN_REASON)
        await asyncio.gather(self.client.close(code=GOING_AWAY, message=message),
                             self.upstream.close(code=GOING_AWAY, message=message))


STATUS_PAGES = {"/health": health, "/ready": ready, "/metrics": metrics_endpoint}


async def entry(request: web.Request) -> web.StreamResponse:
    """WebSocket upgrades on any path are relayed; plain GETs reach the status pages."""
    if request.headers.get("upgrade", "").lower() == "websocket":
        return await relay(request)
    page = STATUS_PAGES.get(request.path)
    if page is not None and request.method == "GET":
        return await page(request)
    return web.Response(status=426, headers={"Upgrade": "websocket"},
                        text="KGB MCP relay: connect a WebSocket to ws://HOST:PORT/?upstream=NAME\n")


async def relay(request: web.Request) -> web.WebSocketResponse:
    app, settings = request.app, request.app[SETTINGS]
    name = request.query.get("upstream", "")
    url = settings.mcp_upstreams.get(name)
    recorder = Recorder(name, url and without_credentials(url), app[RULES], settings.redact_headers, app[PUBLISHER].submit)
    handshake = Handshake(request.rel_url.raw_path, request.rel_url.raw_query_string, list(request.headers.items()))
    if url is None:
        return await _refuse(request, recorder, handshake, Ending(PROXY, UNKNOWN_UPSTREAM, refusal(name), "unknown_upstream"))
    try:
        upstream = await app[SESSION].ws_connect(
            url,
            protocols=_offered(request),
            headers=end_to_end(request.headers.items(), request.headers.get("connection"), _NOT_FORWARDED),
            autoclose=False,
            decode_text=False,
            max_msg_size=settings.mcp_max_message_bytes,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=settings.connect_timeout),
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        failure = Ending(PROXY, UPSTREAM_UNREACHABLE, f"upstream {name} unreachable", "upstream_unreachable",
                         f"{type(exc).__name__}: {exc}")
        log.warning("mcp connection %s: %s: %s", recorder.connection_id, failure.reason, failure.error_message)
        return await _refuse(request, recorder, handshake, failure)
    async with upstream:
        return await _relay(request, recorder, dataclasses.replace(handshake, subprotocol=upstream.protocol), upstream)


async def _relay(
    request: web.Request, recorder: Recorder, handshake: Handshake, upstream: aiohttp.ClientWebSocketResponse
) -> web.WebSocketResponse:
    """The client gets the subprotocol the upstream chose, so both ends agree on one."""
    settings = request.app[SETTINGS]
    client = web.WebSocketResponse(
        protocols=(handshake.subprotocol,) if handshake.subprotocol else (),
        autoclose=False,
        decode_text=False,
        max_msg_size=settings.mcp_max_message_bytes,
    )
    await client.prepare(request)
    recorder.opened(handshake)
    relay = Relay(client, upstream, recorder)
    request.app[RELAYS].add(relay)
    try:
        ending = await relay.run()
    finally:
        request.app[RELAYS].discard(relay)
    recorder.closed(ending)
    return client


async def _refuse(request: web.Request, recorder: Recorder, handshake: Handshake, ending: Ending) -> web.WebSocketResponse:
    """Accept, then close at once: clients read the close code, which a failed handshake would not give them."""
    assert ending.code is not None
    client = web.WebSocketResponse(protocols=_offered(request)[:1])
    await client.prepare(request)
    recorder.opened(dataclasses.replace(handshake, subprotocol=client.ws_protocol))
    await client.close(code=ending.code, message=reason_bytes(ending.reason))
    recorder.closed(ending)
    return client


def _offered(request: web.Request) -> tuple[str, ...]:
    header = request.headers.get("sec-websocket-protocol", "")
    return tuple(p.strip() for p in header.split(",") if p.strip())


# --- the app: resources owned at its edge ---------------------------------------------


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """The upstream session, then the publisher for KGB_MCP_TOPIC (which uses it for the registry)."""
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout, sock_read=settings.connect_timeout)
    async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as session:
        app[SESSION] = session
        publisher = Publisher(settings.publish.for_mcp(), app[METRICS], session, schema=MCP_SCHEMA, key_field="connection_id")
        app[PUBLISHER] = publisher
        await publisher.start()
        try:
            yield
        finally:
            await publisher.close()


async def _close_relays(app: web.Application) -> None:
    """On shutdown, before the publisher flushes: every relay closes with 1001 and records its end."""
    await asyncio.gather(*(relay.shutdown() for relay in list(app[RELAYS])))


def build_mcp_app(settings: ProxySettings, metrics: ProxyMetrics | None = None) -> web.Application:
    """The relay on KGB_MCP_PORT. Its metrics are its own (served on its port), so the two
    publishers' spool and queue gauges never overwrite each other."""
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = metrics or ProxyMetrics()
    app[RELAYS] = set()
    app[RULES] = settings.rules()
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_close_relays)
    app.router.add_route("*", "/{tail:.*}", entry)
    return app
