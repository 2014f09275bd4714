"""PostgreSQL restarts that land in the middle of a consumer's batches, while events keep coming.

`restarts_mid_batch` waits until one of the consumer's connections is inside a
statement or a transaction (pg_stat_activity), then restarts the real server
(`postgres.restart()`: a fast shutdown, which ends every session wherever it is,
then a start on the same port), as many times as asked. `feeding` publishes a
new whole session every few milliseconds for as long as its block runs, so the
consumer always has a batch in hand when the restart comes. `batch_failures`
reads back, from the retry loop's log, which errors the restarts caused.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from tests import services
from tests.consumers.conftest import SETTLE_TIMEOUT, count, eventually, publish
from tests.consumers.dump import tables
from tests.consumers.sessions import SessionBuilder, long_session

RESTARTS = 8
FEED_EVERY = 0.15  # seconds between sessions published

# Another connection inside a transaction (a statement runs in one too), other than
# the reset asyncpg's pool sends when a connection comes back to it.
WRITING = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND state IN ('active', 'idle in transaction') AND query NOT LIKE '%pg_advisory_unlock_all()%'
"""
# A batch's first failure is a warning, each further one a debug line (`common.outages.Reporter`).
_FAILURE = re.compile(r"batch of \d+ messages (?:is failing|failed again) \((\w+):")


async def writing(dsn: str, migrated: str, done: asyncio.Event) -> bool:
    """True the moment another connection to ``dsn``'s database is inside a statement or a
    transaction, once ``migrated`` (a query) says the consumer is past its migrations; False
    once ``done`` is set first."""
    async with asyncio.timeout(SETTLE_TIMEOUT):
        while not done.is_set():
            try:
                conn = await asyncpg.connect(dsn)
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(0.05)  # still starting up after the last restart
                continue
            try:
                while not done.is_set():
                    if await conn.fetchval(migrated) and await conn.fetchval(WRITING):
                        return True
                    await asyncio.sleep(0.002)
            finally:
                await conn.close()
    return False


async def restarts_mid_batch(
    postgres: Any,
    dsn: str,
    migrated: str,
    times: int = RESTARTS,
    alive: Callable[[], None] = lambda: None,
    done: asyncio.Event | None = None,
) -> int:
    """Restart the server ``times`` times, each time as a batch is being written to ``dsn``'s database,
    or fewer if ``done`` is set first (a replay that has finished); returns how many it made.

    ``migrated`` is a query true once the consumer's tables exist: restarts during its
    migrations are waited out too, but are not what is tested here. ``alive`` raises if the
    consumer under test has died meanwhile."""
    done = done or asyncio.Event()
    made = 0
    while made < times:
        alive()
        if not await writing(dsn, migrated, done):
            break
        await asyncio.to_thread(postgres.restart)
        made += 1
    return made


def migrated(table: str) -> str:
    """A `restarts_mid_batch` query: ``table`` (schema-qualified) exists."""
    return f"SELECT to_regclass('{table}') IS NOT NULL"


@contextlib.asynccontextmanager
async def feeding(producer: AIOKafkaProducer, topic: str, turns: int = 12) -> AsyncIterator[list[SessionBuilder]]:
    """Publishes sessions of ``turns`` turns one after another until the block ends; yields those published."""
    published: list[SessionBuilder] = []
    stopping = asyncio.Event()

    async def feed() -> None:
        while not stopping.is_set():
            session = long_session(turns)
            await publish(producer, topic, session.events)
            published.append(session)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), FEED_EVERY)

    task = asyncio.create_task(feed())
    try:
        yield published
    finally:
        stopping.set()
        await task


def task_alive(task: asyncio.Task[None]) -> Callable[[], None]:
    """A check that raises the task's own error once it has ended (a consumer should never end here)."""

    def check() -> None:
        if task.done():
            task.result()
            raise AssertionError("the consumer stopped by itself")

    return check


def batch_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The error class of every failed batch attempt the retry loop logged (at DEBUG after the first)."""
    return _FAILURE.findall(caplog.text)


def exchange_count(sessions: list[SessionBuilder]) -> int:
    return len({e["exchange_id"] for s in sessions for e in s.events})


def all_complete(sessions: list[SessionBuilder]) -> Callable[[asyncpg.Connection], Awaitable[bool]]:
    """A `settled` check: winni's ``exchanges`` holds every exchange of ``sessions`` with both halves,
    and its search indexer has caught up with their messages."""

    async def check(conn: asyncpg.Connection) -> bool:
        return await count(conn, "complete", exchange_count(sessions)) and await count(conn, "indexed", 1)

    return check


async def settled(
    dsn: str, schema: str, check: Callable[[asyncpg.Connection], Awaitable[bool]], alive: Callable[[], None]
) -> None:
    """Until ``check`` holds on a connection to ``schema``, failing at once if the consumer died."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:

        async def done() -> bool:
            alive()
            return await check(conn)

        await eventually(done)
    finally:
        await conn.close()


async def dump(dsn: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return await tables(conn, schema)
    finally:
        await conn.close()


async def built_calmly(
    postgres: Any,
    consuming: Callable[[str], contextlib.AbstractAsyncContextManager[asyncio.Task[None]]],
    schema: str,
    check: Callable[[asyncpg.Connection], Awaitable[bool]],
) -> dict[str, list[tuple[Any, ...]]]:
    """The tables a consumer that sees no restart builds: ``consuming(dsn)`` runs it into a fresh database."""
    calm = await services.create_database(postgres.admin_dsn)
    try:
        async with consuming(calm) as task:
            await settled(calm, schema, check, task_alive(task))
        return await dump(calm, schema)
    finally:
        await services.drop_database(postgres.admin_dsn, calm)
