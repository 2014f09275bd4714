"""A lean pooled HTTP/1.1 client for the relays' upstream side.

aiohttp's client cost the relay a fifth to a third of its CPU (bench/README.md): its parser calls back
into Python per piece and its StreamReader adds a layer per read. Here an asyncio Protocol feeds
httptools (llhttp, in C), the body pieces wait in one deque, and the relay takes what is there without
waiting (`Response.take`) or awaits the next piece (`Response.next`). A consumer that lags pauses the
upstream socket (`pause_reading`), so a slow client never makes the proxy buffer without bound.

A body reaches the consumer as the upstream's payload, de-chunked, as aiohttp gave it: the relay's server
frames it again for its own client. Interim answers (100 Continue, 103 Early Hints) are read past: the
consumer gets the final one.

An upstream may close a kept-alive connection just as the next request goes on it (its idle timeout). A
request that then meets EOF or a reset before any byte of its answer is sent once more, on a new
connection, when that is safe to do: its body was whole in memory (bytes, or none), so it goes again as
it went, nothing of the answer was passed on, and sending it twice cannot apply it twice. That last part
is RFC 9110 §9.2.2: an idempotent method, or a request carrying an `Idempotency-Key` (as Go's client
also decides). Every API call is a POST, and an upstream that took one and died unanswering would bill it
twice, so a POST without a key gets the 502 and its client decides; the Anthropic SDK and Claude Code
retry 5xx answers themselves. A streamed body is never sent twice.

So that this is rare, a connection idle for `idle_timeout` is closed, never reused: an upstream's own
keep-alive timeout (5 s is common) then fires on a connection we already let go. The idle connections of an
origin wait in the order they were given back, so the oldest are first to expire: one timer per origin, at
the oldest's expiry, closes the expired ones (their sockets do not linger), and a take checks the clock
too, for a loop that ran late.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import httptools

# Buffered body bytes above which the upstream socket is paused; it resumes once the consumer takes them.
HIGH_WATER = 2**18
# A bytes body up to this size is copied behind the head, one buffer; a larger one goes beside it, uncopied:
# one write (and one segment) either way, where uvloop makes each transport.write a send of its own.
WHOLE_BODY_COPY_MAX = 2**16
# Seconds a kept-alive connection may sit idle before it is closed (KGB_UPSTREAM_IDLE_TIMEOUT, proxy/settings.py).
IDLE_TIMEOUT = 4.0
_NO_BODY_STATUS = frozenset({204, 304})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamError(Exception):
    """The upstream could not be reached, or broke its answer off."""


class StreamBroken(UpstreamError):
    """The upstream closed, or sent what does not parse, before its answer ended."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """No connection, head or next piece within its timeout."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, base: str) -> Origin:
        """The origin of an http(s) base URL (its path, if any, is the caller's, in the target)."""
        parts = urlsplit(base)
        return cls(parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def request_head(method: str, target: str, host: str, headers: list[tuple[str, str]], framing: tuple[str, str] | None) -> bytes:
    """The request's head as it goes on the wire; the caller's headers are sent as given."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if framing is not None:
        lines.append(f"{framing[0]}: {framing[1]}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of a header, by its lower-case name (the relays' and the MCP events' one lookup)."""
    return next((value for key, value in headers if key.lower() == name), None)


def replayable(method: str, headers: list[tuple[str, str]]) -> bool:
    """Whether sending the request twice has the effect of sending it once (see the module's docstring)."""
    return method in _IDEMPOTENT or header(headers, "idempotency-key") is not None


def content_length(headers: list[tuple[str, str]]) -> int | None:
    """The first Content-Length's value, when it is a number."""
    value = header(headers, "content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


class _Connection(asyncio.Protocol):
    """One upstream connection; it parses the answer to the request now on it into that Response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self.reading_paused = False
        self.idle_until = 0.0  # the loop's time it expires at, idle in the pool

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # nothing asked: an idle connection the upstream talks on is not to be trusted
            self.close()
            return
        self.response.feed(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(StreamBroken(f"the upstream closed the connection while it was sent a request ({exc})"))
        if self.response is not None:
            self.response.lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # the client's side
    async def write(self, data: bytes, *more: bytes) -> None:
        """Send `data`, and `more` after it in the same writev."""
        if self.closed or self.transport is None:
            raise StreamBroken("the upstream closed the connection while it was sent a request")
        if more:
            self.transport.writelines((data, *more))
        else:
            self.transport.write(data)
        if self._paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()


class Response:
    """An upstream's answer: head, then body pieces as they arrive, held in a deque bounded by pausing
    the socket. Leave it (`close`, or its `async with`) before it ends and the connection is closed,
    not pooled: nothing else could read the rest."""

    def __init__(self, pool: _Slots, connection: _Connection, head_only: bool, read_timeout: float | None) -> None:
        self._pool, self._connection, self._head_only, self._read_timeout = pool, connection, head_only, read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._pieces: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._headed = False
        self._ended = False
        self._released = False
        self._error: Exception | None = None
        self._delimited_by_close = False
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self.sending: asyncio.Task[None] | None = None
        self.received = False  # any byte of the answer, interim ones included

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # httptools' callbacks
    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.status, self.reason, self.headers = 0, "", []
            return
        self._headed = True
        self.content_length = content_length(self.headers)
        chunked = "chunked" in (header(self.headers, "transfer-encoding") or "").lower()
        self._delimited_by_close = self.content_length is None and not chunked and self.status not in _NO_BODY_STATUS
        if self._head_only:
            self._end(reusable=False)  # llhttp would wait for the body a HEAD's answer announces, and never gets
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)
        self._size += len(body)
        if self._size > HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._headed and not self._ended:
            self._end(reusable=self._parser.should_keep_alive())

    # from the connection
    def feed(self, data: bytes) -> None:
        self.received = True
        if self._ended:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(StreamBroken(f"the upstream's answer does not parse ({exc})"))

    def lost(self, exc: Exception | None) -> None:
        if self._ended:
            return
        if self._headed and self._delimited_by_close and exc is None:
            self._end(reusable=False)
        elif self._headed:
            self._fail(StreamBroken(f"the upstream closed the connection before its answer ended ({exc or 'EOF'})"))
        else:
            self._fail(StreamBroken(f"the upstream closed the connection before its answer's head ({exc or 'EOF'})"))

    # the consumer's side
    def take(self) -> bytes:
        """The body bytes already here, without waiting; b"" when none."""
        if not self._pieces:
            return b""
        data = self._pieces.popleft() if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces.clear()
        self._size = 0
        if self._connection.reading_paused and not self._ended:
            self._connection.resume_reading()
        return data

    async def next(self) -> bytes:
        """The body bytes next to come, all of them here; b"" at the end. Raises StreamBroken, UpstreamTimeout."""
        while not self._pieces:
            if self._error is not None:
                raise self._error
            if self._ended:
                return b""
            await self._wait("the upstream sent no more of its answer")
        return self.take()

    @property
    def buffered(self) -> int:
        """Body bytes here and not yet taken."""
        return self._size

    @property
    def paused(self) -> bool:
        """Whether the upstream socket is paused until the consumer takes what is here."""
        return self._connection.reading_paused

    def at_eof(self) -> bool:
        """Whether the whole body is here and taken: never for an answer that broke, even once the bytes
        that came before the break are taken (the connection may close in the same read as they come),
        so the next read raises, and the client's answer is cut, not ended cleanly."""
        return self._ended and self._error is None and not self._pieces

    @property
    def failed(self) -> bool:
        """Whether the answer broke (its connection, its framing); the read after the bytes here raises why."""
        return self._error is not None

    def close(self) -> None:
        """Done with it: the connection goes back to the pool if the answer ended cleanly, else it is closed."""
        if not self._ended:
            self._ended = True
            self._connection.close()
            self._release(reusable=False)

    async def head(self) -> None:
        while not self._headed:
            if self._error is not None:
                raise self._error
            await self._wait("the upstream did not answer")

    async def _wait(self, what: str) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = None if self._read_timeout is None else loop.call_later(self._read_timeout, self._time_out, self._waiter)
        try:
            await self._waiter
        except UpstreamTimeout:
            self._connection.close()
            raise UpstreamTimeout(f"{what} in {self._read_timeout} s") from None
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    @staticmethod
    def _time_out(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimeout())

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _end(self, reusable: bool) -> None:
        self._ended = True
        self._release(reusable and not self._connection.closed)
        self._wake()

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._ended = True
        self._connection.close()
        self._release(reusable=False)
        self._wake()

    def sent(self, sending: asyncio.Task[None]) -> None:
        """The streamed body's end: a failure sending it (the upstream gone, the client's body refused) is the answer's."""
        if not sending.cancelled() and isinstance(error := sending.exception(), Exception) and not self._ended:
            self._fail(error)

    def _release(self, reusable: bool) -> None:
        if self._released:
            return
        self._released = True
        if self.sending is not None and not self.sending.done():  # answered before the body ended: the rest is not sent
            self.sending.cancel()
            reusable = False
        self._connection.response = None
        if reusable:
            self._connection.resume_reading()
        else:
            self._connection.close()
        self._pool.give_back(self._connection if reusable else None)


@dataclass
class _Slots:
    """One origin's connections: the idle ones, oldest first, and a bound on how many exist at once."""

    limit: int
    idle_timeout: float
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)  # once: it costs a lookup
    idle: deque[_Connection] = field(default_factory=deque)
    used: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)
    sweep: asyncio.TimerHandle | None = None  # at the oldest idle connection's expiry

    async def take(self, fresh: bool = False) -> _Connection | None:
        """An idle connection still open, or None when a new one may be opened (always, if `fresh`); waits
        while at the bound."""
        while self.used >= self.limit:
            waiter = self.loop.create_future()
            self.waiting.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self.waiting:
                    self.waiting.remove(waiter)
                elif not waiter.cancelled():  # woken for a free slot, then cancelled: the slot is the next waiter's
                    self._wake_one()
                raise
        self.used += 1
        if fresh:
            return None
        now = self.loop.time()
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and now < connection.idle_until:
                return connection
            connection.close()  # closed by the upstream, or expired with the sweep not yet run (the loop ran late)
        return None

    def give_back(self, connection: _Connection | None) -> None:
        """A slot freed; with the connection that held it when it may serve the next request."""
        self.used -= 1
        if connection is not None:
            connection.idle_until = self.loop.time() + self.idle_timeout
            self.idle.append(connection)
            if self.sweep is None:
                self.sweep = self.loop.call_at(connection.idle_until, self._sweep)
        self._wake_one()

    def close(self) -> None:
        if self.sweep is not None:
            self.sweep.cancel()
            self.sweep = None
        while self.idle:
            self.idle.pop().close()

    def _sweep(self) -> None:
        """At the oldest idle connection's expiry: close the expired ones, and come back at the next one's."""
        now = self.loop.time()
        while self.idle and self.idle[0].idle_until <= now:
            self.idle.popleft().close()
        self.sweep = self.loop.call_at(self.idle[0].idle_until, self._sweep) if self.idle else None

    def _wake_one(self) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


