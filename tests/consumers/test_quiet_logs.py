"""While Kafka and PostgreSQL are away, a consumer's log stays a few lines long, whatever the outage's length.

The consumers run as users run them (`kgb consume ...`, real processes) with a
backoff capped at 0.2 s, so each retry would have been its own line; aiokafka
alone used to write some sixty lines a second per process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer

from tests.consumers.conftest import count, eventually, publish
from tests.consumers.factories import exchange
from tests.consumers.relay import TcpRelay
from tests.services import free_port

KGB = [sys.executable, "-c", "from kgb.cli import main; main()"]
OUTAGE_SECONDS = 15  # how long each service stays away; the bound below does not depend on it
MOST_LINES = 16  # per process, from the first cut to the end, however long the outage


async def consume(name: str, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("w") as stderr:  # the child writes through a descriptor of its own
        return await asyncio.create_subprocess_exec(*KGB, "consume", name, env=env, stderr=stderr)


async def ready(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_an_outage_of_kafka_and_postgresql_is_a_few_lines(
    kafka, topic, database, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    metrics_port = free_port()
    async with TcpRelay(database) as relay:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KGB_")},
            "KGB_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "KGB_DATABASE_URL": relay.dsn,
            "KGB_TOPIC": topic,
            "KGB_MCP_TOPIC": f"{topic}-mcp",
            "KGB_WINNI_GROUP": f"quiet-{uuid.uuid4().hex[:8]}",
            "KGB_METRICS_GROUP": f"quiet-{uuid.uuid4().hex[:8]}",
            "KGB_METRICS_PORT": str(metrics_port),
            "KGB_WINNI_RETRY_MAX": "0.2",
            "KGB_METRICS_RETRY_MAX": "0.2",
        }
        logs = {name: tmp_path / f"{name}.log" for name in ("winni", "metrics")}
        processes = {name: await consume(name, env, log) for name, log in logs.items()}
        try:
            url = f"http://127.0.0.1:{metrics_port}/ready"
            await eventually(lambda: _is(ready(url), 200))
            await eventually(lambda: _has(logs["winni"], "consuming "))  # winni has no /ready of its own
            healthy = {name: log.read_text().splitlines() for name, log in logs.items()}
            for name, lines in healthy.items():
                assert not [line for line in lines if " ERROR " in line or "aiokafka" in line], (name, lines)
            await publish(producer, topic, exchange())
            conn = await asyncpg.connect(database, server_settings={"search_path": "kgb"})
            try:
                await eventually(lambda: count(conn, "complete", 1))

                await relay.cut()
                await publish(producer, topic, [event for _ in range(3) for event in exchange()])
                await asyncio.sleep(OUTAGE_SECONDS)  # PostgreSQL away, every batch retried
                await asyncio.to_thread(kafka.stop)
                _status, body = await eventually(lambda: _is(ready(url), 503))
                await asyncio.sleep(OUTAGE_SECONDS)  # both away
                await asyncio.to_thread(kafka.start)
                await relay.restore()

                await eventually(lambda: count(conn, "complete", 4), timeout=120)
                await eventually(lambda: _is(ready(url), 200), timeout=120)
                for log in logs.values():  # each process says so once its own watch has seen a success
                    for back in ("Kafka (KGB_KAFKA_BOOTSTRAP) is back", "PostgreSQL (KGB_DATABASE_URL) is back"):
                        await eventually(lambda log=log, back=back: _has(log, back), timeout=120)
            finally:
                await conn.close()
        finally:
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            for process in processes.values():
                await asyncio.wait_for(process.wait(), 60)
    assert "Kafka (KGB_KAFKA_BOOTSTRAP)" in " ".join(body["waiting_for"])
    for name, log in logs.items():
        lines = log.read_text().splitlines()[len(healthy[name]) :]
        assert len(lines) <= MOST_LINES, (name, lines)
        assert any("Kafka (KGB_KAFKA_BOOTSTRAP) is away" in line for line in lines), (name, lines)
        assert any("Kafka (KGB_KAFKA_BOOTSTRAP) is back" in line for line in lines), (name, lines)
        assert any("PostgreSQL (KGB_DATABASE_URL) is away" in line for line in lines), (name, lines)
        assert any("PostgreSQL (KGB_DATABASE_URL) is back" in line for line in lines), (name, lines)
        assert any("is failing (" in line for line in lines) and any(" succeeded after " in line for line in lines), (name, lines)


async def _has(log: Path, text: str) -> bool:
    return text in log.read_text()


async def _is(answer, status: int) -> tuple[int, dict] | None:
    """The /ready answer when its status is ``status``; None otherwise, or while nothing listens."""
    try:
        got = await answer
    except aiohttp.ClientError:
        return None
    return got if got[0] == status else None
