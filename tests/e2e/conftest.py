"""The whole pipeline in one test process, on real services.

`pipeline` starts, in this order: the fake Anthropic upstream (the `upstream`
fixture, which a test module overrides to script replies by request shape),
the winni consumer as a task of this event loop (its own consumer group,
writing into the per-test `database`), and the proxy on a free port
(publishing to the per-test `topic`, spooling under `tmp_path`). Teardown runs
in reverse: the proxy flushes its publisher first, then winni stops, then the
fake closes.

Waiting for rows polls PostgreSQL until a deadline. The deadline only bounds a
hang so a broken pipeline fails with a message instead of at the suite
timeout; no test asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from consumers.source import Backoff
from consumers.winni.settings import WinniSettings
from consumers.winni.consumer import run
from proxy.app import build_app
from proxy.settings import ProxySettings
from tests import services
from tests.capture import capture_worker
from tests.fakes.anthropic import FakeAnthropic
from tests.mcp_pipeline import serving

DEADLINE = 120.0
POLL = 0.25
COMPLETE = """
    SELECT * FROM kgb.exchanges
    WHERE request_event_id IS NOT NULL AND response_event_id IS NOT NULL
    ORDER BY received_at, exchange_id
"""


class PipelineError(AssertionError):
    """The pipeline did not get where a test waited for it to get; the message says how far it got."""


def proxy_settings(upstream: str, bootstrap: str, topic: str, spool: Path) -> ProxySettings:
    """Defaults everywhere except where this test's services are; a fixed fingerprint key keeps runs comparable."""
    return ProxySettings.from_env(
        {
            "KGB_UPSTREAM_URL": upstream,
            "KGB_KAFKA_BOOTSTRAP": bootstrap,
            "KGB_TOPIC": topic,
            "KGB_SPOOL_DIR": str(spool),
            "KGB_FINGERPRINT_KEY": "e2e-fingerprint-key",
        }
    )


def winni_settings(bootstrap: str, topic: str, database: str) -> WinniSettings:
    """A unique group so each test reads its topic from the start; short backoff so it resumes soon after an outage."""
    settings = WinniSettings.from_env(
        {
            "KGB_KAFKA_BOOTSTRAP": bootstrap,
            "KGB_TOPIC": topic,
            "KGB_DATABASE_URL": database,
            "KGB_WINNI_GROUP": f"kgb-e2e-{uuid.uuid4().hex[:12]}",
            "KGB_WINNI_STORE_REQUEST_BODIES": "true",  # the tests compare captured bodies whole
        }
    )
    return dataclasses.replace(settings, backoff=Backoff(initial=0.2, maximum=2.0))


@contextlib.asynccontextmanager
async def running_proxy(settings: ProxySettings) -> AsyncIterator[str]:
    """The proxy app served on a free port of 127.0.0.1, and its capture worker; yields its base URL."""
    async with capture_worker(settings), serving(build_app(settings)) as url:
        yield url


Run = Callable[[Any, asyncio.Event], Awaitable[None]]


@contextlib.asynccontextmanager
async def running(run: Run, settings: Any, name: str) -> AsyncIterator[asyncio.Task[None]]:
    """A consumer's `run` as a task; leaving stops it and re-raises whatever it died of."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop), name=name)
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await task


def running_winni(settings: WinniSettings) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    return running(run, settings, "winni")


@dataclasses.dataclass
class Pipeline:
    """What a test drives (`url`, `fake`) and inspects (`topic`, `database`)."""

    url: str
    fake: FakeAnthropic
    bootstrap: str
    topic: str
    database: str
    winni: asyncio.Task[None]
    spool: Path

    async def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def complete_exchanges(self) -> list[asyncpg.Record]:
        """Rows holding both halves; none before winni has created the table."""
        try:
            return await self.query(COMPLETE)
        except asyncpg.UndefinedTableError:
            return []

    async def wait_for_exchanges(self, count: int, deadline: float = DEADLINE) -> list[asyncpg.Record]:
        """At least `count` complete exchanges, all of them returned, oldest first."""
        rows: Sequence[asyncpg.Record] = []
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline
        while loop.time() < give_up:
            self._check_winni()
            rows = await self.complete_exchanges()
            if len(rows) >= count:
                return list(rows)
            await asyncio.sleep(POLL)
        raise PipelineError(
            f"{len(rows)} of {count} exchanges complete in kgb.exchanges after {deadline:.0f}s; {await self._progress()}"
        )

    async def dead_letters(self) -> list[asyncpg.Record]:
        return await self.query("SELECT topic, kafka_partition, kafka_offset, reason, error_class FROM kgb.dead_letters")

    def _check_winni(self) -> None:
        """A consumer that died makes waiting pointless: fail with its error."""
        if self.winni.done():
            error = self.winni.exception()
            raise PipelineError(f"the winni consumer stopped early: {error!r}") from error

    async def _progress(self) -> str:
        try:
            (row,) = await self.query(
                "SELECT count(*) AS rows, count(request_event_id) AS requests, count(response_event_id) AS responses,"
                " (SELECT count(*) FROM kgb.dead_letters) AS dead FROM kgb.exchanges"
            )
        except asyncpg.UndefinedTableError:
            return "kgb.exchanges does not exist: winni never migrated"
        return f"rows={row['rows']} with request={row['requests']} with response={row['responses']} dead letters={row['dead']}"


@pytest.fixture
def upstream() -> FakeAnthropic:
    """The fake API behind the proxy, not yet started; override it to change how it answers."""
    return FakeAnthropic()


@pytest.fixture
async def pipeline(
    upstream: FakeAnthropic, kafka: services.KafkaBroker, topic: str, database: str, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    async with (
        upstream as fake,
        running_winni(winni_settings(kafka.bootstrap, topic, database)) as winni,
        running_proxy(proxy_settings(fake.url, kafka.bootstrap, topic, tmp_path / "spool")) as url,
    ):
        yield Pipeline(
            url=url, fake=fake, bootstrap=kafka.bootstrap, topic=topic, database=database, winni=winni, spool=tmp_path / "spool"
        )
