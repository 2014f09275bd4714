"""`kgb consume winni` against a real Kafka broker and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import uuid
from dataclasses import replace
from functools import partial
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from consumers.winni.settings import WinniSettings
from tests.consumers.conftest import count, eventually, publish, winni
from tests.consumers.factories import encode, exchange, request_event, response_event, text_message, user_message
from tests.consumers.restarts import (
    RESTARTS,
    all_complete,
    batch_failures,
    built_calmly,
    dump,
    feeding,
    migrated,
    restarts_mid_batch,
    settled,
    task_alive,
)

ROW = "SELECT * FROM exchanges WHERE exchange_id = $1"


async def stored(db: asyncpg.Connection, exchange_id: str) -> dict[str, Any]:
    row = await eventually(lambda: _complete_row(db, exchange_id))
    return dict(row)


async def _complete_row(db: asyncpg.Connection, exchange_id: str) -> asyncpg.Record | None:
    try:
        row = await db.fetchrow(ROW, exchange_id)
    except asyncpg.UndefinedTableError:
        return None
    return row if row and row["request_event_id"] and row["response_event_id"] else None


async def test_request_and_response_become_one_row(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    request, response = exchange(agent_id="agent-7", parent_agent_id="agent-1")
    await publish(producer, settings.kafka.topic, [request, response])
    async with winni(settings):
        row = await stored(db, request["exchange_id"])

    assert await db.fetchval("SELECT count(*) FROM exchanges") == 1
    body = orjson.loads(request["request"]["body"])
    assert (row["method"], row["path"], row["query"], row["status"]) == ("POST", "/v1/messages", "beta=true", 200)
    assert (row["model"], row["stream"]) == ("claude-opus-4-8", True)
    assert (row["session_key"], row["session_source"]) == (request["session_key"], "header")
    assert (row["agent_id"], row["parent_agent_id"]) == ("agent-7", "agent-1")
    assert row["api_key_fingerprint"] == request["api_key_fingerprint"]
    assert row["client"] == request["client"]
    assert str(row["request_event_id"]) == request["event_id"]
    assert str(row["response_event_id"]) == response["event_id"]
    # The messages went to `messages`, system and tools to `request_parts`: the row keeps the rest.
    assert orjson.loads(row["request_body"]) == {k: v for k, v in body.items() if k not in ("messages", "system", "tools")}
    assert row["request_body_text"] is None and row["request_body_bytes"] is None
    assert row["request_messages"] == 1
    parts = {r["hash"]: orjson.loads(r["part"]) for r in await db.fetch("SELECT * FROM request_parts")}
    assert (parts[row["request_system"]], parts[row["request_tools"]]) == (body["system"], body["tools"])
    assert row["request_body_size"] == len(request["request"]["body"])
    assert row["request_body_complete"] is True
    headers = orjson.loads(row["request_headers"])
    assert headers["x-claude-code-session-id"] == request["session_key"]
    assert headers["x-api-key"] == "[REDACTED]"
    assert orjson.loads(row["response_headers"])["request-id"] == "req_011CTest"
    assert row["response_body"] is None
    assert row["response_body_text"] == response["response"]["body"].decode()
    assert row["is_sse"] is True
    assert orjson.loads(row["message"]) == orjson.loads(response["response"]["message"])
    assert orjson.loads(row["usage"]) == orjson.loads(response["response"]["usage"])
    assert (row["input_tokens"], row["output_tokens"]) == (3, 12)
    assert (row["cache_creation_input_tokens"], row["cache_read_input_tokens"]) == (19056, 0)
    assert row["stop_reason"] == "end_turn"
    assert (row["error_type"], row["error_message"], row["error_in_stream"]) == (None, None, False)
    assert (row["ttfb_ms"], row["duration_ms"]) == (412.5, 1893.25)
    assert (row["client_disconnected"], row["upstream_complete"]) == (False, True)
    assert row["request_redactions"] == ["header:x-api-key"] and row["response_redactions"] == []
    assert _micros(row["received_at"]) == request["request"]["received_at"]
    assert _micros(row["started_at"]) == response["response"]["started_at"]
    assert _micros(row["request_occurred_at"]) == request["occurred_at"]


def _micros(at: Any) -> int:
    return round(at.timestamp() * 1_000_000)


async def test_bodies_stay_whole_when_configured_and_parts_are_stored_once(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    whole, whole_reply = exchange(body_kb=75)
    await publish(producer, settings.kafka.topic, [whole, whole_reply])
    async with winni(replace(settings, store_request_bodies=True)):
        row = await stored(db, whole["exchange_id"])
    assert orjson.loads(row["request_body"]) == orjson.loads(whole["request"]["body"])
    assert (row["request_messages"], row["request_system"], row["request_tools"]) == (None, None, None)

    session = str(uuid.uuid4())
    turns = [event for n in range(3) for event in exchange(session_id=session, body_kb=75, messages=[user_message(f"turn {n}")])]
    await publish(producer, settings.kafka.topic, turns)
    async with winni(settings):
        rows = [await stored(db, event["exchange_id"]) for event in turns[::2]]
    assert len({(r["request_system"], r["request_tools"]) for r in rows}) == 1
    assert await db.fetchval("SELECT count(*) FROM request_parts") == 2
    assert all(len(r["request_body"]) < 1024 for r in rows)


async def test_response_before_request_gives_the_same_row(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    in_order, in_order_reply = exchange()
    late, late_reply = exchange()
    await publish(producer, settings.kafka.topic, [in_order, in_order_reply], partition=0)
    await publish(producer, settings.kafka.topic, [late_reply], partition=1)
    async with winni(settings):
        await eventually(lambda: count(db, "exchanges", 2))
        half = dict(await db.fetchrow(ROW, late["exchange_id"]))
        await publish(producer, settings.kafka.topic, [late], partition=2)
        reversed_row = await stored(db, late["exchange_id"])
        forward_row = await stored(db, in_order["exchange_id"])

    assert half["request_event_id"] is None and half["method"] is None
    assert half["status"] == 200 and half["session_key"] == late["session_key"]
    assert _comparable(reversed_row, late, late_reply) == _comparable(forward_row, in_order, in_order_reply)
    assert await db.fetchval("SELECT count(*) FROM exchanges") == 2


def _comparable(row: dict[str, Any], request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The row with what differs between two exchanges by construction taken out."""
    unique = {
        "exchange_id",
        "session_key",
        "request_event_id",
        "response_event_id",
        "created_at",
        "updated_at",
        "request_occurred_at",
        "response_occurred_at",
        "received_at",
        "started_at",
        "request_body",
        "request_headers",
        "request_body_size",
        "message",
        "response_body_text",
        "conversation_id",
        "request_hash",
    }
    return {k: v for k, v in row.items() if k not in unique}


