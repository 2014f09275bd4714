"""`kgb consume dewey` against a real topic, a real database and a fake Dewey that fails.

Every test ends with `assert_exactly_once`: each KGB conversation is one Dewey
conversation, holding each of its positions once, in order, as rendered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from consumers.dewey.settings import DeweySettings
from consumers.dewey.consumer import run
from consumers.dewey.forward import stored_message
from consumers.dewey.render import dewey_message
from consumers.dewey.settings import JitteredBackoff
from common.config import KafkaSettings
from tests.consumers.conftest import SETTLE_TIMEOUT, eventually, publish
from tests.consumers.restarts import RESTARTS, batch_failures, feeding, migrated, restarts_mid_batch, settled, task_alive
from tests.consumers.sessions import SessionBuilder, long_session, reply, text
from tests.consumers.winni.test_mcp import answer, call, mcp_message, publish_any
from tests.fakes.dewey import FakeDewey
from tests.services import create_topic

STORED = """
SELECT conversation_id, position, role, content::text AS content, exchange_id::text AS exchange_id, source, partial
FROM messages ORDER BY conversation_id, position
"""

BODIES_KEPT = """
SELECT count(*) FROM exchanges
WHERE num_nonnulls(request_body, request_body_text, request_body_bytes, response_body, response_body_text, response_body_bytes) > 0
"""
COPY_INDEXES = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'messages'"


@pytest.fixture
async def dewey() -> AsyncIterator[FakeDewey]:
    async with FakeDewey() as server:
        yield server


@pytest.fixture
def settings(kafka: Any, database: str, topic: str, dewey: FakeDewey) -> DeweySettings:
    return DeweySettings(
        kafka=KafkaSettings(bootstrap=kafka.bootstrap, topic=topic),
        database_url=database,
        group=f"dewey-test-{uuid.uuid4().hex[:8]}",
        url=dewey.url,
        batch_size=50,
        bulk_size=8,
        timeout=5.0,
        backoff=JitteredBackoff(initial=0.05, maximum=0.5),
    )


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    """Reads the Dewey consumer's schema, where its state and dead letters live."""
    conn = await asyncpg.connect(database, server_settings={"search_path": "kgb_dewey"})
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def consumer(settings: DeweySettings) -> AsyncIterator[asyncio.Task[None]]:
    """`run` in a task for the block's duration, stopped the way the CLI stops it."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, SETTLE_TIMEOUT)


async def crash(task: asyncio.Task[None]) -> None:
    """What a killed process leaves: whatever was in flight, unfinished."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def held(dewey: FakeDewey) -> int:
    return sum(len(c.messages) for c in dewey.conversations.values())


async def until(condition: Callable[[], bool]) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check)


async def delivered(dewey: FakeDewey, sessions: list[SessionBuilder], missing: int = 0) -> None:
    expected = sum(s.messages for s in sessions) - missing
    await until(lambda: held(dewey) >= expected)


async def more_calls(dewey: FakeDewey, count: int) -> None:
    target = len(dewey.calls) + count
    await until(lambda: len(dewey.calls) >= target)


async def assert_exactly_once(
    dewey: FakeDewey,
    db: asyncpg.Connection,
    sessions: list[SessionBuilder],
    dead: set[tuple[uuid.UUID, int]] = frozenset(),
) -> None:
    """Dewey holds the conversation tables exactly: one conversation each, every position once, in order."""
    rows = await db.fetch(STORED)
    expected: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if (row["conversation_id"], row["position"]) not in dead:
            expected.setdefault(str(row["conversation_id"]), []).append(dewey_message(stored_message(row)))
    assert sum(s.conversations for s in sessions) == len(await db.fetch("SELECT id FROM conversations"))
    assert sum(s.messages for s in sessions) == len(rows)

    found = dewey.by_kgb_id()
    assert sorted(found) == sorted(expected), "every KGB conversation begun in Dewey, none twice, none unknown"
    for kgb_id, messages in expected.items():
        (conversation,) = found[kgb_id]
        assert conversation.turns == [m["turn_number"] for m in messages]
        assert [(m["role"], m["content"], m["metadata"]) for m in conversation.messages] == [
            (m["role"], m["content"], orjson.loads(orjson.dumps(m["metadata"]))) for m in messages
        ]
    for arguments in dewey.tool_calls("dewey_store_messages_bulk"):
        assert 1 <= len(arguments["messages"]) <= 8


def tool_session(turns: int) -> SessionBuilder:
    s = SessionBuilder()
    for n in range(turns):
        s.tool_turn("main", f"echo {n}", f"out {n}")
    return s


