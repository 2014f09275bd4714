"""proxy/upstream.py against small asyncio servers on 127.0.0.1 that answer with the bytes each test writes."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import uvloop

from proxy.upstream import HIGH_WATER, Origin, Pool, Response, StreamBroken, UpstreamError, UpstreamTimeout, replayable
from tests.services import free_port


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def upstream(answer: Answer) -> AsyncIterator[Origin]:
    """A server running `answer` for each connection."""

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async with server:
        yield Origin("http", "127.0.0.1", port)


async def read_head(reader: asyncio.StreamReader, heads: list[bytes]) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    heads.append(head)
    return head


async def whole(response: Response) -> bytes:
    pieces = [response.take()]
    while not response.at_eof():
        pieces.append(await response.next())
    return b"".join(pieces)


def keeping(body: bytes, heads: list[bytes], *, extra: bytes = b"") -> Answer:
    """Answers every request on the connection with `body`, by Content-Length."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader, heads)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body))
            await writer.drain()

    return answer


def once(raw: bytes, *, linger: bool = False) -> Answer:
    """Answers the connection's first request with `raw` as it stands; with `linger`, then stays until the client leaves."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        if linger:
            await reader.read()

    return answer


async def test_a_connection_is_reused_for_the_next_request_and_content_length_bodies_come_whole() -> None:
    heads: list[bytes] = []
    connections = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await keeping(b"hello", heads)(reader, writer)

    async with upstream(counted) as origin, Pool(4, 5.0, 5.0) as pool:
        for _ in range(3):
            async with await pool.request(origin, "GET", "/x", [("Accept", "*/*")]) as response:
                assert (response.status, response.content_length) == (200, 5)
                assert await whole(response) == b"hello"
    assert len(connections) == 1 and len(heads) == 3
    assert heads[0] == b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: */*\r\n\r\n" % origin.port


async def test_connection_close_from_the_upstream_is_not_reused() -> None:
    heads: list[bytes] = []
    connections = []

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await read_head(reader, heads)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        await reader.read()  # the client closes; a server that lingers would otherwise take a second request

    async with upstream(closing) as origin, Pool(4, 5.0, 5.0) as pool:
        for _ in range(2):
            async with await pool.request(origin, "GET", "/", []) as response:
                assert await whole(response) == b"ok"
    assert len(connections) == 2


async def test_a_chunked_body_arrives_as_its_payload_byte_for_byte() -> None:
    payload = [b"event: a\r\ndata: {}\r\n\r\n", b"\x00\xff" * 3000, b"x"]
    heads: list[bytes] = []

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader, heads)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in payload:
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async with upstream(chunked) as origin, Pool(4, 5.0, 5.0) as pool:
        async with await pool.request(origin, "GET", "/", []) as response:
            assert response.content_length is None
            assert await whole(response) == b"".join(payload)


async def test_a_close_delimited_body_ends_with_the_connection() -> None:
    delimited = once(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it, then EOF")
    async with upstream(delimited) as origin, Pool(4, 5.0, 5.0) as pool:
        async with await pool.request(origin, "GET", "/", []) as response:
            assert response.headers == [("Content-Type", "text/plain")]
            assert await whole(response) == b"all of it, then EOF"


async def test_a_close_mid_body_is_a_broken_stream() -> None:
    short = once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    async with upstream(short) as origin, Pool(4, 5.0, 5.0) as pool:
        async with await pool.request(origin, "GET", "/", []) as response:
            with pytest.raises(StreamBroken):
                await whole(response)


async def test_an_answer_that_breaks_with_its_last_bytes_here_is_never_at_its_end() -> None:
    """The close may come in the same read as the bytes before it: they are taken, and the next read raises."""
    short = once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    async with upstream(short) as origin, Pool(4, 5.0, 5.0) as pool:
        async with await pool.request(origin, "GET", "/", []) as response:
            while not response.failed:
                await asyncio.sleep(0)
            assert not response.at_eof()
            assert response.take() == b"only ten b"
            assert not response.at_eof()
            with pytest.raises(StreamBroken):
                await response.next()


async def test_a_slow_consumer_pauses_the_upstream_socket_and_the_buffer_stays_bounded() -> None:
    size = 8 * 2**20

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 2**16):
            writer.write(b"z" * 2**16)
            await writer.drain()

    async with upstream(big) as origin, Pool(4, 5.0, 5.0) as pool:
        async with await pool.request(origin, "GET", "/", []) as response:
            while not response.paused:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # were reading not paused, more would come in meanwhile
            assert HIGH_WATER < response.buffered <= HIGH_WATER + 2**18  # a bound, plus one read of the socket
            body = await whole(response)
    assert len(body) == size and set(body) == {ord("z")}


async def test_no_next_piece_in_time_is_a_timeout() -> None:
    stalls = once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", linger=True)
    async with upstream(stalls) as origin, Pool(4, 5.0, 0.05) as pool:
        async with await pool.request(origin, "GET", "/", []) as response:
            assert response.take() == b"abc"
            with pytest.raises(UpstreamTimeout):
                await response.next()


async def test_a_refused_connection_is_an_upstream_error() -> None:
    async with Pool(4, 5.0, 5.0) as pool:
        with pytest.raises(UpstreamError) as raised:
            await pool.request(Origin("http", "127.0.0.1", free_port()), "GET", "/", [])
    assert not isinstance(raised.value, UpstreamTimeout)


async def test_the_pool_bound_makes_a_request_wait_for_a_connection_that_then_serves_it() -> None:
    heads: list[bytes] = []
    connections = []
    rest = asyncio.Event()

    async def halting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            await read_head(reader, heads)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
            await rest.wait()
            writer.write(b"lo")

    async with upstream(halting) as origin, Pool(1, 5.0, 5.0) as pool:
        first = await pool.request(origin, "GET", "/1", [])
        second = asyncio.create_task(pool.request(origin, "GET", "/2", []))
        await asyncio.sleep(0.05)
        assert not second.done() and len(heads) == 1
        rest.set()
        assert await whole(first) == b"hello"  # its end gives the connection back
        async with await second as response:
            assert await whole(response) == b"hello"
    assert len(connections) == 1 and len(heads) == 2


async def test_a_streamed_body_of_unknown_length_goes_chunked_one_of_known_length_and_bytes_as_they_are() -> None:
    received: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"chunked" in head:
                body = await reader.readuntil(b"0\r\n\r\n")
            else:
                body = await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
            received.append(head + body)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"ab", b"", b"cde"):
            yield piece

    large = b"q" * 100_000
    async with upstream(echo) as origin, Pool(4, 5.0, 5.0) as pool:
        for body, length in ((pieces(), None), (pieces(), 5), (b"abcde", None), (large, None)):
            async with await pool.request(origin, "POST", "/", [], body, length=length) as response:
                assert response.status == 204 and await whole(response) == b""
    host = b"Host: 127.0.0.1:%d\r\n" % origin.port
    assert received == [
        b"POST / HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\n"
        + host
        + b"Content-Length: 100000\r\n\r\n"
        + large,  # past WHOLE_BODY_COPY_MAX: sent beside its head
    ]


def test_on_uvloop_too() -> None:
    """`kgb proxy` runs on uvloop where installed (common/running.py), whose transports are not asyncio's classes."""
    uvloop.run(test_a_connection_is_reused_for_the_next_request_and_content_length_bodies_come_whole())
    uvloop.run(test_a_slow_consumer_pauses_the_upstream_socket_and_the_buffer_stays_bounded())
    uvloop.run(test_a_streamed_body_of_unknown_length_goes_chunked_one_of_known_length_and_bytes_as_they_are())
    for reset in (False, True):
        uvloop.run(test_a_reused_connection_found_dead_is_replaced_and_the_request_sent_again(reset, "PUT", [], b"{}"))
    uvloop.run(test_an_idle_connection_is_closed_at_its_expiry_without_a_request_and_the_next_request_gets_a_new_one())


