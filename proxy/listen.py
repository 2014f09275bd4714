"""The proxy's listening side: bounded connections, so idle ones can never starve real ones.

Every connection a port accepts is in one of three phases (`Phase`): reading a
request's headers, busy with a request (its answer streaming, a WebSocket
relayed), or idle between requests. The bounds, the same on the API port and
the MCP port:

- a request's headers must arrive within ``header_timeout``, counted from the
  accept or from the first byte after the previous response (slowloris);
- an idle connection is closed after ``keepalive_timeout`` (aiohttp's own
  keep-alive timer, which also closes a connection that never sends anything);
- at most ``max_connections`` connections at once over both ports. At the cap,
  a new connection evicts the oldest one still reading its headers, else the
  oldest idle one; busy connections are never cut. Only when every connection
  is busy is the new one refused, with a 503 in the API's error shape.

The cap is also kept below the descriptors the process may open: at start the
soft ``RLIMIT_NOFILE`` is raised to the hard limit (`raise_descriptor_limit`),
and the cap lowered to what is left of it after the upstream pools (`pooled_sockets`:
the API's, and the MCP app's to each Streamable HTTP upstream) and a reserve,
halved because a relayed connection holds one upstream socket of its own
(`connection_cap`). So a flood of idle sockets costs evicted idle sockets, not
``accept()`` failing with EMFILE for everyone, and ``/health`` keeps answering.

`Guarded` wraps aiohttp's own protocol for each connection (aiohttp parses and
answers every request but one) and tells the `Guard` what it sees; the guard's
middleware tells it when a request starts and ends. The one exception is a plain
``GET /health`` arriving between requests (`quick_health`): `Guarded` sends
aiohttp's answer to it itself, byte for byte, in the callback that read it.
Through aiohttp it takes a parse, a request, a handler task and two turns of the
event loop, and when 200 streams start at once each of those turns waits
behind 200 accepts, requests and upstream connects: tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import BaseRunner, BaseSite

from proxy.errors import error_body
from proxy.settings import ProxySettings
from proxy.upstream import Origin

log = logging.getLogger(__name__)

# Descriptors kept for everything but client connections: the listening sockets,
# Kafka, the schema registry, spool files, logs.
RESERVED_DESCRIPTORS = 128
LISTEN_BACKLOG = 1024
CAP_LOG_EVERY = 10.0  # seconds between warnings while the cap is being hit

_REFUSAL_BODY = error_body("overloaded_error", "KGB proxy: every connection is busy (KGB_MAX_CONNECTIONS); retry shortly")
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


HEALTH_LINE = b"GET /health HTTP/1.1\r\n"
QUICK_HEAD_MAX = 8190  # aiohttp's longest request line; a longer head goes to aiohttp, whatever it holds
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field names
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e]*")
_NOT_QUICK = frozenset({b"content-length", b"transfer-encoding", b"upgrade", b"expect"})


def quick_health(data: bytes) -> bool | None:
    """Whether ``data`` is exactly one plain ``GET /health`` request head (HTTP/1.1, no body, nothing after it,
    well-formed fields), and if so whether it asks to close; None for anything else, which aiohttp takes as ever."""
    if len(data) > QUICK_HEAD_MAX or not data.startswith(HEALTH_LINE) or not data.endswith(b"\r\n\r\n"):
        return None
    connection: bytes | None = None
    for line in data[len(HEALTH_LINE) : -2].split(b"\r\n")[:-1]:
        name, colon, value = line.partition(b":")
        lowered = name.lower()
        if not colon or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value) or lowered in _NOT_QUICK:
            return None
        if lowered == b"connection":
            if connection is not None:
                return None
            connection = value.strip(b" \t").lower()
    if connection not in (None, b"keep-alive", b"close"):
        return None
    return connection == b"close"


def health_answer(body: bytes, close: bool) -> bytes:
    """aiohttp's answer to ``GET /health`` (`web.json_response` of `proxy.app.health`), as it writes it."""
    return b"".join(
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\nDate: ",
            rfc822_formatted_time().encode(),
            b"\r\nServer: ",
            SERVER_SOFTWARE.encode(),
            b"\r\nConnection: close\r\n\r\n" if close else b"\r\n\r\n",
            body,
        )
    )