async def test_sessions_reach_dewey_exactly_once_and_a_replay_adds_nothing(
    settings: DeweySettings,
    dewey: FakeDewey,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
) -> None:
    sessions = [long_session(60), tool_session(12)]
    for s in sessions:
        await publish(producer, settings.kafka.topic, s.events)
    async with consumer(settings):
        await delivered(dewey, sessions)
    await assert_exactly_once(dewey, db, sessions)
    assert len(dewey.tool_calls("dewey_begin_conversation")) == sum(s.conversations for s in sessions)
    assert await db.fetchval(BODIES_KEPT) == 0, "the copy keeps messages, not bodies"
    indexes = {row["indexname"] for row in await db.fetch(COPY_INDEXES)}
    assert "messages_pkey" in indexes
    assert not indexes & {"messages_search_idx", "messages_unindexed_idx"}, "the copy is never searched"
    main = next(
        c for c in dewey.conversations.values() if c.metadata["kind"] == "main" and c.session_id == sessions[1].session_id
    )
    assert main.messages[1]["content"] == '[tool_use Bash] {"command":"echo 0"}'
    assert main.messages[2]["content"] == "[tool_result toolu_000000000000000000000001]\nout 0"

    # A replay: a new group reads the topic from the start; sentinels on every partition mark its end.
    calls = len(dewey.calls)
    sentinels = [SessionBuilder() for _ in range(3)]
    for partition, s in enumerate(sentinels):
        s.turn("main", text("sentinel"), answer=reply(text("ok")))
        await publish(producer, settings.kafka.topic, s.events, partition=partition)
    async with consumer(replace(settings, group=f"{settings.group}-replay")):
        await delivered(dewey, sessions + sentinels)
    await assert_exactly_once(dewey, db, sessions + sentinels)
    assert [tool for tool, _ in dewey.calls[calls:]].count("dewey_begin_conversation") == 3


async def test_a_consumer_killed_mid_call_again_and_again_sends_nothing_twice(
    settings: DeweySettings,
    dewey: FakeDewey,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
) -> None:
    """Dewey stores each call, then is slow to answer: killing the consumer then loses the answer, not the data."""
    sessions = [long_session(60), tool_session(20)]
    for s in sessions:
        await publish(producer, settings.kafka.topic, s.events)
    dewey.delay = 0.05
    for _ in range(4):
        task = asyncio.create_task(run(settings, asyncio.Event()))
        await more_calls(dewey, 5)
        await crash(task)
    dewey.delay = 0
    async with consumer(settings):
        await delivered(dewey, sessions)
    await assert_exactly_once(dewey, db, sessions)


async def test_answers_lost_on_the_way_are_found_in_dewey_not_sent_again(
    settings: DeweySettings,
    dewey: FakeDewey,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
) -> None:
    """The first begin and the first stores are applied, then the connection drops before the answer."""
    sessions = [tool_session(10)]
    await publish(producer, settings.kafka.topic, sessions[0].events)
    dewey.lose_answers = 3
    async with consumer(settings):
        await delivered(dewey, sessions)
    await assert_exactly_once(dewey, db, sessions)
    assert dewey.lose_answers == 0
    assert dewey.tool_calls("dewey_list_conversations"), "the begin in doubt was looked up"
    assert dewey.tool_calls("dewey_get_conversation"), "the store in doubt was looked up"


async def test_dewey_away_then_back_loses_nothing_and_duplicates_nothing(
    settings: DeweySettings,
    dewey: FakeDewey,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
) -> None:
    before, during = tool_session(6), long_session(30)
    async with consumer(settings):
        await publish(producer, settings.kafka.topic, before.events)
        await delivered(dewey, [before])
        await dewey.stop()
        await publish(producer, settings.kafka.topic, during.events)
        # The batch is in the consumer's own tables (committed before Dewey is called), waiting for Dewey.
        await eventually(lambda: db.fetchval("SELECT count(*) FROM conversations WHERE session_key = $1", during.session_id))
        calls = len(dewey.calls)
        await asyncio.sleep(1)  # several retries against the closed port
        assert len(dewey.calls) == calls
        await dewey.start()
        await delivered(dewey, [before, during])
    await assert_exactly_once(dewey, db, [before, during])


async def test_a_message_dewey_refuses_is_dead_lettered_and_the_rest_goes_on(
    settings: DeweySettings,
    dewey: FakeDewey,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
) -> None:
    s = SessionBuilder()
    for n in range(5):
        s.turn("main", text("POISON pill" if n == 2 else f"question {n}"), answer=reply(text(f"answer {n}")))
    dewey.reject = "POISON"
    async with consumer(settings):
        await publish(producer, settings.kafka.topic, s.events)
        await delivered(dewey, [s], missing=1)
        later = len(s.events)
        s.turn("main", text("one more"), answer=reply(text("done")))
        await publish(producer, settings.kafka.topic, s.events[later:])
        await delivered(dewey, [s], missing=1)

    (letter,) = await db.fetch("SELECT * FROM dewey_dead_letters")
    assert (letter["position"], letter["tool"], letter["error_code"]) == (4, "dewey_store_messages_bulk", -32603)
    assert "POISON" in letter["error_message"]
    (sent,) = orjson.loads(letter["arguments"])["messages"]
    assert (sent["turn_number"], sent["content"]) == (4, "POISON pill")
    await assert_exactly_once(dewey, db, [s], dead={(letter["conversation_id"], 4)})
    (conversation,) = dewey.conversations.values()
    assert conversation.turns == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]


