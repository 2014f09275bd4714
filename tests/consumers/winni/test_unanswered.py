"""Request-only rows are marked unanswered once their response is overdue (issue 13, item 9; migration 008).

A stream cut by a proxy killed mid-answer leaves only its request event; the
row waited for its response half forever. Here winni runs with a short
`unanswered_after`, and the tests wait for the mark (polling, no timing asserted).
"""

from __future__ import annotations

from dataclasses import replace

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers.winni.settings import WinniSettings
from consumers.winni.store import mark_unanswered
from tests.consumers.conftest import eventually, publish, winni
from tests.consumers.factories import exchange, request_event, response_event

ROW = "SELECT request_event_id, response_event_id, unanswered_at FROM exchanges WHERE exchange_id = $1"


async def row(db: asyncpg.Connection, exchange_id: str) -> asyncpg.Record | None:
    try:
        return await db.fetchrow(ROW, exchange_id)
    except asyncpg.UndefinedTableError:
        return None


async def test_a_request_left_without_its_response_is_marked_and_a_late_response_clears_it(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    lonely = request_event()
    answered = exchange()
    async with winni(replace(settings, unanswered_after=0.3)):
        await publish(producer, settings.kafka.topic, [lonely, *answered])
        marked = await eventually(lambda: _marked(db, lonely["exchange_id"]))
        assert marked["response_event_id"] is None
        complete = await row(db, answered[0]["exchange_id"])
        assert complete is not None and complete["response_event_id"] is not None and complete["unanswered_at"] is None

        late = response_event(request=lonely)
        await publish(producer, settings.kafka.topic, [late])
        cleared = await eventually(lambda: _answered(db, lonely["exchange_id"]))
        assert cleared["unanswered_at"] is None and str(cleared["response_event_id"]) == late["event_id"]


async def _marked(db: asyncpg.Connection, exchange_id: str) -> asyncpg.Record | None:
    found = await row(db, exchange_id)
    return found if found and found["unanswered_at"] is not None else None


async def _answered(db: asyncpg.Connection, exchange_id: str) -> asyncpg.Record | None:
    found = await row(db, exchange_id)
    return found if found and found["response_event_id"] is not None else None


async def test_the_sweep_marks_only_requests_older_than_the_timeout(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    waiting, answered = request_event(), exchange()
    async with winni(settings):  # the default hour: its own sweeps mark nothing here
        await publish(producer, settings.kafka.topic, [waiting, *answered])
        await eventually(lambda: _answered(db, answered[0]["exchange_id"]))
        await eventually(lambda: row(db, waiting["exchange_id"]))
    assert await mark_unanswered(db, 3600) == 0
    assert (await row(db, waiting["exchange_id"]))["unanswered_at"] is None
    await db.execute("UPDATE exchanges SET created_at = now() - interval '2 hours'")
    assert await mark_unanswered(db, 3600) == 1, "only the request-only row, not the complete one"
    assert (await row(db, waiting["exchange_id"]))["unanswered_at"] is not None
    assert await mark_unanswered(db, 3600) == 0, "a row is marked once"
