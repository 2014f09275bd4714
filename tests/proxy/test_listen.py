"""Bounded connections (proxy/listen.py): idle, slow and surplus connections never starve real ones.

The first test runs `kgb proxy` as users do, in a process whose descriptor limit
is lowered, and opens thousands of idle sockets against both its ports; the
others serve a small app of their own through the guard, with short limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy import listen
from proxy.app import SETTINGS, health, health_text
from proxy.listen import Guard, GuardedSite, Limits, connection_cap, pooled_sockets, quick_health
from proxy.settings import ProxySettings, SecretURL, parse_upstreams
from tests.fakes.anthropic import FakeAnthropic
from tests.proxy.test_app import HEADERS, body
from tests.services import free_port
from tests.test_cli import start_proxy, wait_healthy

SOFT, HARD = 256, 512  # the proxy process's descriptor limit as it starts
IDLE_SOCKETS = 3000
REAL_REQUESTS = 20


def lowered_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


def room_for(sockets: int) -> None:
    """This test process needs a descriptor per idle socket, and some."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = sockets + 512
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise AssertionError(f"this test opens {sockets} sockets; the hard descriptor limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def soft_limit_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_idle(port: int, count: int) -> list[Connection]:
    """``count`` connections that never send a byte, opened a few hundred at a time."""
    opened: list[Connection] = []
    for start in range(0, count, 250):
        batch = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(250, count - start))), return_exceptions=True
        )
        opened += [c for c in batch if not isinstance(c, BaseException)]
    return opened


def closed_by_peer(connections: list[Connection]) -> int:
    return sum(reader.at_eof() or reader.exception() is not None for reader, _ in connections)