async def test_a_conversation_dewey_will_not_begin_is_dead_lettered_and_the_others_go_on(
    settings: DeweySettings,
    dewey: FakeDewey,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
) -> None:
    refused, fine = SessionBuilder(session_id="POISON-session"), tool_session(3)
    refused.turn("main", text("hello"), answer=reply(text("hi")))
    dewey.reject = "POISON"
    async with consumer(settings):
        await publish(producer, settings.kafka.topic, refused.events + fine.events)
        await delivered(dewey, [fine])
        await until(lambda: len(dewey.tool_calls("dewey_begin_conversation")) == 2)

    (letter,) = await db.fetch("SELECT * FROM dewey_dead_letters")
    assert (letter["position"], letter["tool"], letter["error_code"]) == (None, "dewey_begin_conversation", -32603)
    assert orjson.loads(letter["arguments"])["session_id"] == "POISON-session"
    assert await db.fetchval("SELECT rejected FROM dewey_conversations WHERE conversation_id = $1", letter["conversation_id"])
    assert [c.session_id for c in dewey.conversations.values()] == [fine.session_id]
    assert dewey.conversations[next(iter(dewey.conversations))].turns == list(range(fine.messages))


async def test_a_dewey_slower_than_the_timeout_falls_behind_then_catches_up_exactly_once(
    settings: DeweySettings,
    dewey: FakeDewey,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
) -> None:
    """Each call is applied but answered after the consumer gave up on it: nothing can be acknowledged."""
    sessions = [tool_session(8), long_session(20)]
    dewey.delay = 1.0
    async with consumer(replace(settings, timeout=0.2)):
        for s in sessions:
            await publish(producer, settings.kafka.topic, s.events)
        await more_calls(dewey, 6)
        assert not await db.fetchval("SELECT count(*) FROM dewey_conversations WHERE NOT in_doubt AND sent_position >= 0")
        dewey.delay = 0
        await delivered(dewey, sessions)
    await assert_exactly_once(dewey, db, sessions)


async def test_dewey_rides_out_database_restarts_mid_batch(
    postgres: Any,
    producer: AIOKafkaProducer,
    settings: DeweySettings,
    dewey: FakeDewey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Restarts land inside batches (its conversation state, its outbox notes) while sessions
    keep coming: Dewey still gets every message exactly once."""
    caplog.set_level(logging.WARNING, logger="consumers")
    caplog.set_level(logging.DEBUG, logger="consumers.source")  # every failed attempt, for batch_failures
    async with consumer(settings) as task:
        async with feeding(producer, settings.kafka.topic) as sessions:
            await restarts_mid_batch(
                postgres, settings.database_url, migrated("kgb_dewey.dewey_conversations"), alive=task_alive(task)
            )

        async def all_held(_: asyncpg.Connection) -> bool:
            return held(dewey) >= sum(s.messages for s in sessions)

        await settled(settings.database_url, "kgb_dewey", all_held, task_alive(task))
    assert len(batch_failures(caplog)) >= RESTARTS // 2, "the restarts landed inside batches"
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": "kgb_dewey"})
    try:
        await assert_exactly_once(dewey, conn, sessions)
    finally:
        await conn.close()


async def test_an_mcp_session_is_one_dewey_conversation_sent_exactly_once(
    settings: DeweySettings,
    dewey: FakeDewey,
    producer: AIOKafkaProducer,
    kafka: Any,
) -> None:
    """The client's messages as user, the server's as assistant, in order; answers lost on the way are found, not resent."""
    mcp_topic = await create_topic(kafka.bootstrap)
    settings = replace(settings, kafka=replace(settings.kafka, mcp_topic=mcp_topic))
    events = [
        mcp_message(
            call(i, "find", {"q": i}) if i % 2 == 0 else answer(i - 1),
            "CLIENT_TO_UPSTREAM" if i % 2 == 0 else "UPSTREAM_TO_CLIENT",
        )
        for i in range(12)
    ]
    await publish_any(producer, mcp_topic, events + events[:4])  # a redelivery too
    dewey.lose_answers = 2
    async with consumer(settings):
        await eventually(lambda: asyncio.sleep(0, held(dewey) >= 12))
    async with consumer(settings):  # a restart sends nothing again
        await asyncio.sleep(1)
    (conversation,) = dewey.conversations.values()
    assert conversation.metadata and conversation.metadata["kind"] == "mcp" and conversation.metadata["mcp_server"] == "srv"
    assert conversation.session_id == "sess-1"
    assert [m["metadata"]["position"] for m in conversation.messages] == list(range(12))
    assert [m["role"] for m in conversation.messages] == ["user", "assistant"] * 6
    assert conversation.messages[0]["metadata"]["content"]["params"]["name"] == "find", "the JSON-RPC message, exactly"


async def test_the_dewey_url_is_logged_without_its_password(
    settings: DeweySettings,
    dewey: FakeDewey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="consumers.dewey")
    url = dewey.url.replace("://", "://kgb:s3cret@", 1)  # a plain string, as a test or an override passes it
    async with consumer(replace(settings, url=url)):
        await until(lambda: any("dewey sending to" in record.getMessage() for record in caplog.records))
    assert "dewey sending to " + url.replace("s3cret", "****") in caplog.text and "s3cret" not in caplog.text
