"""The service fixtures give real, usable services: the other tests stand on these."""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests import services

BIG = 2 * 1024 * 1024  # larger than Kafka's default 1 MB message limit


async def produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="zstd",
        max_request_size=services.MAX_MESSAGE_BYTES,
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"session")
    finally:
        await producer.stop()


async def consume_one(bootstrap: str, topic: str) -> bytes:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-reader",
        auto_offset_reset="earliest",
        fetch_max_bytes=services.MAX_MESSAGE_BYTES,
        max_partition_fetch_bytes=services.MAX_MESSAGE_BYTES,
    )
    await consumer.start()
    try:
        return (await consumer.getone()).value
    finally:
        await consumer.stop()


async def test_a_message_larger_than_one_megabyte_goes_through_the_topic(kafka, topic):
    value = bytes(range(256)) * (BIG // 256)
    await produce(kafka.bootstrap, topic, value)
    assert await consume_one(kafka.bootstrap, topic) == value


async def test_a_message_survives_a_broker_restart(kafka, topic):
    await produce(kafka.bootstrap, topic, b"before the outage")
    await asyncio.to_thread(kafka.stop)
    await asyncio.to_thread(kafka.start)
    assert await consume_one(kafka.bootstrap, topic) == b"before the outage"


async def test_each_test_gets_its_own_migrated_database(postgres, database, empty_database):
    assert database != postgres.dsn and database != empty_database
    conn = await asyncpg.connect(database)
    try:
        tables = "SELECT count(*) FROM pg_tables WHERE schemaname = $1"
        assert await conn.fetchval(tables, "public") == 0
        assert [await conn.fetchval(tables, s) > 0 for s in ("kgb", "kgb_metrics", "kgb_dewey")] == [True] * 3
        assert await conn.fetchval("SELECT count(*) FROM kgb.exchanges") == 0
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
        await conn.execute("INSERT INTO t VALUES ($1, $2)", 1, "hello")
        assert await conn.fetchval("SELECT body FROM t WHERE id = 1") == "hello"
    finally:
        await conn.close()


async def test_an_empty_database_holds_nothing(empty_database):
    conn = await asyncpg.connect(empty_database)
    try:
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
            == 0
        )
    finally:
        await conn.close()


async def test_the_winni_database_exists(postgres):
    conn = await asyncpg.connect(postgres.dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == "winni"
    finally:
        await conn.close()
