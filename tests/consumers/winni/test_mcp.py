"""MCP events in the consumers: old versions decoded and stored, the planner's rules, and the tool-use link.

Events are built here as the relays build them (`mcp_message`); the v1 ones
are encoded with the frozen schemas/history/mcp.v1.avsc, as a WebSocket relay
before this version published them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumers import mcp
from consumers.metrics.settings import MetricsSettings
from consumers.metrics.consumer import run as run_metrics
from consumers.metrics.exporter import UsageMetrics
from consumers.winni.mcp import NAMESPACE, plan
from consumers.winni.mcp_links import Call, Use, match
from schemas.codec import Encoder, history, make_decoder, parse, single_object_encoder, single_object_header
from tests.consumers.conftest import FAST_BACKOFF, eventually, publish
from tests.consumers.factories import exchange, now_micros, text_message
from tests.mcp_pipeline import mcp_pipeline

SESSION = "sess-1"
_mcp_encoder = single_object_encoder("mcp")


def mcp_message(
    payload: dict[str, Any] | list[Any] | bytes,
    direction: str = "CLIENT_TO_UPSTREAM",
    *,
    session: str = SESSION,
    connection: str | None = None,
    server: str = "srv",
    at: int | None = None,
    **over: Any,
) -> dict[str, Any]:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    found = mcp.parts_of(raw)[0].jsonrpc if not isinstance(payload, bytes) else None
    return {
        "event_id": str(uuid.uuid4()),
        "connection_id": connection or str(uuid.uuid5(NAMESPACE, session)),
        "upstream": server,
        "upstream_url": None,
        "sequence": 0,
        "occurred_at": at or now_micros(),
        "kind": "MESSAGE",
        "direction": direction,
        "frame_type": None,
        "payload": raw,
        "payload_size": len(raw),
        "jsonrpc": [found] if found else [],
        "transport": "STREAMABLE_HTTP",
        "session_key": session,
        "protocol_version": "2026-07-28",
        **over,
    }


def call(ident: int, name: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": ident, "method": "tools/call", "params": params}


def answer(ident: int, text: str = "ok", is_error: bool = False) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "result": {"content": [{"type": "text", "text": text}], "isError": is_error}}


def v1_frame(payload: bytes, direction: str = "CLIENT_TO_UPSTREAM") -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "connection_id": str(uuid.uuid4()),
        "upstream": "dewey",
        "upstream_url": "ws://127.0.0.1:9020",
        "sequence": 1,
        "occurred_at": now_micros(),
        "kind": "FRAME",
        "direction": direction,
        "frame_type": "TEXT",
        "payload": payload,
        "payload_size": len(payload),
        "jsonrpc": [],
        "handshake": None,
        "close_code": None,
        "close_reason": None,
        "error_type": None,
        "error_message": None,
        "redactions": [],
    }


# --- old versions ---------------------------------------------------------------------


@pytest.mark.parametrize("version", range(len(history("mcp"))))
def test_events_of_every_mcp_version_decode(version: int) -> None:
    schema = history("mcp")[version]
    old = Encoder(parse(schema), single_object_header(schema))
    frame = v1_frame(orjson.dumps(call(1, "echo", {"text": "hi"})))
    decoded = make_decoder(None, "mcp").decode_local(old.encode(frame))
    assert decoded["kind"] == "FRAME" and decoded["payload"] == frame["payload"]
    assert decoded["session_key"] is None and decoded["transport"] is None, "fields added since take their defaults"
    (message,) = mcp.messages_of(decoded)
    assert (message.session_key, message.method, message.direction) == (frame["connection_id"], "tools/call", "client_to_server")


def test_a_version_1_batch_frame_is_split_as_the_relays_now_split_one() -> None:
    batch = orjson.dumps([call(1, "a", {}), {"jsonrpc": "2.0", "method": "notifications/initialized"}, "junk"])
    messages = mcp.messages_of(v1_frame(batch))
    assert [(m.part, m.kind, m.flag) for m in messages] == [
        (0, "request", None),
        (1, "notification", None),
        (2, None, "not_jsonrpc"),
    ]
    assert (
        mcp.messages_of(v1_frame(b"\x00\x01 binary", "UPSTREAM_TO_CLIENT") | {"frame_type": "BINARY"})[0].flag == "binary_frame"
    )


async def test_version_1_websocket_events_are_stored_like_new_ones(kafka, database: str, tmp_path: Path, producer) -> None:
    v1 = history("mcp")[0]
    old = Encoder(parse(v1), single_object_header(v1))
    request = v1_frame(orjson.dumps(call(1, "echo", {"text": "hi"})))
    reply = v1_frame(orjson.dumps(answer(1, "echo: hi")), "UPSTREAM_TO_CLIENT") | {"connection_id": request["connection_id"]}
    async with mcp_pipeline(kafka.bootstrap, database, tmp_path / "spool", {}) as pipeline:
        for event in (request, reply):
            await producer.send_and_wait(pipeline.mcp_topic, old.encode(event), key=event["connection_id"].encode())
        (row,) = await pipeline.calls(1)
        (session,) = await pipeline.query("SELECT * FROM mcp_sessions")
    assert (row["name"], row["result"]["content"][0]["text"], row["server"]) == ("echo", "echo: hi", "dewey")
    assert (session["transport"], session["session_key"], session["message_count"]) == ("websocket", request["connection_id"], 2)


# --- the planner ---------------------------------------------------------------------------


def test_answers_join_their_calls_and_notifications_by_token_or_id() -> None:
    http = str(uuid.uuid4())
    events = [
        mcp_message(call(1, "slow", {}, progressToken="p1"), connection=http),
        mcp_message(call(1, "fast", {}), connection=str(uuid.uuid4())),  # a stateless session's clients reuse ids
        mcp_message(
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "p1", "progress": 1}},
            "UPSTREAM_TO_CLIENT",
            connection=http,
        ),
        mcp_message(answer(1, "slow done"), "UPSTREAM_TO_CLIENT", connection=http),
        mcp_message({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}),
    ]
    writes = plan(events, {}, [], set())
    slow, fast = writes.calls
    assert [m.position for m in writes.messages] == [0, 1, 2, 3, 4]
    (done,) = writes.answers
    assert done.call_id == slow.call_id, "same id twice: the one asked on the same HTTP request"
    notes = writes.notes
    assert [n["method"] for n in notes[slow.call_id][0]] == ["notifications/progress"]
    assert notes[fast.call_id][1] is True, "the cancellation names the call still open"
    assert [m.call_id for m in writes.messages] == [slow.call_id, fast.call_id, slow.call_id, slow.call_id, fast.call_id]


def test_a_redelivered_event_adds_nothing_and_positions_continue() -> None:
    first = mcp_message(call(1, "a", {}))
    stored = {(first["event_id"], 0)}
    writes = plan([first, mcp_message(call(2, "b", {}))], {SESSION: 1}, [], stored)
    assert [(m.position, m.method) for m in writes.messages] == [(1, "tools/call")]
    assert writes.sessions[SESSION].message_count == 2


# --- the link ------------------------------------------------------------------------------

T0 = datetime(2026, 11, 25, 12, tzinfo=UTC)


def use(tool_use_id: str, at: float, result: float | None = None, arguments: str = '{"q": 1}') -> Use:
    return Use(
        tool_use_id,
        "mcp__srv__find",
        arguments,
        T0 + timedelta(seconds=at),
        None if result is None else T0 + timedelta(seconds=result),
    )


def made(call_id: int, at: float, arguments: str = '{"q": 1}') -> Call:
    return Call(uuid.UUID(int=call_id), "mcp__srv__find", arguments, T0 + timedelta(seconds=at))


def test_a_call_serves_the_latest_use_it_could_serve() -> None:
    uses = [use("toolu_a", 0, result=2), use("toolu_b", 10)]
    assert match(uses, [made(2, 11)]) == [(uuid.UUID(int=2), "toolu_b")], "the later identical use, not the answered one"
    assert match(uses, [made(1, 1), made(2, 11)]) == [(uuid.UUID(int=1), "toolu_a"), (uuid.UUID(int=2), "toolu_b")]
    assert match(uses, [made(3, 11, '{"q": 2}')]) == [], "other arguments"
    assert match([use("toolu_c", 100)], [made(4, 5)]) == [], "a call long before the use"


def tool_use_exchange(tool_use_id: str, name: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    message = text_message() | {
        "stop_reason": "tool_use",
        "content": [{"type": "tool_use", "id": tool_use_id, "name": name, "input": arguments}],
    }
    return exchange(response={"message": message, "sse": False})


@pytest.mark.parametrize("mcp_first", [True, False], ids=["call first", "tool use first"])
async def test_a_tool_use_is_linked_to_its_call_whichever_arrives_first(
    kafka,
    database: str,
    tmp_path: Path,
    producer,
    mcp_first: bool,
) -> None:
    request, response = tool_use_exchange("toolu_01Link", "mcp__srv__find", {"q": "kgb"})
    at = response["occurred_at"] + 50_000
    calls = [mcp_message(call(9, "find", {"q": "kgb"}), at=at), mcp_message(answer(9), "UPSTREAM_TO_CLIENT", at=at + 9000)]
    async with mcp_pipeline(kafka.bootstrap, database, tmp_path / "spool", {}) as pipeline:
        steps = [(pipeline.mcp_topic, calls), (pipeline.topic, [request, response])]
        for topic, events in steps if mcp_first else steps[::-1]:
            await publish_any(producer, topic, events)
            await asyncio.sleep(1.0)
        (row,) = await pipeline.wait_for(
            "SELECT t.tool_use_id, c.name, c.tool_use_id AS served FROM tool_calls t JOIN mcp_calls c ON c.call_id = t.mcp_call_id",
            bool,
        )
    assert (row["tool_use_id"], row["name"], row["served"]) == ("toolu_01Link", "find", "toolu_01Link")
    linked, transcript, per_tool = [
        await pipeline.query(sql, arg) for sql, arg in readme_queries(request, datetime.fromtimestamp(at / 1e6, UTC).date())
    ]
    assert [(r["name"], r["arguments"], r["is_error"]) for r in linked] == [("mcp__srv__find", {"q": "kgb"}, False)]
    assert [(r["direction"], r["kind"], r["method"]) for r in transcript] == [
        ("client_to_server", "request", "tools/call"),
        ("server_to_client", "response", None),
    ]
    assert [(r["server"], r["name"], r["calls"], r["errors"]) for r in per_tool] == [("srv", "find", 1, 0)]


def readme_queries(request: dict[str, Any], day: date) -> list[tuple[str, object]]:
    """The SQL blocks of the README's MCP section, its psql variables as parameters (the conversation of
    ``request``, `SESSION`), and ``current_date`` the calls' ``day``, so a run across midnight agrees."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme.split("## MCP tool traffic", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.DOTALL)
    conversation = "(SELECT conversation_id FROM exchanges WHERE exchange_id = $1::uuid)"
    return [
        (blocks[0].replace(":'conversation'", conversation), request["exchange_id"]),
        (blocks[1].replace(":'session'", "$1::text"), SESSION),
        (blocks[2].replace("current_date", "$1::date"), day),
    ]