async def test_redelivered_events_change_nothing(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    request, response = exchange()
    await publish(producer, settings.kafka.topic, [request, response], partition=0)
    async with winni(settings):
        first = await stored(db, request["exchange_id"])
        # The same events again (a producer retry, a replay), and an impostor
        # claiming the request half with another event id: the response's, which
        # must not make the response pass for a request either.
        impostor = {**request, "event_id": response["event_id"], "request": {**request["request"], "path": "/v1/other"}}
        await publish(producer, settings.kafka.topic, [response, request, impostor], partition=0)
        # A marker after them in the same session, so the same writer: once it is stored, so are they.
        marker, marker_reply = exchange(session_id=request["session_key"], messages=[user_message("marker")])
        await publish(producer, settings.kafka.topic, [marker, marker_reply], partition=0)
        await stored(db, marker["exchange_id"])
        again = dict(await db.fetchrow(ROW, request["exchange_id"]))

    assert again == first
    assert await db.fetchval("SELECT count(*) FROM exchanges") == 2


async def test_undecodable_messages_are_dead_lettered_and_consumption_goes_on(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    unknown_schema = b"\xc3\x01" + struct.pack("<Q", 0x1234567890ABCDEF) + encode(request_event())[10:]
    missing_half = request_event(request=None)
    not_a_uuid = request_event(exchange_id="exchange-1")
    good, good_reply = exchange()
    await publish(
        producer,
        settings.kafka.topic,
        [b"not avro at all", unknown_schema, missing_half, not_a_uuid, good, good_reply],
        partition=0,
    )
    async with winni(settings):
        await stored(db, good["exchange_id"])
        await eventually(lambda: count(db, "dead_letters", 4))

    letters = await db.fetch("SELECT * FROM dead_letters ORDER BY kafka_offset")
    assert [(r["kafka_partition"], r["kafka_offset"]) for r in letters] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert [r["error_class"] for r in letters] == ["BadFraming", "UnknownSchema", "InvalidEvent", "InvalidEvent"]
    assert "unknown magic" in letters[0]["reason"]
    assert "unknown schema fingerprint efcdab9078563412" in letters[1]["reason"]
    assert "has no request" in letters[2]["reason"]
    assert "'exchange-1' is not a UUID" in letters[3]["reason"]
    assert letters[0]["value"] == b"not avro at all" and letters[0]["key"] == b"garbage"
    assert letters[1]["value"] == unknown_schema
    assert letters[0]["topic"] == settings.kafka.topic
    assert await db.fetchval("SELECT count(*) FROM exchanges") == 1


async def test_dead_letters_are_not_duplicated_on_redelivery(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    good, good_reply = exchange()
    await publish(producer, settings.kafka.topic, [b"\x00\x00\x00", good, good_reply], partition=0)
    async with winni(settings):
        await stored(db, good["exchange_id"])
    # A new group reads the topic from the start again: the same garbage at the same offset.
    async with winni(replace(settings, group=settings.group + "-again")):
        marker, marker_reply = exchange()
        await publish(producer, settings.kafka.topic, [marker, marker_reply], partition=0)
        await stored(db, marker["exchange_id"])
    letters = await db.fetch("SELECT error_class, reason FROM dead_letters")
    assert [r["error_class"] for r in letters] == ["BadFraming"]
    assert "Confluent header cut short" in letters[0]["reason"]


async def test_bodies_jsonb_refuses_are_kept_as_text_or_bytes(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    plain = request_event(body=b"model=claude&prompt=hi", path="/v1/complete")
    nul_escape = request_event(body=b'{"messages":[{"role":"user","content":"a\\u0000b"}]}')
    binary = request_event(body=b"\x1f\x8b\x08\x00\xff\xfe binary")
    json_body = response_event(request=plain, sse=False)
    nul_message = response_event(request=nul_escape, message=text_message("tab\ttab \u0000 nul"))
    await publish(producer, settings.kafka.topic, [plain, nul_escape, binary, json_body, nul_message], partition=0)
    async with winni(settings):
        await eventually(lambda: count(db, "exchanges", 3))
        await stored(db, nul_escape["exchange_id"])
        rows = {r["exchange_id"]: r for r in await db.fetch("SELECT * FROM exchanges")}

    row = rows[_uuid(plain)]
    assert (row["request_body"], row["request_body_text"]) == (None, "model=claude&prompt=hi")
    assert orjson.loads(row["response_body"]) == orjson.loads(json_body["response"]["body"])
    assert row["response_body_text"] is None and row["is_sse"] is False
    row = rows[_uuid(nul_escape)]
    assert (row["request_body"], row["request_body_text"]) == (None, '{"messages":[{"role":"user","content":"a\\u0000b"}]}')
    assert orjson.loads(row["message"])["content"][0]["text"] == "tab\ttab \ufffd nul"
    assert "\\u0000" in row["response_body_text"]
    row = rows[_uuid(binary)]
    assert (row["request_body"], row["request_body_text"]) == (None, None)
    assert row["request_body_bytes"] == b"\x1f\x8b\x08\x00\xff\xfe binary"
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0


def _uuid(event: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(event["exchange_id"])


async def test_error_answers_are_stored_with_their_type(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    overloaded, overloaded_reply = exchange(response={"error": ("overloaded_error", "Overloaded")})
    broken, broken_reply = exchange(response={"error": ("api_error", "Internal server error"), "error_in_stream": True})
    await publish(producer, settings.kafka.topic, [overloaded, overloaded_reply, broken, broken_reply])
    async with winni(settings):
        first = await stored(db, overloaded["exchange_id"])
        second = await stored(db, broken["exchange_id"])

    assert (first["status"], first["error_type"], first["error_message"]) == (529, "overloaded_error", "Overloaded")
    assert orjson.loads(first["response_body"])["error"]["type"] == "overloaded_error"
    assert first["message"] is None and first["usage"] is None and first["input_tokens"] is None
    assert (second["status"], second["error_type"], second["error_in_stream"]) == (200, "api_error", True)
    assert second["upstream_complete"] is False and "event: error" in second["response_body_text"]


def cut_short(request: dict[str, Any]) -> dict[str, Any]:
    """`request` as the worker publishes one whose exchange ended before its body did: what came, flagged."""
    body = request["request"]["body"][:100]
    request["request"].update(body=body, body_size=len(body), body_complete=False)
    return request


async def test_a_request_body_cut_short_lands_flagged_not_whole(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    cut = cut_short(request_event())
    cut_reply = response_event(request=cut, error=("request_too_large", "Request exceeds the maximum size"))
    alone = cut_short(request_event())  # no answer yet: stored by upsert_request, not insert_exchange
    whole, whole_reply = exchange()
    await publish(producer, settings.kafka.topic, [cut, cut_reply, alone, whole, whole_reply])
    async with winni(settings):
        first = await stored(db, cut["exchange_id"])
        await stored(db, whole["exchange_id"])
        await eventually(lambda: count(db, "exchanges", 3))

    flags = dict(await db.fetch("SELECT exchange_id::text, request_body_complete FROM exchanges"))
    assert flags == {cut["exchange_id"]: False, alone["exchange_id"]: False, whole["exchange_id"]: True}
    assert first["request_body_text"] == cut["request"]["body"].decode() and first["status"] == 413


async def test_winni_rides_out_database_restarts_mid_batch(
    postgres: Any, settings: WinniSettings, producer: AIOKafkaProducer, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarts land inside batches of two writers while sessions keep coming; the tables end
    the same, row for row, as a build of the same topic that saw no restart."""
    caplog.set_level(logging.WARNING, logger="consumers")
    caplog.set_level(logging.DEBUG, logger="consumers.source")  # every failed attempt, for batch_failures
    settings = replace(settings, writers=2, batch_size=50)
    async with winni(settings) as task:
        async with feeding(producer, settings.kafka.topic) as sessions:
            await restarts_mid_batch(postgres, settings.database_url, migrated("kgb.exchanges"), alive=task_alive(task))
        await settled(settings.database_url, "kgb", all_complete(sessions), task_alive(task))
    assert len(batch_failures(caplog)) >= RESTARTS // 2, "the restarts landed inside batches"
    calm = partial(_winni_into, replace(settings, group=f"{settings.group}-calm"))
    assert await dump(settings.database_url, "kgb") == await built_calmly(postgres, calm, "kgb", all_complete(sessions))


def _winni_into(settings: WinniSettings, dsn: str) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    return winni(replace(settings, database_url=dsn))
