"""Offsets are committed only after the database commit, and a lost database loses nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from consumers.source import Backoff, Batch, EventRecord, consume, make_consumer
from consumers.winni.settings import WinniSettings
from consumers.service import apply_migrations, open_pool
from consumers.winni.consumer import make_handler, migrations
from consumers.winni.store import write_exchanges
from schemas.codec import make_decoder
from tests.consumers.conftest import count, eventually, publish, winni
from tests.consumers.factories import exchange
from tests.consumers.relay import TcpRelay


class Crash(Exception):
    """The process dying between the database commit and the offset commit."""


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def recorder(seen: list[int]):  # noqa: ANN201
    async def record(conn: asyncpg.Connection, records: Sequence[EventRecord]) -> None:
        seen.extend(r.envelope.offset for r in records)

    return record


async def crash_after_the_database_commit(settings: WinniSettings) -> None:
    """One batch through the real handler, then the process "dies" before committing offsets."""
    pool = await open_pool(settings.database_url, settings.db_schema, settings.writers)
    consumer = make_consumer(settings.kafka, settings.group, settings.batch_size)
    await consumer.start()
    try:
        await apply_migrations(pool, migrations(), settings.db_schema)
        handler = make_handler(pool)

        async def store_then_crash(batch: Batch) -> None:
            await handler(batch)
            raise Crash

        with pytest.raises(Crash):
            await consume(consumer, make_decoder(None), store_then_crash, stop=asyncio.Event(), batch_size=settings.batch_size)
    finally:
        await consumer.stop()
        await pool.close()


async def test_offsets_are_committed_only_after_the_database_commit(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    first = [event for pair in (exchange(), exchange()) for event in pair]
    await publish(producer, settings.kafka.topic, first, partition=0)

    await crash_after_the_database_commit(settings)
    assert await db.fetchval("SELECT count(*) FROM exchanges") == 2
    assert await committed(settings.kafka.bootstrap, settings.group) == {}
    before = [dict(r) for r in await db.fetch("SELECT * FROM exchanges ORDER BY exchange_id")]

    # The restart with the same group gets everything not committed again, and stores nothing twice.
    seen: list[int] = []
    async with winni(settings, stages=(write_exchanges, recorder(seen))):
        await eventually(lambda: _committed_to(settings, {0: 4}))
    assert sorted(seen) == [0, 1, 2, 3]
    assert [dict(r) for r in await db.fetch("SELECT * FROM exchanges ORDER BY exchange_id")] == before

    # The next restart gets only what came after the commit.
    await publish(producer, settings.kafka.topic, exchange(), partition=0)
    seen.clear()
    async with winni(settings, stages=(write_exchanges, recorder(seen))):
        await eventually(lambda: _committed_to(settings, {0: 6}))
    assert sorted(seen) == [4, 5]
    assert await db.fetchval("SELECT count(*) FROM exchanges") == 3


async def _committed_to(settings: WinniSettings, expected: dict[int, int]) -> bool:
    return await committed(settings.kafka.bootstrap, settings.group) == expected


async def test_a_database_that_goes_away_loses_nothing(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumers")
    async with TcpRelay(settings.database_url) as relay:
        through_relay = replace(settings, database_url=relay.dsn, backoff=Backoff(initial=0.05, maximum=0.2))
        async with winni(through_relay):
            await publish(producer, settings.kafka.topic, exchange())
            await eventually(lambda: count(db, "complete", 1))
            await eventually(lambda: _all_committed(settings, 2))

            await relay.cut()
            during = [event for _ in range(5) for event in exchange()]
            await publish(producer, settings.kafka.topic, during)
            await eventually(lambda: _logged(caplog, "messages is failing"))
            assert await db.fetchval("SELECT count(*) FROM exchanges") == 1
            assert await _all_committed(settings, 2)

            await relay.restore()
            await eventually(lambda: count(db, "complete", 6))
            await eventually(lambda: _all_committed(settings, 12))

    assert await db.fetchval("SELECT count(*) FROM exchanges") == 6
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    assert "nothing committed" in caplog.text and "messages succeeded after" in caplog.text


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


async def _all_committed(settings: WinniSettings, total: int) -> bool:
    return sum((await committed(settings.kafka.bootstrap, settings.group)).values()) == total


async def test_a_broker_outage_is_waited_out(
    kafka: Any, settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    async with winni(settings) as task:
        await publish(producer, settings.kafka.topic, exchange())
        await eventually(lambda: _all_committed(settings, 2))

        await asyncio.to_thread(kafka.stop)
        await asyncio.to_thread(kafka.start)
        await publish(producer, settings.kafka.topic, [event for _ in range(3) for event in exchange()])
        await eventually(lambda: count(db, "complete", 4))
        await eventually(lambda: _all_committed(settings, 8))
        assert not task.done()

    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
