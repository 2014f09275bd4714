"""The newer parts of a reply in winni: usage fields and block types as columns of `exchanges`, and the
server and MCP tool blocks in `tool_calls` (real Kafka and PostgreSQL for the columns; the thread rules pure)."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from consumers.winni.settings import WinniSettings
from consumers.winni.thread_rules import Reply, SessionState, Writes, apply_reply, apply_request
from tests.consumers.conftest import eventually, publish, winni
from tests.consumers.factories import request_event, response_event, text_message
from tests.consumers.winni.test_thread_rules import AT, request, user

# Every block type of the current API (the anthropic SDK's BetaContentBlock) that is not a plain text or tool_use.
REPLY = [
    {"type": "thinking", "thinking": "", "signature": "sig"},
    {"type": "server_tool_use", "id": "srvtoolu_fetch", "name": "web_fetch", "input": {"url": "https://example.test"}},
    {
        "type": "web_fetch_tool_result",
        "tool_use_id": "srvtoolu_fetch",
        "content": {"type": "web_fetch_tool_result_error", "error_code": "url_not_accessible"},
    },
    {"type": "server_tool_use", "id": "srvtoolu_code", "name": "bash_code_execution", "input": {"command": "ls"}},
    {
        "type": "bash_code_execution_tool_result",
        "tool_use_id": "srvtoolu_code",
        "content": {"type": "bash_code_execution_result", "stdout": "a\n", "stderr": "", "return_code": 0},
    },
    {"type": "server_tool_use", "id": "srvtoolu_edit", "name": "text_editor_code_execution", "input": {}},
    {
        "type": "text_editor_code_execution_tool_result",
        "tool_use_id": "srvtoolu_edit",
        "content": {"type": "text_editor_code_execution_tool_result_error", "error_code": "file_not_found"},
    },
    {"type": "server_tool_use", "id": "srvtoolu_find", "name": "tool_search_tool_regex", "input": {"query": "x"}},
    {
        "type": "tool_search_tool_result",
        "tool_use_id": "srvtoolu_find",
        "content": {"type": "tool_search_tool_search_result", "tool_references": []},
    },
    {"type": "server_tool_use", "id": "srvtoolu_advice", "name": "advisor", "input": {}},
    {"type": "advisor_tool_result", "tool_use_id": "srvtoolu_advice", "content": {"type": "advisor_result", "text": "ok"}},
    {"type": "mcp_tool_use", "id": "mcptoolu_ok", "name": "lookup", "server_name": "dewey", "input": {"q": "kgb"}},
    {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_ok", "is_error": False, "content": [{"type": "text", "text": "found"}]},
    {"type": "mcp_tool_use", "id": "mcptoolu_bad", "name": "lookup", "server_name": "dewey", "input": {}},
    {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_bad", "is_error": True, "content": "boom"},
    {"type": "container_upload", "file_id": "file_011CkgbUpload"},
    {"type": "compaction", "content": "Summary of what came before", "encrypted_content": None},
    {
        "type": "fallback",
        "from": {"model": "claude-opus-5-5"},
        "to": {"model": "claude-sonnet-5-5"},
        "trigger": {"type": "refusal"},
    },
    {"type": "text", "text": "done"},
]


def test_server_and_mcp_tool_blocks_are_tool_calls_with_their_results() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, request(1, [user("go")]), writes)
    apply_reply(state, Reply("ex-1", "s", {"role": "assistant", "content": REPLY}, False, AT), writes)
    uses = {u.tool_use_id: (u.name, orjson.loads(u.input or "null")) for u in writes.tool_uses}
    assert uses == {
        "srvtoolu_fetch": ("web_fetch", {"url": "https://example.test"}),
        "srvtoolu_code": ("bash_code_execution", {"command": "ls"}),
        "srvtoolu_edit": ("text_editor_code_execution", {}),
        "srvtoolu_find": ("tool_search_tool_regex", {"query": "x"}),
        "srvtoolu_advice": ("advisor", {}),
        "mcptoolu_ok": ("lookup", {"q": "kgb"}),
        "mcptoolu_bad": ("lookup", {}),
    }
    results = {r.tool_use_id: r.is_error for r in writes.tool_results}
    assert results == {
        "srvtoolu_fetch": True,
        "srvtoolu_code": False,
        "srvtoolu_edit": True,
        "srvtoolu_find": False,
        "srvtoolu_advice": False,
        "mcptoolu_ok": False,
        "mcptoolu_bad": True,
    }
    (stored,) = [m for m in writes.messages if m.role == "assistant"]
    assert orjson.loads(stored.content) == REPLY  # container_upload, compaction and fallback kept as the API sent them


ROW = "SELECT * FROM exchanges WHERE exchange_id = $1 AND response_event_id IS NOT NULL"


async def test_the_newer_usage_fields_and_block_types_are_columns(
    settings: WinniSettings,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
) -> None:
    usage = {
        "input_tokens": 12,
        "output_tokens": 900,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "output_tokens_details": {"thinking_tokens": 640},
        "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 1},
        "service_tier": "priority",
        "speed": "fast",
        "inference_geo": "us",
    }
    answers = {
        "compaction": {**text_message(usage=usage), "stop_reason": "compaction", "content": REPLY},
        "model_context_window_exceeded": {
            **text_message(
                usage={
                    "input_tokens": 1,
                    "output_tokens": 0,
                    "speed": 7,
                    "output_tokens_details": {"thinking_tokens": "lots"},
                    "server_tool_use": {"web_fetch_requests": 1e30, "web_search_requests": 2.5},
                }
            ),
            "stop_reason": "model_context_window_exceeded",
        },
    }
    events, ids = [], {}
    for stop_reason, message in answers.items():
        req = request_event()
        events += [req, response_event(request=req, message=message, sse=False)]
        ids[stop_reason] = req["exchange_id"]
    await publish(producer, settings.kafka.topic, events)
    async with winni(settings):
        rows = {k: await eventually(lambda e=e: _row(db, e)) for k, e in ids.items()}

    full = rows["compaction"]
    assert (full["thinking_tokens"], full["web_search_requests"], full["web_fetch_requests"]) == (640, 2, 1)
    assert (full["service_tier"], full["speed"], full["inference_geo"], full["stop_reason"]) == (
        "priority",
        "fast",
        "us",
        "compaction",
    )
    assert orjson.loads(full["content_types"]) == [block["type"] for block in REPLY]
    assert await db.fetchval("SELECT count(*) FROM exchanges WHERE content_types ? 'compaction'") == 1
    odd = rows["model_context_window_exceeded"]
    assert odd["stop_reason"] == "model_context_window_exceeded" and orjson.loads(odd["content_types"]) == ["text"]
    assert (odd["thinking_tokens"], odd["web_fetch_requests"], odd["web_search_requests"], odd["speed"]) == (
        None,
        None,
        None,
        None,
    )
    assert odd["input_tokens"] == 1


async def _row(db: asyncpg.Connection, exchange_id: str) -> dict[str, Any] | None:
    try:
        row = await db.fetchrow(ROW, exchange_id)
    except asyncpg.UndefinedTableError:
        return None
    return dict(row) if row else None


@pytest.mark.parametrize(("usage", "message"), [(None, None), ("not json", "[1, 2"), ("[]", '{"content": "text"}')])
async def test_no_usage_or_an_odd_one_leaves_the_columns_empty(
    usage: str | None,
    message: str | None,
    settings: WinniSettings,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
) -> None:
    req = request_event()
    answer = response_event(request=req, usage=usage)
    answer["response"]["message"] = message  # the factory's `message` is the reply it builds, not this field
    await publish(producer, settings.kafka.topic, [req, answer])
    async with winni(settings):
        row = await eventually(lambda: _row(db, req["exchange_id"]))
    assert (row["thinking_tokens"], row["service_tier"], row["content_types"]) == (None, None, None)
