"""Faults against the capture log and its worker, on real Kafka and PostgreSQL (issue 10 §3).

The proxy is the real `kgb proxy` process (relay, and the capture worker it
supervises as a child) where a test kills it or its worker; in-process where
it does not. Every request carries its own marker and the fake answers with
it (tests/e2e/test_outage.py), so a row in winni can be matched to the client
that sent it. Waits poll a condition with a deadline that only bounds a hang;
nothing asserts how fast anything is (the timings go to bench/proxy_bench.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest

from proxy.app import build_app
from proxy.logformat import Kind
from proxy.logreader import LogReader, Position
from tests import services
from tests.capture import capture_worker
from tests.e2e.conftest import COMPLETE, proxy_settings, running_winni, winni_settings
from tests.e2e.test_outage import (
    EchoFake,
    Traffic,
    answer_for,
    check_client_view,
    check_row,
    marker,
    request_body,
    request_headers,
    wait_backlog,
)
from tests.fakes.anthropic import ReceivedRequest, Reply, text_stream
from tests.mcp_pipeline import serving
from tests.proxy.test_worker_metrics import scrape_until
from tests.test_cli import start_proxy as kgb_proxy
from tests.test_cli import wait_healthy

DEADLINE = 300.0
REQUESTED = "SELECT * FROM kgb.exchanges WHERE request_event_id IS NOT NULL"
POLL = 0.2
KAFKA_DOWN_FOR = 60.0  # issue 10: a minute of SIGKILLed broker, under load
# At most a wave of 20 per this many seconds while it is down: the load, and so what winni must then
# store within DEADLINE, no longer grows with the relay's speed (back to back, a faster relay sent 156 000).
WAVE_EVERY = 0.05
SLOW_DELTAS, SLOW_PACE = 100, 0.2  # a 20 s stream: long enough to be cut, or held, under load
RELAY_RSS_BOUND = 150 * 1024 * 1024
WORKER_RSS_BOUND = 200 * 1024 * 1024


class PacedEcho(EchoFake):
    """EchoFake, but the requests a test names in `slow` stream slowly, to be cut or held open."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: set[str] = set()

    def default_reply(self, received: ReceivedRequest) -> Reply:
        prompt = received.json()["messages"][0]["content"]
        if prompt in self.slow:
            return text_stream(answer_for(prompt), deltas=SLOW_DELTAS, pace=SLOW_PACE)
        return super().default_reply(received)


@pytest.fixture
def upstream() -> PacedEcho:
    return PacedEcho()


async def until(condition: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while loop.time() < give_up:
        if await condition():
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"{what}: not within {deadline:.0f}s")


async def query(database: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database)
    try:
        return await conn.fetch(sql)
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def complete_rows(database: str, count: int, sql: str = COMPLETE) -> list[dict[str, Any]]:
    """Once `sql` (by default: exchanges with both halves in winni) has at least `count` rows: all of them."""
    rows: list[asyncpg.Record] = []

    async def enough() -> bool:
        nonlocal rows
        rows = await query(database, sql)
        return len(rows) >= count

    await until(enough, f"{count} rows of {sql.split()[3]}")
    return [dict(row) for row in rows]


def prompt_of(row: dict[str, Any]) -> str:
    return json.loads(row["request_body"])["messages"][0]["content"]


def exactly_once(rows: list[dict[str, Any]], markers: list[str]) -> None:
    seen = Counter(prompt_of(row) for row in rows)
    assert sorted(seen) == sorted(markers), "every exchange sent is in winni, and nothing else"
    assert set(seen.values()) == {1}, f"duplicated: {[m for m, n in seen.items() if n > 1]}"


