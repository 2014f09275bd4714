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

Events (schemas/mcp.avsc, built by `proxy.mcp.events`): OPEN, one MESSAGE per
JSON-RPC message of each frame (a binary frame is one, flagged), CLOSE, all
keyed by the connection id, which is the session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, TypeGuard

import aiohttp
from aiohttp.http_websocket import WSMessageTextBytes
from aiohttp import WSMsgType, web
from yarl import URL

from proxy.app import HOP_BY_HOP, MCP_SINK, SETTINGS, end_to_end
from proxy.capture import RedactionPolicy
from proxy.mcp import events
from proxy.mcp.keys import POLICY, WS_SESSION
from proxy.redact import redact_headers, redact_query, redact_text

log = logging.getLogger(__name__)

UNKNOWN_UPSTREAM = 4001
UPSTREAM_UNREACHABLE = 1011
GOING_AWAY = 1001
NO_STATUS = 1005
MAX_REASON_BYTES = 123  # RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code
SHUTDOWN_REASON = "KGB proxy shutting down"

CLIENT, UPSTREAM, PROXY = "client", "upstream", "proxy"
DIRECTION = {CLIENT: events.CLIENT_TO_UPSTREAM, UPSTREAM: events.UPSTREAM_TO_CLIENT, PROXY: None}
OTHER = {CLIENT: UPSTREAM, UPSTREAM: CLIENT}
FRAME_TYPES = {WSMsgType.TEXT: "TEXT", WSMsgType.BINARY: "BINARY"}

# The WebSocket handshake is between the client and us, and again between us and the upstream.
_NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
}

RELAYS = web.AppKey("relays", set)


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


def ending_of(message: aiohttp.WSMessage | WSMessageTextBytes, side: str) -> Ending:
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


def refusal(name: str, url: str | None) -> str:
    if not name:
        return "no upstream named: connect to ?upstream=NAME"
    if url is not None:
        return f"{name!r} is a Streamable HTTP server: POST to /mcp/{name}"
    return f"unknown upstream {name!r}: not in KGB_MCP_UPSTREAMS"


def is_websocket(url: str | None) -> TypeGuard[str]:
    return url is not None and URL(url).scheme in ("ws", "wss")


# --- events: pure --------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    """The client's upgrade request, as it arrived."""

    path: str
    query: str
    headers: list[tuple[str, str]]
    subprotocol: str | None = None
    client_address: str | None = None


def open_fields(handshake: Handshake, policy: RedactionPolicy) -> dict[str, Any]:
    headers, fired = redact_headers(handshake.headers, policy.extra_headers, policy.rules)
    query, query_fired = redact_query(handshake.query, policy.rules)
    return {
        "handshake": {"path": handshake.path, "query": query, "headers": headers, "subprotocol": handshake.subprotocol},
        "client_address": handshake.client_address,
        "redactions": sorted(set(fired + query_fired)),
    }


def close_fields(ending: Ending, policy: RedactionPolicy) -> dict[str, Any]:
    reason, fired = redact_text(ending.reason, policy.rules)
    error, error_fired = redact_text(ending.error_message or "", policy.rules)
    return {
        "direction": DIRECTION[ending.side],
        "close_code": ending.code,
        "close_reason": reason or None,
        "error_type": ending.error_type,
        "error_message": error or None,
        "redactions": sorted(set(fired + error_fired)),
    }


class Recorder(events.Recorder):
    """One WebSocket connection's capture: OPEN, one MESSAGE per JSON-RPC message of each frame, CLOSE."""

    def opened(self, handshake: Handshake) -> None:
        self.record("OPEN", open_fields, handshake, self.policy)

    def frame(self, side: str, frame_type: WSMsgType, payload: bytes) -> None:
        direction = DIRECTION[side]
        assert direction is not None, "frames come from the client or the upstream, never from the proxy"
        self.message(events.Message(direction, payload, frame_type=FRAME_TYPES[frame_type]))

    def closed(self, ending: Ending) -> None:
        self.record("CLOSE", close_fields, ending, self.policy)


# --- the relay: thin async shells ----------------------------------------------------

