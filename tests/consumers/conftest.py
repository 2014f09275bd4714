"""Consumer test helpers on top of the real `kafka`, `topic` and `database` fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from consumers.source import Backoff
from consumers.winni.settings import WinniSettings
from consumers.winni.consumer import run
from common.config import KafkaSettings
from tests.consumers.factories import encode

FAST_BACKOFF = Backoff(initial=0.05, maximum=0.5)
SETTLE_TIMEOUT = 60.0  # a safety net for waits that should end in well under a second


@pytest.fixture
async def producer(kafka: Any) -> AsyncIterator[AIOKafkaProducer]:
    """Publishes like the proxy: keyed by session, zstd, large messages allowed."""
    p = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap,
        acks="all",
        compression_type="zstd",
        max_request_size=16 * 1024 * 1024,
        max_batch_size=1024 * 1024,
        linger_ms=5,
    )
    await p.start()
    yield p
    await p.stop()


async def publish(
    producer: AIOKafkaProducer, topic: str, events: Iterable[dict[str, Any] | bytes], partition: int | None = None
) -> None:
    """Events are encoded and keyed by session; bytes go as they are (garbage for dead letters)."""
    sent = []
    for event in events:
        if isinstance(event, bytes):
            sent.append(await producer.send(topic, event, key=b"garbage", partition=partition or 0))
        else:
            sent.append(await producer.send(topic, encode(event), key=event["session_key"].encode(), partition=partition))
    await asyncio.gather(*sent)


@pytest.fixture
def settings(kafka: Any, database: str, topic: str) -> WinniSettings:
    return WinniSettings(
        kafka=KafkaSettings(bootstrap=kafka.bootstrap, topic=topic),
        database_url=database,
        group=f"winni-test-{uuid.uuid4().hex[:8]}",
        batch_size=200,
        backoff=FAST_BACKOFF,
    )


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection that reads the winni tables unqualified."""
    conn = await asyncpg.connect(database, server_settings={"search_path": "kgb"})
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def winni(settings: WinniSettings, **kwargs: Any) -> AsyncIterator[asyncio.Task[None]]:
    """`run` in a task for the block's duration, stopped the way the CLI stops it."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop, **kwargs))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, SETTLE_TIMEOUT)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = SETTLE_TIMEOUT) -> Any:
    """Poll until ``check`` returns something truthy; fail the test if it never does."""
    async with asyncio.timeout(timeout):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.05)


async def count(conn: asyncpg.Connection, table: str, at_least: int) -> bool:
    """True once ``table`` holds ``at_least`` rows (a missing table counts as empty)."""
    try:
        return await conn.fetchval(_COUNT[table]) >= at_least
    except asyncpg.UndefinedTableError:
        return False


_COUNT = {
    "exchanges": "SELECT count(*) FROM exchanges",
    "complete": "SELECT count(*) FROM exchanges WHERE request_event_id IS NOT NULL AND response_event_id IS NOT NULL",
    "dead_letters": "SELECT count(*) FROM dead_letters",
    # 1 once winni's search indexer has caught up: no message waits for its vector
    "indexed": "SELECT (NOT EXISTS (SELECT FROM messages WHERE search IS NULL))::int",
}


def settings_with(settings: WinniSettings, **changes: Any) -> WinniSettings:
    return replace(settings, **changes)
