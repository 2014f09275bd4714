"""Winni's search indexer (`consumers.winni.search_index`, migration 010) on real Kafka and PostgreSQL:
messages are stored without their vectors and get, behind the writes, the ones migration 006 gave them."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from consumers.errors import is_transient
from consumers.replay.rebuild import replay
from consumers.winni.settings import WinniSettings
from consumers.winni.consumer import run
from consumers.source import Batch
from consumers.winni.search_index import BUSY_SECONDS, Activity, give_way, index_all
from consumers.winni.store import queries
from common.config import SettingsError
from tests.consumers.conftest import FAST_BACKOFF, count, eventually, publish, winni
from tests.consumers.restarts import migrated, restarts_mid_batch, task_alive
from tests.consumers.sessions import SessionBuilder, long_session, reply, text

# Messages whose vector is not the one migration 006's generated column computed from their content.
WRONG = "SELECT count(*) FROM messages WHERE search IS DISTINCT FROM message_search_vector(content)"
UNINDEXED = "SELECT count(*) FROM messages WHERE search IS NULL"
FOUND = "SELECT count(*) FROM messages WHERE search @@ websearch_to_tsquery('english', $1)"


async def complete(db: asyncpg.Connection, session: SessionBuilder) -> None:
    await eventually(lambda: count(db, "complete", len(session.events) // 2))


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    """A connection to winni's schema for running the indexer by hand."""
    p = await asyncpg.create_pool(database, min_size=1, max_size=2, server_settings={"search_path": "kgb"})
    yield p
    await p.close()


