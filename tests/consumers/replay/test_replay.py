"""`kgb replay` on real Kafka and PostgreSQL: rebuilt tables equal the live-built ones, row for row."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from consumers.errors import ConsumerError
from consumers.replay.rebuild import replay
from consumers.replay.progress import duration, progress_line
from consumers.replay.rebuild import schema_names, swap, swap_once, trimmed
from consumers.source import end_offsets, make_reader, read_from_start
from consumers.sql import load_migrations, migrate
from consumers.winni.settings import WinniSettings
from consumers.winni.consumer import run_processes
from consumers.winni.store import queries as winni_queries
from common.config import KafkaSettings, SettingsError
from tests import services
from tests.consumers.conftest import count, eventually, publish, winni
from tests.consumers.dump import tables
from tests.consumers.restarts import batch_failures, dump, restarts_mid_batch
from tests.consumers.winni.test_mcp import answer, call, mcp_message, publish_any, tool_use_exchange
from tests.services import create_topic
from tests.consumers.sessions import (
    SessionBuilder,
    long_session,
    reply,
    sample_events,
    text,
)


def varied_events() -> list[dict[str, Any] | bytes]:
    """Sessions of every shape (sub-agents, compaction, retries, interruptions, titles), the samples, garbage."""
    short = SessionBuilder()
    short.turn("main", text("hello"), answer=reply(text("hi")))
    return [*long_session(60).events, *long_session(30).events, *short.events, *sample_events(), b"not avro"]


async def schemas(conn: asyncpg.Connection) -> set[str]:
    return {r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'kgb%'")}


async def stored(db: asyncpg.Connection, events: list[dict[str, Any] | bytes]) -> None:
    """Until the live tables hold every exchange whole, every garbage message dead-lettered, and
    every message indexed for search."""
    exchanges = len({e["exchange_id"] for e in events if isinstance(e, dict)})
    garbage = sum(isinstance(e, bytes) for e in events)
    await eventually(lambda: count(db, "complete", exchanges))
    await eventually(lambda: count(db, "dead_letters", garbage))
    await eventually(lambda: count(db, "indexed", 1))


@pytest.fixture
def database(empty_database: str) -> str:
    """These tests count the ``kgb*`` schemas: the database holds only those winni and replay make."""
    return empty_database


@pytest.fixture
async def admin(database: str) -> Any:
    conn = await asyncpg.connect(database)
    yield conn
    await conn.close()


@pytest.mark.parametrize("whole_bodies", [False, True], ids=["split-bodies", "whole-bodies"])
async def test_replay_into_a_schema_equals_the_live_tables_and_again_changes_nothing(
    settings: WinniSettings,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
    admin: asyncpg.Connection,
    whole_bodies: bool,
) -> None:
    settings = replace(settings, store_request_bodies=whole_bodies)
    events = varied_events()
    await publish(producer, settings.kafka.topic, events)
    async with winni(settings):
        await stored(db, events)
    live = await tables(admin, "kgb")
    assert len(live["exchanges"]) == len({e["exchange_id"] for e in events if isinstance(e, dict)})
    assert live["messages"] and live["tool_calls"] and live["dead_letters"]

    outcome = await replay(settings, into="kgb_copy", stream=io.StringIO())
    assert (outcome.schema, outcome.events, outcome.complete) == ("kgb_copy", len(events), True)
    assert await tables(admin, "kgb_copy") == live

    await replay(settings, into="kgb_copy", stream=io.StringIO())
    assert await tables(admin, "kgb_copy") == live

    swapped = await replay(settings, stream=io.StringIO())
    assert (swapped.schema, swapped.complete, swapped.old_schema) == ("kgb", True, None)
    assert await tables(admin, "kgb") == live
    assert await schemas(admin) == {"kgb", "kgb_copy"}, "the replaced tables are dropped without --keep-old"


async def test_two_processes_live_and_in_replay_build_the_tables_one_process_builds(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection, admin: asyncpg.Connection
) -> None:
    """KGB_WINNI_PROCESSES=2: the live group and replay's readers share the partitions, and the tables are the same."""
    two = replace(settings, processes=2)
    events = varied_events()
    await publish(producer, settings.kafka.topic, events)
    sessions = {e["session_key"] for e in events if isinstance(e, dict)}
    assert len(sessions) > 3, "more sessions than partitions, so both processes get some"
    stop = asyncio.Event()
    live = asyncio.create_task(run_processes(two, stop))
    try:
        await stored(db, events)
    finally:
        stop.set()
        await asyncio.wait_for(live, 60)
    built = await tables(admin, "kgb")

    await replay(settings, into="kgb_one", stream=io.StringIO())
    assert await tables(admin, "kgb_one") == built
    outcome = await replay(two, into="kgb_two", stream=io.StringIO())
    assert (outcome.events, outcome.complete) == (len(events), True)
    assert await tables(admin, "kgb_two") == built

    swapped = await replay(two, stream=io.StringIO())
    assert (swapped.schema, swapped.complete) == ("kgb", True)
    assert await tables(admin, "kgb") == built