@dataclasses.dataclass
class ProxyProcess:
    """`kgb proxy` as users run it; a killed one leaves its worker finishing on its own (`orphan`)."""

    process: asyncio.subprocess.Process
    url: str
    orphan: psutil.Process | None = None

    @property
    def worker(self) -> psutil.Process | None:
        with contextlib.suppress(psutil.NoSuchProcess):
            children = psutil.Process(self.process.pid).children()
            return children[0] if children else None
        return None

    async def kill(self) -> None:
        self.orphan = self.worker
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 120)


async def start_proxy(env: dict[str, str], log: Path) -> ProxyProcess:
    port = services.free_port()
    with log.open("ab") as out:
        process = await kgb_proxy(env, port, services.free_port(), stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    await asyncio.wait_for(wait_healthy(url, process), 60)
    return ProxyProcess(process, url)


@contextlib.asynccontextmanager
async def proxies() -> AsyncIterator[list[ProxyProcess]]:
    """Proxy processes a test starts; every one, and every worker a killed one left, is gone after."""
    started: list[ProxyProcess] = []
    try:
        yield started
    finally:
        for proxy in started:
            await proxy.stop()
        for orphan in (proxy.orphan for proxy in started if proxy.orphan is not None):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                await asyncio.to_thread(orphan.wait, 60)


def process_env(fake_url: str, kafka: services.KafkaBroker, topic: str, spool: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KGB_UPSTREAM_URL": fake_url,
        "KGB_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "KGB_TOPIC": topic,
        "KGB_SPOOL_DIR": str(spool),
        "KGB_FINGERPRINT_KEY": "faults-fingerprint-key",
    }


async def read_stream(session: aiohttp.ClientSession, url: str, number: int, started: asyncio.Event) -> bytes:
    """A streaming client: what it got before the stream ended or broke."""
    got = b""
    with contextlib.suppress(aiohttp.ClientError):
        async with session.post(url, data=request_body(number), headers=request_headers(number)) as response:
            async for chunk in response.content.iter_any():
                got += chunk
                started.set()
    started.set()
    return got


@pytest.mark.timeout(900)
async def test_a_killed_proxy_loses_no_exchange_a_client_was_answered(
    upstream: PacedEcho, kafka: services.KafkaBroker, topic: str, database: str, tmp_path: Path
) -> None:
    numbers = [20 + 2 * n for n in range(20)]  # even numbers stream
    upstream.slow = {marker(n) for n in numbers}
    async with (
        upstream as fake,
        running_winni(winni_settings(kafka.bootstrap, topic, database)),
        proxies() as started,
        aiohttp.ClientSession() as session,
    ):
        env = process_env(fake.url, kafka, topic, tmp_path / "spool")
        started.append(first := await start_proxy(env, tmp_path / "proxy.log"))
        traffic = Traffic(session, first.url + "/v1/messages")
        await traffic.wave(20)
        opened = [asyncio.Event() for _ in numbers]
        streams = [asyncio.create_task(read_stream(session, traffic.url, n, e)) for n, e in zip(numbers, opened, strict=True)]
        await asyncio.gather(*(event.wait() for event in opened))
        await first.kill()
        got = await asyncio.gather(*streams)
        started.append(second := await start_proxy(env, tmp_path / "proxy.log"))
        traffic.url, traffic.sent = second.url + "/v1/messages", 60  # numbers after the streams'

        await traffic.wave(10)
        rows = await complete_rows(database, 50)

    for number, status, body in traffic.seen:
        check_client_view(number, status, body)
    exactly_once(rows, [marker(n) for n in [*range(20), *numbers, *range(60, 70)]])
    by_marker = {prompt_of(row): row for row in rows}
    for number, seen in zip(numbers, got, strict=True):
        row = by_marker[marker(number)]
        if b"message_stop" in seen:  # the whole answer reached the client before the kill
            assert check_row(row) == marker(number)
        else:
            assert row["error_type"] == "capture_interrupted" and not row["upstream_complete"]


@pytest.mark.timeout(900)
async def test_a_killed_worker_is_restarted_and_loses_and_repeats_nothing(
    upstream: PacedEcho, kafka: services.KafkaBroker, topic: str, database: str, tmp_path: Path
) -> None:
    async with (
        upstream as fake,
        running_winni(winni_settings(kafka.bootstrap, topic, database)),
        proxies() as started,
        aiohttp.ClientSession() as session,
    ):
        started.append(
            proxy := await start_proxy(process_env(fake.url, kafka, topic, tmp_path / "spool"), tmp_path / "proxy.log")
        )
        traffic = Traffic(session, proxy.url + "/v1/messages")
        load = asyncio.create_task(traffic.wave(300))
        await until(lambda: answered(traffic, 50), "50 clients answered")
        worker = proxy.worker
        assert worker is not None
        worker.send_signal(signal.SIGKILL)
        await until(lambda: restarted(proxy, worker.pid), "the worker restarted")
        await load
        rows = await complete_rows(database, 300)
        dead = await query(database, "SELECT * FROM kgb.dead_letters")

    for number, status, body in traffic.seen:
        check_client_view(number, status, body)
    exactly_once(rows, [marker(n) for n in range(300)])
    assert all(check_row(row) for row in rows) and dead == []


async def answered(traffic: Traffic, count: int) -> bool:
    return traffic.answered >= count


async def restarted(proxy: ProxyProcess, old_pid: int) -> bool:
    worker = proxy.worker
    return worker is not None and worker.pid != old_pid


@pytest.mark.timeout(900)
async def test_a_broker_killed_under_load_costs_no_client_and_no_exchange(
    upstream: PacedEcho, kafka: services.KafkaBroker, topic: str, database: str, tmp_path: Path
) -> None:
    """winni starts once the broker is back: how a consumer rides out a broker crash is not the capture
    path's business (a winni that is running through the SIGKILL can die of KafkaConnectionError when
    it reconnects: noted for the consumers, see the capture notes)."""
    loop = asyncio.get_running_loop()
    spool = tmp_path / "spool"
    async with upstream as fake, aiohttp.ClientSession() as session:
        settings = proxy_settings(fake.url, kafka.bootstrap, topic, spool)
        async with capture_worker(settings), serving(build_app(settings)) as url:
            traffic = Traffic(session, url + "/v1/messages")
            await traffic.wave(40)
            await asyncio.gather(traffic.wave(40), asyncio.to_thread(kafka.kill))
            killed_at = loop.time()
            await wait_backlog(spool)
            seen_down = asyncio.create_task(scrape_until(session, url, "Kafka down on /metrics", {"kgb_worker_kafka_up": 0}))
            while loop.time() - killed_at < KAFKA_DOWN_FOR:
                await asyncio.gather(traffic.wave(20), asyncio.sleep(WAVE_EVERY))
            down = await seen_down
            await asyncio.gather(traffic.wave(30), asyncio.to_thread(kafka.start))
            async with running_winni(winni_settings(kafka.bootstrap, topic, database)):
                rows = await complete_rows(database, traffic.sent)
                dead = await query(database, "SELECT * FROM kgb.dead_letters")
            back = await scrape_until(
                session, url, "caught up on /metrics", {"kgb_worker_kafka_up": 1, "kgb_worker_checkpoint_lag_bytes": 0}
            )
    for number, status, body in traffic.seen:
        check_client_view(number, status, body)
    exactly_once(rows, [marker(n) for n in range(traffic.sent)])
    assert all(check_row(row) for row in rows) and dead == []
    assert down["kgb_worker_up"] == 1 and down["kgb_worker_checkpoint_lag_bytes"] > 0, "the worker kept its figures coming"
    assert back["kgb_worker_events_published_total"] >= 2 * traffic.sent


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    (value,) = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def logged_exchanges(spool: Path) -> set[bytes]:
    """Exchanges whose request made it into the capture log."""
    reader = LogReader(spool, Position(0, 0))
    heads: set[bytes] = set()
    while reads := reader.poll():
        heads |= {read.record.exchange for read in reads if read.record.kind is Kind.REQUEST_HEAD}
    return heads


@pytest.mark.timeout(900)
async def test_a_full_log_keeps_relaying_counts_its_drops_and_keeps_what_it_has(
    upstream: PacedEcho,
    kafka: services.KafkaBroker,
    topic: str,
    database: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = tmp_path / "spool"
    async with upstream as fake, aiohttp.ClientSession() as session:
        settings = proxy_settings(fake.url, kafka.bootstrap, topic, spool)
        settings = dataclasses.replace(settings, capture=dataclasses.replace(settings.capture, spool_max_bytes=64 * 1024))
        async with serving(build_app(settings)) as url:  # no worker yet: nothing is published, so the log fills
            traffic = Traffic(session, url + "/v1/messages")
            while await metric(session, url, "kgb_capture_dropped_records") == 0:
                await traffic.wave(10)
                assert traffic.sent < 2000, "the capture log never filled"
            await traffic.wave(10)
            assert await metric(session, url, "kgb_spool_full") == 1
            async with session.get(url + "/ready") as ready:
                assert ready.status == 503
        kept = logged_exchanges(spool)
        async with running_winni(winni_settings(kafka.bootstrap, topic, database)), capture_worker(settings):
            rows = await complete_rows(database, len(kept), REQUESTED)
    for number, status, body in traffic.seen:
        check_client_view(number, status, body)
    assert 0 < len(kept) < traffic.sent
    assert {row["exchange_id"].bytes for row in rows} == kept, "everything in the log reached winni, nothing else"
    whole = [row for row in rows if row["response_event_id"] is not None and row["error_type"] is None]
    assert whole and all(check_row(row) for row in whole)
    cut = [row for row in rows if row not in whole]
    assert all(row["response_event_id"] is None or row["error_type"] == "capture_incomplete" for row in cut)
    assert any("is full" in record.getMessage() for record in caplog.records if record.levelname == "ERROR")


@pytest.mark.timeout(900)
async def test_200_paced_streams_keep_memory_bounded_and_health_answering(
    upstream: PacedEcho, kafka: services.KafkaBroker, topic: str, database: str, tmp_path: Path
) -> None:
    numbers = [2 * n for n in range(200)]  # even numbers stream
    upstream.slow = {marker(n) for n in numbers}
    peaks = {"relay": 0, "worker": 0}
    health: list[int] = []
    async with (
        upstream as fake,
        running_winni(winni_settings(kafka.bootstrap, topic, database)),
        proxies() as started,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        started.append(
            proxy := await start_proxy(process_env(fake.url, kafka, topic, tmp_path / "spool"), tmp_path / "proxy.log")
        )
        opened = [asyncio.Event() for _ in numbers]
        streams = [
            asyncio.create_task(read_stream(session, proxy.url + "/v1/messages", n, e))
            for n, e in zip(numbers, opened, strict=True)
        ]
        await asyncio.gather(*(event.wait() for event in opened))
        relay = psutil.Process(proxy.process.pid)
        while not all(task.done() for task in streams):
            async with session.get(proxy.url + "/health") as answer:
                health.append(answer.status)
            worker = proxy.worker
            peaks["relay"] = max(peaks["relay"], relay.memory_info().rss)
            peaks["worker"] = max(peaks["worker"], worker.memory_info().rss if worker else 0)
            await asyncio.sleep(POLL)
        got = [task.result() for task in streams]
        rows = await complete_rows(database, 200)
    assert all(b"message_stop" in seen for seen in got), "every stream held to its end"
    assert health and set(health) == {200}
    assert peaks["relay"] < RELAY_RSS_BOUND and peaks["worker"] < WORKER_RSS_BOUND, peaks
    exactly_once(rows, [marker(n) for n in numbers])
    assert all(check_row(row) for row in rows)