def closing_second(heads: list[bytes], connections: list[asyncio.StreamWriter], *, reset: bool) -> Answer:
    """Its first connection answers one request, then reads the next and closes (EOF, or a reset) without a
    byte of answer, as an upstream whose idle timeout fires as the request arrives; later connections answer all."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        if len(connections) > 1:
            return await keeping(b"again", heads)(reader, writer)
        await read_head(reader, heads)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        await writer.drain()
        await read_head(reader, heads)
        if reset:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    return answer


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "reset"])
@pytest.mark.parametrize(
    ("method", "headers", "body"),
    [("GET", [], None), ("PUT", [], b'{"jsonrpc":"2.0"}'), ("POST", [("Idempotency-Key", "k-1")], b'{"jsonrpc":"2.0"}')],
    ids=["get", "put-bytes", "post-with-idempotency-key"],
)
async def test_a_reused_connection_found_dead_is_replaced_and_the_request_sent_again(
    reset: bool, method: str, headers: list[tuple[str, str]], body: bytes | None
) -> None:
    heads: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []
    async with upstream(closing_second(heads, connections, reset=reset)) as origin, Pool(1, 5.0, 5.0) as pool:
        async with await pool.request(origin, method, "/1", headers, body) as response:
            assert await whole(response) == b"first"
        async with await pool.request(origin, method, "/2", headers, body) as response:
            assert (response.status, await whole(response)) == (200, b"again")
    assert len(connections) == 2
    assert [head.split(b" ")[1] for head in heads] == [b"/1", b"/2", b"/2"], "sent on the dead one, then once on a new one"


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "reset"])
async def test_a_post_without_an_idempotency_key_is_never_sent_twice(reset: bool) -> None:
    """An upstream that applied it and then died unanswering would see it twice: the client gets the error."""
    heads: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []
    async with upstream(closing_second(heads, connections, reset=reset)) as origin, Pool(1, 5.0, 5.0) as pool:
        async with await pool.request(origin, "POST", "/1", [], b"{}") as response:
            assert await whole(response) == b"first"
        with pytest.raises(StreamBroken):
            await pool.request(origin, "POST", "/2", [], b'{"model":"m"}')
    assert len(connections) == 1
    assert [head.split(b" ")[1] for head in heads] == [b"/1", b"/2"], "sent once, on the connection that died"


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        ("GET", [], True),
        ("DELETE", [], True),
        ("POST", [], False),
        ("PATCH", [], False),
        ("POST", [("idempotency-key", "a")], True),
        ("POST", [("Idempotency-Key", "a")], True),
        ("POST", [("x-idempotency", "a")], False),
    ],
)
def test_replayable_follows_rfc_9110(method: str, headers: list[tuple[str, str]], expected: bool) -> None:
    assert replayable(method, headers) is expected


async def test_a_streamed_body_is_not_sent_twice_when_its_reused_connection_is_dead() -> None:
    heads: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []

    async def pieces() -> AsyncIterator[bytes]:
        yield b"streamed"

    async with upstream(closing_second(heads, connections, reset=False)) as origin, Pool(1, 5.0, 5.0) as pool:
        async with await pool.request(origin, "GET", "/1", []) as response:
            assert await whole(response) == b"first"
        with pytest.raises(StreamBroken):
            await pool.request(origin, "POST", "/2", [], pieces())
    assert len(connections) == 1 and len(heads) == 2


async def test_no_second_try_once_part_of_the_answer_came_or_on_a_new_connection() -> None:
    heads: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []

    async def breaking(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers one request; on the next, half a head, then EOF. Its later connections close unanswered."""
        connections.append(writer)
        await read_head(reader, heads)
        if len(connections) > 1:
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await read_head(reader, heads)
        writer.write(b"HTTP/1.1 200 O")

    async with upstream(breaking) as origin, Pool(1, 5.0, 5.0) as pool:
        async with await pool.request(origin, "GET", "/1", []) as response:
            assert await whole(response) == b"ok"
        with pytest.raises(StreamBroken):
            await pool.request(origin, "GET", "/2", [])  # reused, but part of its answer came
        with pytest.raises(StreamBroken):
            await pool.request(origin, "GET", "/3", [])  # a new connection: its death is the upstream's answer
    assert len(connections) == 2 and [head.split(b" ")[1] for head in heads] == [b"/1", b"/2", b"/3"]