class Phase(enum.Enum):
    READING = "reading"  # waiting for a request's headers
    BUSY = "busy"  # a request is being handled
    IDLE = "idle"  # between requests, kept alive


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    keepalive_timeout: float
    max_connections: int


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard


def connection_cap(configured: int, descriptors: int, pooled: int) -> int:
    """``configured``, lowered so that client connections, their upstream sockets and the ``pooled`` ones fit in
    ``descriptors``."""
    room = (descriptors - pooled - RESERVED_DESCRIPTORS) // 2
    return max(1, min(configured, room))


def pooled_sockets(settings: ProxySettings) -> int:
    """The most sockets the upstream pools may hold: `upstream_connections` per origin, for the API's one and each
    of the Streamable HTTP upstreams' in KGB_MCP_UPSTREAMS (the MCP app's pool, proxy/mcp/app.py)."""
    mcp = {origin for origin in map(Origin.of, settings.mcp_upstreams.values()) if origin.scheme in ("http", "https")}
    return settings.upstream_connections * (1 + len(mcp))


@dataclass(eq=False)
class Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, and the phase the guard keeps for it."""

    guard: Guard
    inner: RequestHandler
    health: bytes | None = None  # the body of this port's /health, to answer here; None: aiohttp answers everything
    phase: Phase = Phase.READING
    deadline: asyncio.TimerHandle | None = field(default=None, repr=False)
    at_boundary: bool = True  # the bytes aiohttp's parser was given end where a request ends

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)
        if not self.guard.admit(self):
            transport.write(REFUSAL)  # type: ignore[attr-defined]
            self.inner.force_close()

    def data_received(self, data: bytes) -> None:
        health = self.health
        if health is not None and self.at_boundary and (close := quick_health(data)) is not None and self._between_requests():
            self._answer_health(health, close)
            return
        if self.phase is Phase.IDLE:
            self.guard.reading(self)
        count = self.inner._request_count
        self.inner.data_received(data)
        self.at_boundary = self._ended_requests(data, count)

    def _between_requests(self) -> bool:
        """aiohttp waits for a request, holding none, its last answer written (so a quick one cannot overtake it)."""
        inner = self.inner
        waiter = inner._waiter
        return (
            waiter is not None
            and not waiter.done()
            and not inner._messages
            and not (inner._close or inner._force_close or inner._upgraded or inner.writing_paused)
            and inner._payload_parser is None
            and inner.transport is not None
        )

    def _ended_requests(self, data: bytes, count: int) -> bool:
        """Whether ``data`` left aiohttp's parser holding nothing: it completed a request, body and all, and
        nothing came after (half a request head cannot end in a blank line, and a body not all here is not at eof)."""
        messages = self.inner._messages
        return self.inner._request_count > count and bool(messages) and messages[-1][1].is_eof() and data.endswith(b"\r\n\r\n")

    def _answer_health(self, body: bytes, close: bool) -> None:
        """What aiohttp would send, and then do: close, or count its keep-alive from this answer."""
        inner = self.inner
        assert inner.transport is not None
        inner.transport.write(health_answer(body, close))
        if close:
            inner.force_close()
            return
        inner._next_keepalive_close_time = asyncio.get_running_loop().time() + inner.keepalive_timeout
        self.guard.idle(self)

    def eof_received(self) -> None:
        self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def close(self) -> None:
        self.inner.force_close()


class Guard:
    """Every connection of the process's ports by phase; evicts and times out to keep within `Limits`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        # oldest first: dicts keep the order connections entered the phase in
        self._reading: dict[Guarded, None] = {}
        self._idle: dict[Guarded, None] = {}
        self._busy: set[Guarded] = set()
        self._by_handler: dict[RequestHandler, Guarded] = {}
        self.evicted = self.refused = self.timed_out = 0
        self._warned_at = float("-inf")

    @property
    def connections(self) -> int:
        return len(self._reading) + len(self._idle) + len(self._busy)

    def protocol(self, server: web.Server, health: bytes | None = None) -> Guarded:
        """The protocol factory for a listening socket: aiohttp's handler, guarded, answering ``GET /health``
        with ``health`` itself when given."""
        return Guarded(self, server(), health)

    def admit(self, conn: Guarded) -> bool:
        """Room for ``conn``, evicting the oldest connection not busy at the cap; False when all are busy."""
        if self.connections >= self.limits.max_connections:
            victim = next(iter(self._reading), None) or next(iter(self._idle), None)
            if victim is None:
                self.refused += 1
                self._warn_at_cap()
                return False
            self.forget(victim)
            victim.close()
            self.evicted += 1
            self._warn_at_cap()
        self._by_handler[conn.inner] = conn
        self.reading(conn)
        return True

    def reading(self, conn: Guarded) -> None:
        self._leave(conn)
        conn.phase = Phase.READING
        self._reading[conn] = None
        conn.deadline = asyncio.get_running_loop().call_later(self.limits.header_timeout, self._expire, conn)

    def busy(self, conn: Guarded) -> None:
        self._leave(conn)
        conn.phase = Phase.BUSY
        self._busy.add(conn)

    def idle(self, conn: Guarded) -> None:
        self._leave(conn)
        conn.phase = Phase.IDLE
        self._idle[conn] = None

    def forget(self, conn: Guarded) -> None:
        self._leave(conn)
        self._by_handler.pop(conn.inner, None)

    def _leave(self, conn: Guarded) -> None:
        if conn.deadline is not None:
            conn.deadline.cancel()
            conn.deadline = None
        self._reading.pop(conn, None)
        self._idle.pop(conn, None)
        self._busy.discard(conn)

    def _expire(self, conn: Guarded) -> None:
        conn.deadline = None
        if conn.phase is Phase.READING and conn in self._reading:
            self.timed_out += 1
            self.forget(conn)
            conn.close()

    def _warn_at_cap(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._warned_at >= CAP_LOG_EVERY:
            self._warned_at = now
            log.warning(
                "%d connections, the cap (KGB_MAX_CONNECTIONS): %d idle or slow connections evicted, %d refused so far",
                self.connections,
                self.evicted,
                self.refused,
            )

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Marks the connection busy for as long as its request's handler runs."""
        conn = self._by_handler.get(request.protocol)
        if conn is None:
            return await handler(request)
        self.busy(conn)
        try:
            return await handler(request)
        finally:
            if conn in self._busy:
                self.idle(conn)


def runner(app: web.Application, guard: Guard) -> web.AppRunner:
    """An `AppRunner` whose connections the guard watches; serve it with `GuardedSite`."""
    app.middlewares.insert(0, guard.middleware)
    return web.AppRunner(app, access_log=None, keepalive_timeout=guard.limits.keepalive_timeout)


class GuardedSite(BaseSite):
    """`web.TCPSite`, with every accepted connection guarded."""

    __slots__ = ("_guard", "_health", "_host", "_port")

    def __init__(self, runner: BaseRunner, guard: Guard, host: str, port: int, health: bytes | None = None) -> None:
        """``health``: the body of the app's ``GET /health``, answered as aiohttp would without going through it."""
        super().__init__(runner, backlog=LISTEN_BACKLOG)
        self._guard, self._host, self._port, self._health = guard, host, port, health

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self._guard.protocol(server, self._health), self._host, self._port, backlog=self._backlog, reuse_address=True
        )


def guard_for(settings: ProxySettings) -> Guard:
    """The process's guard: the descriptor limit raised, the cap fitted under it."""
    descriptors = raise_descriptor_limit()
    cap = connection_cap(settings.max_connections, descriptors, pooled_sockets(settings))
    if cap < settings.max_connections:
        log.warning(
            "at most %d connections (KGB_MAX_CONNECTIONS is %d): the descriptor limit is %d",
            cap,
            settings.max_connections,
            descriptors,
        )
    log.info("descriptor limit %d; at most %d client connections over both ports", descriptors, cap)
    return Guard(Limits(settings.header_timeout, settings.keepalive_timeout, cap))