async def test_a_swap_under_a_running_consumer_loses_nothing_and_the_consumer_carries_on(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection, admin: asyncpg.Connection
) -> None:
    """Events before, during and after the swap, the later ones continuing sessions the consumer has cached."""
    first, second = long_session(40), long_session(40)
    cut = len(first.events) // 4 * 2  # whole exchanges
    topic = settings.kafka.topic
    await publish(producer, topic, [*first.events[:cut], *second.events[:cut]])
    async with winni(settings):
        await stored(db, [*first.events[:cut], *second.events[:cut]])
        during = asyncio.create_task(publish(producer, topic, second.events[cut:]))
        outcome = await replay(settings, keep_old=True, stream=io.StringIO())
        await during
        assert (outcome.schema, outcome.complete) == ("kgb", True)
        old = outcome.old_schema
        assert old and await schemas(admin) == {"kgb", old}
        floor = await admin.fetchval("SELECT min(revision) FROM kgb.session_revisions")
        ceiling = await admin.fetchval(f'SELECT max(revision) FROM "{old}".session_revisions')
        assert floor > ceiling, "cached session state from the old tables can never pass for current"

        await publish(producer, topic, first.events[cut:])
        await stored(db, [*first.events, *second.events])

    await replay(settings, into="kgb_check", stream=io.StringIO())
    assert await tables(admin, "kgb") == await tables(admin, "kgb_check")
    assert len((await tables(admin, "kgb"))["messages"]) == first.messages + second.messages


async def test_a_live_write_waiting_on_the_swap_lands_in_the_rebuilt_tables(database: str, admin: asyncpg.Connection) -> None:
    """What the swap relies on: a live batch that starts while the live tables are locked, with
    statements the connection has prepared before, waits, then writes into the schema that has the
    live name once the swap commits; none of it reaches the replaced tables."""
    for schema in ("kgb", "kgb_new"):
        await migrate(admin, load_migrations("consumers.winni"), schema)
    live = await asyncpg.connect(database, server_settings={"search_path": "kgb"})
    at = datetime(2025, 1, 1, tzinfo=UTC)
    upsert = winni_queries().upsert_session

    async def live_batch(key: str) -> None:
        async with live.transaction():
            await live.execute(upsert, key, "header", None, None, "claude-cli", "2.1.0", None, at, at)

    async def blocked_live_batch() -> None:
        nonlocal waiting
        waiting = asyncio.create_task(live_batch("during"))
        await eventually(
            lambda: admin.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'kgb.sessions'::regclass")
        )

    waiting: asyncio.Task[None] | None = None
    try:
        await live_batch("before")  # prepared and cached on the live connection
        assert await swap_once(admin, "kgb", "kgb_new", "kgb_old", blocked_live_batch, asyncio.Event())
        assert waiting is not None
        await waiting
        await live_batch("after")
    finally:
        await live.close()
    assert [r[0] for r in await admin.fetch("SELECT session_key FROM kgb.sessions ORDER BY 1")] == ["after", "during"]
    assert [r[0] for r in await admin.fetch("SELECT session_key FROM kgb_old.sessions")] == ["before"]