async def test_thousands_of_idle_sockets_leave_real_requests_and_health_answered(kafka, topic: str, tmp_path: Path) -> None:
    room_for(IDLE_SOCKETS)
    port, mcp_port = free_port(), free_port()
    env = {
        **os.environ,
        "KGB_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "KGB_TOPIC": topic,
        "KGB_SPOOL_DIR": str(tmp_path),
        "KGB_UPSTREAM_CONNECTIONS": "32",
    }
    async with FakeAnthropic() as fake:
        process = await start_proxy(
            env,
            port,
            mcp_port,
            fake.url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=lowered_limit,
        )
        idle: list[Connection] = []
        try:
            api, mcp = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{mcp_port}"
            await asyncio.wait_for(wait_healthy(api, process), 60)
            await asyncio.wait_for(wait_healthy(mcp, process), 60)
            assert soft_limit_of(process.pid) == HARD, "the soft limit is raised to the hard one"

            idle = [*await open_idle(port, IDLE_SOCKETS * 2 // 3), *await open_idle(mcp_port, IDLE_SOCKETS // 3)]
            assert len(idle) >= IDLE_SOCKETS * 9 // 10, "the proxy kept accepting"
            timeout = aiohttp.ClientTimeout(total=20)
            async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as session:
                for _ in range(REAL_REQUESTS):
                    async with session.post(api + "/v1/messages", data=body(), headers=HEADERS) as response:
                        assert response.status == 200
                        assert b"message_stop" in await response.read()
                for url in (api, mcp):
                    async with session.get(url + "/health") as response:
                        assert response.status == 200
            assert len(os.listdir(f"/proc/{process.pid}/fd")) < HARD
            cap = connection_cap(10_000, HARD, 32)
            assert closed_by_peer(idle) >= len(idle) - cap, "the surplus idle sockets were evicted"
        finally:
            for _, writer in idle:
                writer.transport.abort()
            process.terminate()
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert "KGB_MAX_CONNECTIONS" in stderr.decode(), "the cap and its evictions are logged"


# --- the guard on an app of its own -------------------------------------------------------------


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def slow(request: web.Request) -> web.StreamResponse:
    """An answer that streams until the client leaves: a busy connection."""
    response = web.StreamResponse()
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        while True:
            await response.write(b"tick\n")
            await asyncio.sleep(0.05)
    return response


@dataclass
class Served:
    """The guarded app's port, its guard, and the raw connections a test opened to it."""

    guard: Guard
    port: int
    opened: list[Connection] = field(default_factory=list)

    async def connect(self) -> Connection:
        connection = await asyncio.open_connection("127.0.0.1", self.port)
        self.opened.append(connection)
        return connection

    def close(self) -> None:
        """Our end of a connection the server closed stays open until closed here; a writer left open warns when collected."""
        for _, writer in self.opened:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def guarded(limits: Limits) -> AsyncIterator[Served]:
    app = web.Application()
    app.router.add_get("/health", hello)
    app.router.add_get("/slow", slow)
    guard = Guard(limits)
    runner = listen.runner(app, guard)
    await runner.setup()
    served = Served(guard, free_port())
    try:
        await GuardedSite(runner, guard, "127.0.0.1", served.port).start()
        yield served
    finally:
        served.close()
        await runner.cleanup()


async def until_closed(reader: asyncio.StreamReader, within: float = 10.0) -> bytes:
    """Everything the server sent before closing; fails if it does not close."""
    return await asyncio.wait_for(reader.read(), within)


GET = b"GET /health HTTP/1.1\r\nHost: kgb\r\n\r\n"
LIMITS = Limits(header_timeout=0.3, keepalive_timeout=0.6, max_connections=100)


async def test_headers_that_never_finish_are_cut_at_the_header_timeout() -> None:
    async with guarded(LIMITS) as served:
        silent_reader, _silent = await served.connect()
        slow_reader, slow_writer = await served.connect()
        slow_writer.write(b"GET /health HTTP/1.1\r\nHost: kg")
        assert await until_closed(silent_reader) == b"" and await until_closed(slow_reader) == b""
        # after a response, the next request's first byte starts its own header deadline
        reader, writer = await served.connect()
        writer.write(GET)
        assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
        writer.write(b"GET /heal")
        assert await until_closed(reader, within=LIMITS.keepalive_timeout + 5) == b""
        assert served.guard.timed_out == 3 and served.guard.connections == 0


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async with guarded(Limits(header_timeout=5.0, keepalive_timeout=0.3, max_connections=100)) as served:
        reader, writer = await served.connect()
        for _ in range(3):  # kept alive between requests
            writer.write(GET)
            assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
        assert await until_closed(reader) == b""
        assert served.guard.timed_out == 0 and served.guard.connections == 0


async def test_at_the_cap_the_oldest_idle_go_first_busy_ones_stay_and_all_busy_means_503() -> None:
    async with guarded(Limits(header_timeout=30.0, keepalive_timeout=30.0, max_connections=4)) as served:
        guard = served.guard
        busy_reader, busy_writer = await served.connect()
        busy_writer.write(b"GET /slow HTTP/1.1\r\nHost: kgb\r\n\r\n")
        await busy_reader.readuntil(b"tick")
        idle = [await served.connect() for _ in range(10)]
        # seven evicted to make room, oldest first; the streaming answer never stopped
        assert [await until_closed(r) for r, _ in idle[:7]] == [b""] * 7
        assert guard.connections == 4 and guard.evicted == 7 and not any(r.at_eof() for r, _ in idle[7:])
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{served.port}/health") as response:
            assert response.status == 200
        await busy_reader.readuntil(b"tick")

        streams = [await served.connect() for _ in range(3)]
        for reader, writer in streams:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: kgb\r\n\r\n")
            await reader.readuntil(b"tick")
        refused_reader, _ = await served.connect()
        refused = await until_closed(refused_reader)
        assert refused.startswith(b"HTTP/1.1 503") and b"overloaded_error" in refused and guard.refused == 1
        await busy_reader.readuntil(b"tick")


@pytest.mark.parametrize(
    ("configured", "descriptors", "upstream", "cap"),
    [
        (10_000, 1_048_576, 256, 10_000),
        (10_000, 20_000, 256, 9_808),
        (10_000, 1024, 256, 320),
        (10_000, 300, 256, 1),
    ],
)
def test_the_cap_fits_under_the_descriptor_limit(configured: int, descriptors: int, upstream: int, cap: int) -> None:
    assert connection_cap(configured, descriptors, upstream) == cap


@pytest.mark.parametrize(
    ("upstreams", "pooled"),
    [
        ("", 256),
        ("ws=ws://127.0.0.1:1", 256),
        ("a=http://127.0.0.1:2/mcp", 512),
        ("a=http://127.0.0.1:2/mcp,b=http://127.0.0.1:2/other,c=https://127.0.0.1/mcp,ws=wss://127.0.0.1:3", 768),
    ],
    ids=["api-only", "websocket-only", "one-http", "two-origins-three-http"],
)
def test_the_pools_count_the_api_origin_and_each_streamable_http_origin(upstreams: str, pooled: int) -> None:
    """One pool slot set per origin: two MCP upstreams at one origin share its connections."""
    settings = ProxySettings(upstream_connections=256, mcp_upstreams=parse_upstreams(upstreams))
    assert pooled_sockets(settings) == pooled


def test_settings_bound_every_client_connection() -> None:
    from proxy.settings import ProxySettings

    settings = ProxySettings.from_env({"KGB_HEADER_TIMEOUT": "2.5", "KGB_KEEPALIVE_TIMEOUT": "30", "KGB_MAX_CONNECTIONS": "500"})
    assert (settings.header_timeout, settings.keepalive_timeout, settings.max_connections) == (2.5, 30.0, 500)
    assert (ProxySettings().header_timeout, ProxySettings().keepalive_timeout, ProxySettings().max_connections) == (
        10.0,
        75.0,
        10_000,
    )
    with pytest.raises(ValueError, match="KGB_MAX_CONNECTIONS must be above 0"):
        ProxySettings.from_env({"KGB_MAX_CONNECTIONS": "0"})


# --- GET /health answered by the listening side -----------------------------------------------


@dataclass
class TwoSites:
    """One app behind two ports: ``plain`` where aiohttp answers everything, ``quick`` where the guard answers
    a plain ``GET /health`` itself; ``calls`` counts the requests that reached the app's /health handler."""

    plain: Served
    quick: Served
    calls: list[str]


@contextlib.asynccontextmanager
async def two_sites(limits: Limits = LIMITS) -> AsyncIterator[TwoSites]:
    calls: list[str] = []

    async def counted(request: web.Request) -> web.StreamResponse:
        calls.append(request.method)
        return await health(request)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    settings = ProxySettings(upstream_url=SecretURL("https://user:secret@upstream.example/v1"))
    app = web.Application()
    app[SETTINGS] = settings
    app.router.add_get("/health", counted)
    app.router.add_get("/healthz", hello)
    app.router.add_post("/echo", echo)
    guard = Guard(limits)
    runner = listen.runner(app, guard)
    await runner.setup()
    sites = TwoSites(Served(guard, free_port()), Served(guard, free_port()), calls)
    try:
        await GuardedSite(runner, guard, "127.0.0.1", sites.plain.port).start()
        await GuardedSite(runner, guard, "127.0.0.1", sites.quick.port, health_text(settings).encode()).start()
        yield sites
    finally:
        sites.plain.close()
        sites.quick.close()
        await runner.cleanup()


async def answer(reader: asyncio.StreamReader, body: bool = True) -> bytes:
    """One response (its head and Content-Length bytes; a HEAD's has none), its Date blanked: two answers
    a second apart are the same."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
    assert length is not None, head
    rest = await reader.readexactly(int(length[1])) if body else b""
    return re.sub(rb"\r\nDate: [^\r]+", b"\r\nDate: -", head + rest)


async def exchange(served: Served, *requests: bytes) -> list[bytes]:
    """Each request sent on one connection after the previous answer came."""
    reader, writer = await served.connect()
    answers = []
    for request in requests:
        writer.write(request)
        answers.append(await answer(reader))
    return answers


CLOSE = b"GET /health HTTP/1.1\r\nHost: kgb\r\nConnection: close\r\n\r\n"


async def test_a_plain_get_health_is_answered_as_aiohttp_answers_it_without_reaching_the_app() -> None:
    async with two_sites() as sites:
        expected = await exchange(sites.plain, GET, GET, CLOSE)
        assert sites.calls == ["GET"] * 3
        assert expected[0].startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n")
        assert expected[0].endswith(b'{"status":"healthy","upstream":"https://user:****@upstream.example/v1"}')
        assert b"secret" not in expected[0] and b"Connection: close" in expected[2]

        reader, writer = await sites.quick.connect()
        quick = []
        for request in (GET, GET, CLOSE):
            writer.write(request)
            quick.append(await answer(reader))
        assert quick == expected and sites.calls == ["GET"] * 3, "byte for byte, and the app never saw them"
        assert await until_closed(reader) == b"", "Connection: close is honoured"


async def test_a_quick_health_counts_as_a_request_for_the_keep_alive_timer() -> None:
    limits = Limits(header_timeout=5.0, keepalive_timeout=1.0, max_connections=100)
    async with two_sites(limits) as sites:
        reader, writer = await sites.quick.connect()
        for _ in range(12):  # 2.4 s of polls, each within the 1 s keep-alive of the one before
            writer.write(GET)
            assert (await answer(reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.2)
        assert not reader.at_eof() and sites.calls == []
        assert await until_closed(reader) == b"", "and an idle connection is still closed"
        assert sites.quick.guard.connections == 0


ODD_ONES = [
    b"GET /health?verbose=1 HTTP/1.1\r\nHost: kgb\r\n\r\n",
    b"HEAD /health HTTP/1.1\r\nHost: kgb\r\n\r\n",
    b"GET /health HTTP/1.0\r\nHost: kgb\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: kgb\r\nContent-Length: 0\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: kgb\r\nConnection: keep-alive, Upgrade\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", ODD_ONES)
async def test_any_other_request_for_health_goes_through_aiohttp(request_bytes: bytes) -> None:
    has_body = not request_bytes.startswith(b"HEAD")
    async with two_sites() as sites:
        answers = []
        for served in (sites.plain, sites.quick):
            reader, writer = await served.connect()
            writer.write(request_bytes)
            answers.append(await answer(reader, has_body))
        assert answers[0] == answers[1] and answers[0].startswith(b"HTTP/1.")
        assert len(sites.calls) == 2, "the app's handler answered on both ports"


async def test_other_paths_and_pipelined_requests_go_through_aiohttp_in_order() -> None:
    async with two_sites() as sites:
        healthz = b"GET /healthz HTTP/1.1\r\nHost: kgb\r\n\r\n"
        post = b"POST /echo HTTP/1.1\r\nHost: kgb\r\nContent-Length: 5\r\n\r\nhowdy"
        reader, writer = await sites.quick.connect()
        writer.write(GET + healthz)  # two requests in one write: aiohttp takes both, in order
        first, second = await answer(reader), await answer(reader)
        assert first.endswith(b'upstream.example/v1"}') and second.endswith(b"hello") and sites.calls == ["GET"]

        # after bytes ending in a body the guard cannot tell whether half a head follows: aiohttp takes the
        # next request, and once that ended in a blank line, the quick answers are back
        writer.write(post)
        assert (await answer(reader)).endswith(b"howdy")
        for calls in (["GET", "GET"], ["GET", "GET"]):
            writer.write(GET)
            assert (await answer(reader)) == first and sites.calls == calls

        # half a request head, then bytes that look like a /health of their own: they are the rest of that head
        writer.write(b"GET /healthz HTTP/1.1\r\nX-Note: ")
        await asyncio.sleep(0.05)
        writer.write(GET)
        assert (await answer(reader)).endswith(b"hello") and sites.calls == ["GET", "GET"]
        writer.write(GET)
        assert (await answer(reader)) == first and sites.calls == ["GET", "GET"]


@pytest.mark.parametrize(
    ("data", "close"),
    [
        (b"GET /health HTTP/1.1\r\n\r\n", False),
        (b"GET /health HTTP/1.1\r\nHost: kgb\r\nAccept-Encoding: identity\r\n\r\n", False),
        (b"GET /health HTTP/1.1\r\nHost: kgb\r\nConnection: Keep-Alive\r\n\r\n", False),
        (b"GET /health HTTP/1.1\r\nconnection:  close \r\n\r\n", True),
        (b"GET /health HTTP/1.1\r\nHost: kgb\r\n", None),  # not all here
        (b"GET /health HTTP/1.1\r\nHost: kgb\r\n\r\nGET /", None),  # something after it
        (b"GET /health HTTP/1.1\r\nHost : kgb\r\n\r\n", None),  # not a field name
        (b"GET /health HTTP/1.1\r\nHost: k\x00gb\r\n\r\n", None),
        (b"GET /health HTTP/1.1\r\nHost: kgb\r\n folded\r\n\r\n", None),
        (b"GET /health HTTP/1.1\r\nHost: kgb\nX: y\r\n\r\n", None),  # a bare LF
        (b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", None),
        (b"GET /health HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", None),
        (b"GET /health HTTP/1.1\r\nConnection: close\r\nConnection: close\r\n\r\n", None),
        (b"GET /health HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", None),
        (b"get /health HTTP/1.1\r\n\r\n", None),
    ],
)
def test_only_a_plain_complete_get_health_head_is_quick(data: bytes, close: bool | None) -> None:
    assert quick_health(data) == close