class Pool:
    """Keep-alive connections per origin, at most `limit` open to each at once, none idle longer than `idle_timeout`."""

    def __init__(
        self, limit: int, connect_timeout: float | None, read_timeout: float | None, *, idle_timeout: float = IDLE_TIMEOUT
    ) -> None:
        self._limit, self._connect_timeout, self._read_timeout = limit, connect_timeout, read_timeout
        self._idle_timeout = idle_timeout
        self._origins: dict[Origin, _Slots] = {}
        self._ssl: ssl.SSLContext | None = None

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for slots in self._origins.values():
            slots.close()

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        length: int | None = None,
        timed: bool = True,
        sent: Callable[[], object] | None = None,
    ) -> Response:
        """Send the request and return its answer once the head is here. A body of unknown `length` goes
        chunked. The pool's read timeout bounds each wait for the upstream, unless not `timed` (long streams).
        `sent` is called once, when the request is written (a streamed body's pieces yet to go): work that
        need not hold the request back runs there, while the upstream works."""
        timeout = self._read_timeout if timed else None
        slots = self._origins.get(origin)
        if slots is None:  # not setdefault: that would build a _Slots for every request
            slots = self._origins[origin] = _Slots(self._limit, self._idle_timeout)
        connection = await slots.take()
        replay = connection is not None and (body is None or isinstance(body, bytes)) and replayable(method, headers)
        while True:
            connection, response = await self._on(slots, connection, origin, method == "HEAD", timeout)
            try:
                await self._send(connection, origin, method, target, headers, body, length)
                if sent is not None:
                    sent()
                    sent = None
                await response.head()
            except StreamBroken:
                response.close()
                if not replay or response.received:
                    raise
            except BaseException:
                response.close()
                raise
            else:
                return response
            # a kept-alive connection the upstream closed as the request went: once more, on a new connection
            replay = False
            connection = await slots.take(fresh=True)

    async def _on(
        self, slots: _Slots, connection: _Connection | None, origin: Origin, head_only: bool, timeout: float | None
    ) -> tuple[_Connection, Response]:
        """The answer to come on `connection`, or on a new one when None; the slot is given back if none opens."""
        try:
            if connection is None:
                connection = await self._connect(origin)
        except BaseException:
            slots.give_back(None)
            raise
        response = Response(slots, connection, head_only, timeout)
        connection.response = response
        return connection, response

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            self._ssl = self._ssl or ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(_Connection, origin.host, origin.port, ssl=context)
        except TimeoutError:
            raise UpstreamTimeout(f"no connection to {origin.host}:{origin.port} in {self._connect_timeout} s") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {origin.host}:{origin.port} ({exc})") from exc
        return connection

    @staticmethod
    async def _send(
        connection: _Connection,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
    ) -> None:
        if body is None or isinstance(body, bytes):
            framing = None if body is None else ("Content-Length", str(len(body)))
            head = request_head(method, target, origin.host_header, headers, framing)
            if body is not None and len(body) > WHOLE_BODY_COPY_MAX:
                await connection.write(head, body)
            else:
                await connection.write(head + body if body else head)
            return
        framing = ("Transfer-Encoding", "chunked") if length is None else ("Content-Length", str(length))
        await connection.write(request_head(method, target, origin.host_header, headers, framing))
        response = connection.response
        assert response is not None
        # sent alongside the wait for the answer: an upstream may answer (413) before it has the whole body
        response.sending = asyncio.get_running_loop().create_task(_pieces(connection, body, chunked=length is None))
        response.sending.add_done_callback(response.sent)


async def _pieces(connection: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    async for piece in body:
        if piece:
            await connection.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
    if chunked:
        await connection.write(b"0\r\n\r\n")