async def publish_any(producer: Any, topic: str, events: list[dict[str, Any]]) -> None:
    for event in events:
        if mcp.is_mcp(event):
            await producer.send_and_wait(topic, _mcp_encoder.encode(event), key=event["session_key"].encode())
        else:
            await publish(producer, topic, [event])


async def test_metrics_count_each_call_once(kafka, database: str, tmp_path: Path, producer) -> None:
    events = [
        mcp_message(call(1, "find", {})),
        mcp_message(answer(1, is_error=True), "UPSTREAM_TO_CLIENT"),
        mcp_message(call(2, "find", {})),
        mcp_message({"jsonrpc": "2.0", "id": 2, "error": {"code": -32602, "message": "bad"}}, "UPSTREAM_TO_CLIENT"),
    ]
    async with mcp_pipeline(kafka.bootstrap, database, tmp_path / "spool", {}) as pipeline:
        await publish_any(producer, pipeline.mcp_topic, events + events)  # every event twice: a redelivery
        metrics = UsageMetrics()
        settings = MetricsSettings.from_env(
            {
                **pipeline.env,
                "KGB_DATABASE_URL": database,
                "KGB_METRICS_PORT": "0",
                "KGB_METRICS_GROUP": f"m-{uuid.uuid4().hex[:8]}",
            }
        )
        stop = asyncio.Event()
        task = asyncio.create_task(run_metrics(dataclasses.replace(settings, backoff=FAST_BACKOFF), stop, metrics))
        try:
            await eventually(
                lambda: asyncio.sleep(0, metrics.registry.get_sample_value("kgb_mcp_calls_total", labels(metrics)) == 2)
            )
            errors = {
                code: metrics.registry.get_sample_value("kgb_mcp_errors_total", {**labels(metrics), "error_type": code})
                for code in ("tool_error", "-32602")
            }
            (daily,) = await pipeline.query("SELECT calls, errors FROM kgb_metrics.mcp_usage_daily")
        finally:
            stop.set()
            await task
    assert errors == {"tool_error": 1.0, "-32602": 1.0}
    assert (daily["calls"], daily["errors"]) == (2, 2)


def labels(metrics: UsageMetrics) -> dict[str, str]:
    return {
        "mcp_method_name": "tools/call",
        "gen_ai_tool_name": "find",
        "mcp_protocol_version": "2026-07-28",
        "network_transport": "tcp",
        "kgb_mcp_server": "srv",
    }
