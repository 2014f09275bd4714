"""Exchanges per second from a Kafka topic into PostgreSQL through `kgb consume winni`.

    python -m tests.consumers.bench_winni [--exchanges 10000] [--body-kb 75] [--sessions 100]

Publishes the exchanges first (not timed), then starts winni on a fresh database
and times it from start (migrations and group join included) and from the first
stored row to the last (steady state). Uses the services named by
KGB_TEST_KAFKA_BOOTSTRAP / KGB_TEST_DATABASE_URL, else starts its own like the tests.

Request bodies are Claude Code shaped, padded with random words (prose-like, so
compression in Kafka and in PostgreSQL's TOAST does realistic work).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import time
import uuid

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers.source import Backoff
from consumers.winni import WinniSettings, run
from kgb.config import KafkaSettings
from tests import services
from tests.consumers.factories import encode, exchange, user_message

WORDS = [
    "".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=random.Random(-i).randint(2, 11)))
    for i in range(3000)
]


def corpus(size: int) -> str:
    rng = random.Random(7)
    return " ".join(rng.choices(WORDS, k=size // 6))


async def publish(bootstrap: str, topic: str, exchanges: int, body_kb: int, sessions: int) -> int:
    """All events on the topic, keyed by session; returns the bytes published."""
    text = corpus(4 * 1024 * 1024)
    rng = random.Random(1)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", compression_type="zstd",
        max_request_size=16 * 1024 * 1024, max_batch_size=1024 * 1024, linger_ms=20,
    )
    await producer.start()
    session_ids = [str(uuid.uuid4()) for _ in range(sessions)]
    sent, size = [], 0
    try:
        for n in range(exchanges):
            start = rng.randrange(len(text) - body_kb * 1024)
            prose = text[start:start + body_kb * 1024 - 1200]
            pair = exchange(session_id=session_ids[n % sessions], messages=[user_message(prose)])
            for event in pair:
                data = encode(event)
                size += len(data)
                sent.append(await producer.send(topic, data, key=event["session_key"].encode()))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return size


async def complete(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "kgb"})
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM exchanges WHERE request_event_id IS NOT NULL AND response_event_id IS NOT NULL"
        )
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


async def measure(bootstrap: str, admin_dsn: str, args: argparse.Namespace) -> None:
    topic = await services.create_topic(bootstrap)
    t0 = time.perf_counter()
    size = await publish(bootstrap, topic, args.exchanges, args.body_kb, args.sessions)
    print(f"published {args.exchanges} exchanges ({size / 1e6:.0f} MB encoded) in {time.perf_counter() - t0:.1f}s")
    dsn = await services.create_database(admin_dsn)
    settings = WinniSettings(
        kafka=KafkaSettings(bootstrap=bootstrap, topic=topic), database_url=dsn,
        group=f"bench-{uuid.uuid4().hex[:8]}", batch_size=args.batch_size, writers=args.writers, backoff=Backoff(0.1, 1.0),
    )
    stop = asyncio.Event()
    cpu0 = time.process_time()
    started = time.perf_counter()
    task = asyncio.create_task(run(settings, stop))
    first = None
    try:
        while (done := await complete(dsn)) < args.exchanges:
            if done and first is None:
                first = (time.perf_counter(), done)
            if task.done():
                task.result()
            await asyncio.sleep(0.2)
        finished = time.perf_counter()
    finally:
        stop.set()
        await task
    cpu = time.process_time() - cpu0
    total = finished - started
    steady = (args.exchanges - first[1]) / (finished - first[0]) if first else float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"winni stored {args.exchanges} exchanges ({args.body_kb} KB requests, batch {args.batch_size}, {args.writers} writers) in {total:.1f}s: "
          f"{args.exchanges / total:.0f} exchanges/s overall, {steady:.0f} exchanges/s steady; "
          f"consumer CPU {cpu:.1f}s ({cpu / total:.0%} of one core), peak RSS of this process {rss:.0f} MB")
    await services.drop_database(admin_dsn, dsn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchanges", type=int, default=10_000)
    parser.add_argument("--body-kb", type=int, default=75)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--writers", type=int, default=WinniSettings.writers)
    args = parser.parse_args()
    with services.kafka_broker() as kafka, services.postgres_server() as postgres, contextlib.suppress(KeyboardInterrupt):
        asyncio.run(measure(kafka.bootstrap, postgres.admin_dsn, args))


if __name__ == "__main__":
    main()