async def test_the_indexer_gives_every_new_message_the_vector_search_finds_it_by(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    """Sub-agents, compaction (copied messages), retries, partial replies: every message ends with
    exactly the vector the generated column gave it, and search finds the words."""
    session = long_session(60)
    await publish(producer, settings.kafka.topic, session.events)
    async with winni(replace(settings, search_index_batch=7)):
        await complete(db, session)
        await eventually(lambda: count(db, "indexed", 1))
    assert await db.fetchval("SELECT count(*) FROM messages") == session.messages
    assert await db.fetchval(WRONG) == 0
    assert await db.fetchval(FOUND, '"Answer 37, cut"') >= 1 and await db.fetchval(FOUND, '"Question 59"') >= 1


async def test_a_partial_reply_replaced_by_the_complete_one_is_indexed_again(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    session = SessionBuilder()
    session.turn("main", text("tell me a story"), answer=reply(text("Once upon")), partial=True)
    await publish(producer, settings.kafka.topic, session.events)
    async with winni(settings):
        await complete(db, session)
        await eventually(lambda: count(db, "indexed", 1))
    row = await db.fetchrow("SELECT * FROM messages WHERE partial")
    assert row is not None and await db.fetchval(FOUND, "upon") == 1
    complete_reply = '[{"type": "text", "text": "Once upon a time, a dragon."}]'
    await db.execute(
        queries().upsert_message,
        row["conversation_id"],
        row["position"],
        "assistant",
        complete_reply,
        b"other hash",
        str(row["exchange_id"]),
        "response",
        False,
        row["created_at"],
    )
    assert await db.fetchval(UNINDEXED) == 1, "the vector of the partial text went with it"
    assert await index_all(pool, 10, asyncio.Event(), FAST_BACKOFF) == 1
    assert await db.fetchval(WRONG) == 0 and await db.fetchval(FOUND, "dragon") == 1


async def test_with_the_indexer_off_messages_wait_and_index_all_fills_them(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    session = SessionBuilder()
    session.turn("main", text("where is the quixotic widget"), answer=reply(text("In src/app/main.py at line 3.")))
    await publish(producer, settings.kafka.topic, session.events)
    async with winni(replace(settings, search_index=False)):
        await complete(db, session)
    assert await db.fetchval(UNINDEXED) == session.messages == 2
    assert await db.fetchval(FOUND, "quixotic") == 0

    assert await index_all(pool, 1, asyncio.Event(), FAST_BACKOFF, workers=2) == 2
    assert await db.fetchval(WRONG) == 0
    assert (
        await db.fetchval(FOUND, "quixotic"),
        await db.fetchval(FOUND, "src/app/main.py"),
        await db.fetchval(FOUND, "main"),
    ) == (1, 1, 1)
    assert await index_all(pool, 1, asyncio.Event(), FAST_BACKOFF) == 0, "nothing is indexed twice"


async def test_the_indexer_rides_out_database_restarts_mid_statement(
    postgres: Any,
    settings: WinniSettings,
    producer: AIOKafkaProducer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A backlog stored with the indexer off, then a winni with it on and nothing else to do: every
    statement in flight is the indexer's, and the server restarts under it, again and again."""
    caplog.set_level(logging.WARNING, logger="consumers")
    sessions = [long_session(100) for _ in range(4)]
    await publish(producer, settings.kafka.topic, [e for s in sessions for e in s.events])
    db = await asyncpg.connect(settings.database_url, server_settings={"search_path": "kgb"})
    try:
        async with winni(replace(settings, search_index=False)):
            for session in sessions:
                await complete(db, session)
    finally:
        await db.close()
    done = asyncio.Event()
    async with winni(replace(settings, search_index_batch=3)) as task:
        restarting = asyncio.create_task(
            restarts_mid_batch(postgres, settings.database_url, migrated("kgb.messages"), 3, task_alive(task), done)
        )
        try:
            await eventually(lambda: _indexed(settings.database_url))
        finally:
            done.set()
        made = await restarting
    assert made >= 1 and "indexing messages for search is failing" in caplog.text
    assert await _fresh(settings.database_url, WRONG) == 0


async def _indexed(dsn: str) -> bool:
    """True once no message waits; a server restarting meanwhile just means not yet."""
    try:
        return await _fresh(dsn, UNINDEXED) == 0
    except Exception as exc:  # the probe meets the restarts too, with winni's transient errors
        if is_transient(exc):
            return False
        raise


async def _fresh(dsn: str, query: str) -> int:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "kgb"})
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def test_a_message_postgresql_refuses_to_index_is_left_out_of_search_and_holds_nothing_up(
    settings: WinniSettings,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No content is known to make the vector fail (its text is cut below tsvector's limit), so a
    vector function that refuses one marked message stands in for whatever might."""
    caplog.set_level(logging.WARNING, logger="consumers")
    session = SessionBuilder()
    session.turn("main", text("first, a fine message"), answer=reply(text("poisoned answer")))
    session.turn("main", text("then another fine one"), answer=reply(text("all good")))
    await publish(producer, settings.kafka.topic, session.events)
    async with winni(replace(settings, search_index=False)):
        await complete(db, session)
    await db.execute("""
        ALTER FUNCTION message_search_vector(jsonb) RENAME TO real_message_search_vector;
        CREATE FUNCTION message_search_vector(content jsonb) RETURNS tsvector LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
            IF content::text LIKE '%poisoned%' THEN
                RAISE EXCEPTION 'this message cannot be indexed' USING ERRCODE = 'program_limit_exceeded';
            END IF;
            RETURN real_message_search_vector(content);
        END $$;
    """)

    assert await index_all(pool, 10, asyncio.Event(), FAST_BACKOFF) == session.messages
    assert await db.fetchval(UNINDEXED) == 0
    left_out = await db.fetch("SELECT position FROM messages WHERE search = ''::tsvector")
    assert [r["position"] for r in left_out] == [1]
    assert "left out of search: this message cannot be indexed" in caplog.text
    assert await db.fetchval(FOUND, "another") == 1 and await db.fetchval(FOUND, "poisoned") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == session.messages, "every message is still stored"


async def test_an_indexer_that_cannot_work_stops_winni_loudly(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    """A schema fault (the vector function gone) is nobody's message's fault: winni stops with it
    rather than leave every message out of search."""
    async with winni(replace(settings, search_index=False)):
        await eventually(lambda: db.fetchval("SELECT to_regclass('kgb.messages') IS NOT NULL"))
    await db.execute("DROP FUNCTION message_search_vector(jsonb) CASCADE")
    session = SessionBuilder()
    session.turn("main", text("hello"), answer=reply(text("hi")))
    await publish(producer, settings.kafka.topic, session.events)
    stop = asyncio.Event()
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await asyncio.wait_for(run(settings, stop), 60)
    assert stop.is_set()


async def test_replay_builds_the_index_of_the_tables_it_rebuilds(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection, admin: asyncpg.Connection
) -> None:
    session = long_session(30)
    await publish(producer, settings.kafka.topic, session.events)
    async with winni(replace(settings, search_index=False)):
        await complete(db, session)
    assert await db.fetchval(UNINDEXED) == session.messages

    await replay(settings, into="kgb_copy", stream=io.StringIO())
    await admin.execute("SET search_path = kgb_copy")
    assert await admin.fetchval("SELECT count(*) FROM messages") == session.messages
    assert (await admin.fetchval(UNINDEXED), await admin.fetchval(WRONG)) == (0, 0)
    assert await db.fetchval(UNINDEXED) == session.messages, "the live tables are not replay's to index"

    await replay(replace(settings, search_index=False), into="kgb_bare", stream=io.StringIO())
    await admin.execute("SET search_path = kgb_bare")
    assert await admin.fetchval(UNINDEXED) == session.messages, "KGB_WINNI_SEARCH_INDEX=false: replay leaves them too"


@pytest.fixture
async def admin(database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database)
    yield conn
    await conn.close()


def test_while_winni_is_busy_the_indexer_takes_its_share_of_the_time() -> None:
    assert give_way(0.1, 0.2) == pytest.approx(0.4)  # 0.1 s of 0.5: a fifth
    assert give_way(0.3, 0.5) == pytest.approx(0.3) and give_way(0.3, 1) == 0


async def test_winni_is_busy_while_batches_keep_coming() -> None:
    activity = Activity()
    assert not activity.busy()
    stored: list[Batch] = []

    async def handler(batch: Batch) -> None:
        stored.append(batch)

    await activity.tracking(handler)(Batch([], []))
    assert stored and activity.busy()
    activity.last -= BUSY_SECONDS
    assert not activity.busy()


def test_settings_turn_the_indexer_off_and_size_its_batches_and_share() -> None:
    defaults = WinniSettings()
    assert (defaults.search_index, defaults.search_index_batch, defaults.search_index_share) == (True, 200, 0.2)
    read = WinniSettings.from_env(
        {"KGB_WINNI_SEARCH_INDEX": "false", "KGB_WINNI_SEARCH_INDEX_BATCH": "50", "KGB_WINNI_SEARCH_INDEX_SHARE": "1"}
    )
    assert (read.search_index, read.search_index_batch, read.search_index_share) == (False, 50, 1.0)
    assert "search_index=False, search_index_batch=50, search_index_share=1.0" in repr(read)
    for bad in ("0", "1.5", "-0.2", "nan"):
        with pytest.raises(SettingsError, match="KGB_WINNI_SEARCH_INDEX_SHARE must be above 0 and at most 1"):
            WinniSettings.from_env({"KGB_WINNI_SEARCH_INDEX_SHARE": bad})
    with pytest.raises(SettingsError, match="KGB_WINNI_SEARCH_INDEX must be true or false"):
        WinniSettings.from_env({"KGB_WINNI_SEARCH_INDEX": "sometimes"})
    with pytest.raises(SettingsError, match="KGB_WINNI_SEARCH_INDEX_BATCH must be at least 1"):
        WinniSettings.from_env({"KGB_WINNI_SEARCH_INDEX_BATCH": "0"})