async def live_tables_of_a_session(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> dict[str, list[tuple[Any, ...]]]:
    """A 10-turn session on the topic and stored by the live consumer; its tables."""
    events = long_session(10).events
    await publish(producer, settings.kafka.topic, events)
    async with winni(settings):
        await stored(db, events)
    return await dump(settings.database_url, "kgb")


async def test_a_stopped_replay_swaps_nothing(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection, admin: asyncpg.Connection
) -> None:
    before = await live_tables_of_a_session(settings, producer, db)
    stop = asyncio.Event()
    stop.set()
    outcome = await replay(settings, stop=stop, stream=io.StringIO())
    assert not outcome.complete and outcome.schema.startswith("kgb_replay_")
    assert await tables(admin, "kgb") == before


async def test_the_command_fills_a_schema_and_logs_plain_progress_lines(
    settings: WinniSettings, producer: AIOKafkaProducer, admin: asyncpg.Connection
) -> None:
    events = long_session(10).events
    await publish(producer, settings.kafka.topic, events)
    env = {
        **os.environ,
        "KGB_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "KGB_TOPIC": settings.kafka.topic,
        "KGB_DATABASE_URL": settings.database_url,
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "from kgb.cli import main; main()", "replay", "--into", "kgb_cli"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"kgb replay: {len(events):,} events in" in done.stdout
    assert f"replay: {len(events):,}/{len(events):,} events (100%)" in done.stderr
    assert "\r" not in done.stderr, "not a terminal: plain lines"
    assert await admin.fetchval("SELECT count(*) FROM kgb_cli.exchanges") == len(events) // 2


async def test_a_topic_with_fewer_exchanges_than_the_live_tables_is_not_swapped_in(
    settings: WinniSettings, kafka: Any, producer: AIOKafkaProducer, db: asyncpg.Connection, admin: asyncpg.Connection
) -> None:
    before = await live_tables_of_a_session(settings, producer, db)
    empty = replace(settings, kafka=replace(settings.kafka, topic=await services.create_topic(kafka.bootstrap)))
    with pytest.raises(ConsumerError, match="is KGB_TOPIC the topic"):
        await replay(empty, stream=io.StringIO())
    assert await tables(admin, "kgb") == before


async def test_a_missing_topic_is_an_error_not_an_empty_swap(settings: WinniSettings) -> None:
    missing = replace(settings, kafka=replace(settings.kafka, topic="kgb-test-no-such-topic"))
    with pytest.raises(ConsumerError, match="not found"):
        await replay(missing, stream=io.StringIO())


def readme_example() -> str:
    """The Python block of the README's Replay section: the example consumer."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme.split("## Replay", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return block


async def test_the_readme_example_consumer_counts_every_request(kafka: Any, topic: str, producer: AIOKafkaProducer) -> None:
    events = [*long_session(10).events, *sample_events(), b"not avro"]
    await publish(producer, topic, events)
    expected: dict[str, int] = {}
    for e in events:
        if isinstance(e, dict) and e["kind"] == "REQUEST":
            model = e["request"]["model"] or "none"
            expected[model] = expected.get(model, 0) + 1
    example: dict[str, Any] = {}
    exec(compile(readme_example(), "README.md", "exec"), example)  # noqa: S102 - the README's own code
    assert await example["requests_per_model"](KafkaSettings(bootstrap=kafka.bootstrap, topic=topic)) == expected


def test_progress_lines() -> None:
    assert progress_line(0, 1000, 0.0) == "0/1,000 events (0%)"
    assert progress_line(250, 1000, 2.0) == "250/1,000 events (25%), 125 events/s, ETA 0:00:06"
    assert progress_line(5, 0, 1.0) == "5/0 events (100%), 5 events/s, ETA 0:00:00"
    assert duration(3725.4) == "1:02:05"


def test_schema_names() -> None:
    at = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert schema_names("kgb", None, at) == ("kgb_replay_20250304050607", "kgb_old_20250304050607")
    assert schema_names("kgb", "mine", at)[0] == "mine"
    with pytest.raises(SettingsError, match="live schema"):
        schema_names("kgb", "kgb", at)
    with pytest.raises(SettingsError):
        schema_names("kgb", "no-dashes", at)


def test_a_trimmed_topic_is_named() -> None:
    assert trimmed({TopicPartition("t", 0): 0, TopicPartition("t", 1): 7}) == ["t[1] starts at 7"]


REBUILT = """
SELECT count(*) > 0 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname LIKE 'kgb\\_replay\\_%' AND c.relname = 'exchanges'
"""


async def test_replay_rides_out_database_restarts_mid_batch(
    postgres: Any,
    settings: WinniSettings,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A swapping replay under restarts that land inside its batches (or wherever it is writing):
    it completes, and the tables it swaps in are the live ones, row for row."""
    events = [e for _ in range(30) for e in long_session(12).events]
    await publish(producer, settings.kafka.topic, events)
    async with winni(settings):
        await stored(db, events)
    live = await dump(settings.database_url, "kgb")
    caplog.set_level(logging.WARNING, logger="consumers")
    caplog.set_level(logging.DEBUG, logger="consumers.source")  # every failed attempt, for batch_failures
    done = asyncio.Event()
    restarts = asyncio.create_task(restarts_mid_batch(postgres, settings.database_url, REBUILT, done=done))
    try:
        outcome = await replay(replace(settings, batch_size=50), stream=io.StringIO())
    finally:
        done.set()
        made = await restarts
    assert (outcome.schema, outcome.complete, outcome.events) == ("kgb", True, len(events))
    assert made >= 3 and len(batch_failures(caplog)) >= 3, "the restarts landed inside batches"
    assert await dump(settings.database_url, "kgb") == live


async def test_a_restart_inside_the_locked_swap_rolls_it_back_and_it_is_done_again(
    postgres: Any,
    settings: WinniSettings,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
) -> None:
    """The restart comes during the final catch-up, the swap's transaction holding the live tables'
    locks: it rolls back, and the next attempt, on a new connection, swaps. Swapping once more
    (as after a commit whose answer was lost) finds it done and changes nothing."""
    live = await live_tables_of_a_session(settings, producer, db)
    await replay(settings, into="kgb_rebuilt", stream=io.StringIO())
    reader = make_reader(settings.kafka, settings.batch_size)
    await reader.start()
    try:
        await read_from_start(reader, settings.kafka)
        for tp, end in (await end_offsets(reader)).items():
            reader.seek(tp, end)
        restarted = []

        async def catch_up(ends: dict[TopicPartition, int]) -> None:
            if not restarted:
                restarted.append(ends)
                await asyncio.to_thread(postgres.restart)

        async with asyncio.timeout(60):
            assert await swap(settings, reader, catch_up, "kgb_rebuilt", "kgb_old", True, asyncio.Event())
            assert restarted
            assert await swap(settings, reader, catch_up, "kgb_rebuilt", "kgb_old", True, asyncio.Event())
    finally:
        await reader.stop()
    assert await dump(settings.database_url, "kgb") == live == await dump(settings.database_url, "kgb_old")
    assert await dump(settings.database_url, "kgb_rebuilt") == {}


async def test_replay_rebuilds_the_mcp_tables_and_their_links_from_both_topics(
    settings: WinniSettings,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
    admin: asyncpg.Connection,
    kafka: Any,
) -> None:
    mcp_topic = await create_topic(kafka.bootstrap)
    settings = replace(settings, kafka=replace(settings.kafka, mcp_topic=mcp_topic))
    request, response = tool_use_exchange("toolu_01Replay", "mcp__srv__find", {"q": "x"})
    at = response["occurred_at"] + 10_000
    mcp_events = [
        mcp_message(call(1, "find", {"q": "x"}, progressToken=5), at=at),
        mcp_message(
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 5, "progress": 1}},
            "UPSTREAM_TO_CLIENT",
            at=at + 1,
        ),
        mcp_message(answer(1), "UPSTREAM_TO_CLIENT", at=at + 2),
        mcp_message(b"garbage line"),
    ]
    await publish(producer, settings.kafka.topic, [request, response])
    await publish_any(producer, mcp_topic, mcp_events)
    async with winni(settings):
        await eventually(lambda: linked(db))
        await eventually(lambda: count(db, "indexed", 1))
    live = await tables(admin, "kgb")
    assert len(live["mcp_messages"]) == 4 and len(live["mcp_calls"]) == 1

    outcome = await replay(settings, into="kgb_copy", stream=io.StringIO())
    assert outcome.events == 6
    assert await tables(admin, "kgb_copy") == live


async def linked(db: asyncpg.Connection) -> bool:
    try:
        return bool(await db.fetchval("SELECT count(*) FROM tool_calls WHERE mcp_call_id IS NOT NULL"))
    except asyncpg.UndefinedTableError:
        return False