# Both ends are opened with decode_text=False: text frames arrive as bytes, relayed untouched.
ClientSocket = web.WebSocketResponse[bool]
UpstreamSocket = aiohttp.ClientWebSocketResponse[bool]
AnyWebSocket = ClientSocket | UpstreamSocket


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

    client: ClientSocket
    upstream: UpstreamSocket
    recorder: Recorder
    ending: Ending | None = None
    pumps: dict[asyncio.Task[Ending], tuple[AnyWebSocket, AnyWebSocket]] = dataclasses.field(default_factory=dict)

    async def run(self) -> Ending:
        """Both pumps until one stops; its ending closes the other side, then is echoed to its own."""
        sides: list[tuple[AnyWebSocket, AnyWebSocket, str]] = [
            (self.client, self.upstream, CLIENT),
            (self.upstream, self.client, UPSTREAM),
        ]
        self.pumps = pumps = {
            asyncio.create_task(pump(source, sink, side, self.recorder)): (source, sink) for source, sink, side in sides
        }
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            ending = first.result()
            self.ending = self.ending or ending
            origin, peer = pumps[first]
            code, reason = peer_close(ending)
            await peer.close(code=code, message=reason_bytes(reason))
            await origin.close(code=code, message=reason_bytes(reason))
            await asyncio.gather(*pumps)
            return ending
        finally:
            for task in pumps:
                task.cancel()

    def ending_so_far(self) -> Ending:
        """How the connection ended when the handler was cancelled: what `run` or a shutdown settled, else a client gone."""
        stopped = [task.result() for task in self.pumps if task.done() and not task.cancelled() and not task.exception()]
        return self.ending or (stopped[0] if stopped else gone(CLIENT))

    async def shutdown(self) -> None:
        self.ending = self.ending or Ending(PROXY, GOING_AWAY, SHUTDOWN_REASON)
        message = reason_bytes(SHUTDOWN_REASON)
        await asyncio.gather(
            self.client.close(code=GOING_AWAY, message=message), self.upstream.close(code=GOING_AWAY, message=message)
        )


async def relay(request: web.Request) -> ClientSocket:
    app, settings = request.app, request.app[SETTINGS]
    name = request.query.get("upstream", "")
    url = settings.mcp_upstreams.get(name)
    origin = events.Origin(events.WEBSOCKET, name, url and events.recorded_url(url, app[POLICY]))
    recorder = Recorder(origin, policy=app[POLICY], submit=app[MCP_SINK].submit)
    handshake = Handshake(
        request.rel_url.raw_path, request.rel_url.raw_query_string, list(request.headers.items()), client_address=request.remote
    )
    if not is_websocket(url):
        return await _refuse(
            request, recorder, handshake, Ending(PROXY, UNKNOWN_UPSTREAM, refusal(name, url), "unknown_upstream")
        )
    try:
        upstream = await app[WS_SESSION].ws_connect(
            url,
            protocols=_offered(request),
            headers=end_to_end(request.headers.items(), request.headers.get("connection"), _NOT_FORWARDED),
            autoclose=False,
            decode_text=False,
            max_msg_size=settings.mcp_max_message_bytes,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=settings.connect_timeout),
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        failure = Ending(
            PROXY, UPSTREAM_UNREACHABLE, f"upstream {name} unreachable", "upstream_unreachable", f"{type(exc).__name__}: {exc}"
        )
        log.warning("mcp connection %s: %s: %s", origin.connection_id, failure.reason, failure.error_message)
        return await _refuse(request, recorder, handshake, failure)
    async with upstream:
        return await _relay(request, recorder, dataclasses.replace(handshake, subprotocol=upstream.protocol), upstream)


async def _relay(request: web.Request, recorder: Recorder, handshake: Handshake, upstream: UpstreamSocket) -> ClientSocket:
    """The client gets the subprotocol the upstream chose, so both ends agree on one."""
    settings = request.app[SETTINGS]
    client: ClientSocket = web.WebSocketResponse(
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
    except asyncio.CancelledError:
        # The app cancels the handler of a client whose connection dropped (proxy.mcp.app),
        # which may be after the closing handshake: then the ending is known already.
        ending = relay.ending_so_far()
        recorder.closed(ending)
        code, reason = peer_close(ending)
        await upstream.close(code=code, message=reason_bytes(reason))
        raise
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