def held_answers(heads: list[bytes], connections: list[asyncio.StreamWriter], rest: asyncio.Event) -> Answer:
    """Answers each request with the first bytes of its body, the rest once `rest` is set."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            await read_head(reader, heads)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
            await rest.wait()
            writer.write(b"lo")

    return answer


async def test_a_waiter_cancelled_before_its_turn_leaves_the_slot_to_the_next() -> None:
    heads: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []
    rest = asyncio.Event()
    async with upstream(held_answers(heads, connections, rest)) as origin, Pool(1, 5.0, 5.0) as pool:
        first = await pool.request(origin, "GET", "/1", [])
        second = asyncio.create_task(pool.request(origin, "GET", "/2", []))
        third = asyncio.create_task(pool.request(origin, "GET", "/3", []))
        await asyncio.sleep(0.05)
        second.cancel()
        rest.set()
        assert await whole(first) == b"hello"
        async with await asyncio.wait_for(third, 10) as response:  # the deadline only bounds a hang
            assert await whole(response) == b"hello"
        assert second.cancelled()
    assert len(connections) == 1 and [head.split(b" ")[1] for head in heads] == [b"/1", b"/3"]


async def test_a_waiter_cancelled_once_woken_hands_the_slot_on_and_the_bound_still_holds() -> None:
    heads: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []
    rest = asyncio.Event()
    async with upstream(held_answers(heads, connections, rest)) as origin, Pool(1, 5.0, 5.0) as pool:
        first = await pool.request(origin, "GET", "/1", [])
        second = asyncio.create_task(pool.request(origin, "GET", "/2", []))
        third = asyncio.create_task(pool.request(origin, "GET", "/3", []))
        await asyncio.sleep(0.05)
        first.close()  # the slot goes to the second, which is cancelled before it runs to take it
        second.cancel()
        held = await asyncio.wait_for(third, 10)
        fourth = asyncio.create_task(pool.request(origin, "GET", "/4", []))
        await asyncio.sleep(0.05)
        assert not fourth.done() and len(connections) == 2, "one slot: the fourth waits for the third's"
        rest.set()
        assert await whole(held) == b"hello"
        async with await asyncio.wait_for(fourth, 10) as response:
            assert await whole(response) == b"hello"
        assert second.cancelled()
    assert len(connections) == 2 and [head.split(b" ")[1] for head in heads] == [b"/1", b"/3", b"/4"]


async def test_interim_answers_are_read_past_and_the_final_one_is_the_answer() -> None:
    heads: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []

    async def hinting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            await read_head(reader, heads)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)  # each in a read of its own, then the final answer in the same one as a hint
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>\r\n\r\nHTTP/1.1 201 Created\r\n")
            writer.write(b"Content-Length: 4\r\nX-Final: yes\r\n\r\ndone")
            await writer.drain()

    async with upstream(hinting) as origin, Pool(1, 5.0, 5.0) as pool:
        for _ in range(2):
            async with await pool.request(origin, "POST", "/", [("Expect", "100-continue")], b"body") as response:
                assert (response.status, response.reason) == (201, "Created")
                assert response.headers == [("Content-Length", "4"), ("X-Final", "yes")]
                assert (response.content_length, await whole(response)) == (4, b"done")
    assert len(connections) == 1 and len(heads) == 2, "the connection serves on after interim answers"


@dataclass
class Watched:
    """An upstream answering every request with "ok", and what it saw; `ended` is set when its first
    connection reaches EOF."""

    heads: list[bytes] = field(default_factory=list)
    connections: list[asyncio.StreamWriter] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        first = len(self.connections) == 1
        try:
            await keeping(b"ok", self.heads)(reader, writer)
        finally:
            if first:
                self.ended.set()


@asynccontextmanager
async def expiring(idle_timeout: float) -> AsyncIterator[tuple[Watched, Origin, Pool]]:
    """A watched upstream and a pool of one connection to it that expires after `idle_timeout` idle."""
    watched = Watched()
    async with upstream(watched.answer) as origin, Pool(1, 5.0, 5.0, idle_timeout=idle_timeout) as pool:
        yield watched, origin, pool


async def answered(pool: Pool, origin: Origin, method: str, target: str) -> bytes:
    async with await pool.request(origin, method, target, [], b"{}" if method == "POST" else None) as response:
        return await whole(response)


async def test_an_idle_connection_is_closed_at_its_expiry_without_a_request_and_the_next_request_gets_a_new_one() -> None:
    async with expiring(0.05) as (watched, origin, pool):
        assert await answered(pool, origin, "GET", "/1") == b"ok"
        await asyncio.wait_for(watched.ended.wait(), 10)  # the deadline only bounds a hang: the pool closes it by itself
        assert len(watched.connections) == 1
        assert await answered(pool, origin, "POST", "/2") == b"ok"
    assert len(watched.connections) == 2 and len(watched.heads) == 2


async def test_an_idle_connection_past_its_expiry_is_not_reused_even_before_its_timer_runs() -> None:
    """A loop that ran late (its timers not yet run): the take itself sees the connection has expired."""
    async with expiring(0.05) as (watched, origin, pool):
        assert await answered(pool, origin, "GET", "/1") == b"ok"
        time.sleep(0.1)  # holds the loop past the expiry, so the pool's timer cannot have run
        assert await answered(pool, origin, "POST", "/2") == b"ok"
        await asyncio.wait_for(watched.ended.wait(), 10)
    assert len(watched.connections) == 2 and [head.split(b" ")[1] for head in watched.heads] == [b"/1", b"/2"]


async def test_an_idle_connection_within_its_expiry_is_reused() -> None:
    async with expiring(60.0) as (watched, origin, pool):
        for target in ("/1", "/2", "/3"):
            assert await answered(pool, origin, "POST", target) == b"ok"
        assert not watched.ended.is_set()
    assert len(watched.connections) == 1 and len(watched.heads) == 3


async def test_sent_runs_once_the_request_is_written_before_the_answer_comes() -> None:
    """The relay builds its capture records in `sent`, while the upstream works: this upstream answers only once it has run."""
    heads: list[bytes] = []
    ran = asyncio.Event()

    async def after_sent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader, heads)
        await asyncio.wait_for(ran.wait(), 5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    calls: list[int] = []

    def sent() -> None:
        calls.append(len(heads))
        ran.set()

    async with upstream(after_sent) as origin, Pool(1, 5.0, 5.0) as pool:
        async with await pool.request(origin, "POST", "/v1/messages", [], b"{}", sent=sent) as response:
            assert (response.status, await whole(response)) == (200, b"ok")
    assert len(calls) == 1


async def test_sent_runs_once_when_the_request_goes_again_on_a_new_connection() -> None:
    heads: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []
    calls: list[int] = []
    async with upstream(closing_second(heads, connections, reset=False)) as origin, Pool(1, 5.0, 5.0) as pool:
        async with await pool.request(origin, "GET", "/1", []) as response:
            assert await whole(response) == b"first"
        async with await pool.request(origin, "GET", "/2", [], sent=lambda: calls.append(len(connections))) as response:
            assert await whole(response) == b"again"
    assert len(heads) == 3 and calls == [1], "called after the first send only, though the request went twice"
