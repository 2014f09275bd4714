"""A NUL anywhere a client or the upstream can put one loses nothing: PostgreSQL's text and
jsonb refuse it, so winni stores the exchange with the NUL made U+FFFD instead of dead-lettering it
(a client could otherwise hide its own traffic from the tables)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from tests.e2e.conftest import DEADLINE, POLL, Pipeline, PipelineError
from tests.fakes.anthropic import text_stream


async def stored_or_dead(pipeline: Pipeline) -> tuple[list, list]:
    """(complete exchanges, dead letters) as soon as either holds anything."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + DEADLINE
    while loop.time() < give_up:
        rows = await pipeline.complete_exchanges()
        dead = await pipeline.dead_letters() if rows or await _has_tables(pipeline) else []
        if rows or dead:
            return rows, dead
        await asyncio.sleep(POLL)
    raise PipelineError("neither a stored exchange nor a dead letter")


async def _has_tables(pipeline: Pipeline) -> bool:
    return bool(await pipeline.query("SELECT 1 FROM pg_tables WHERE schemaname = 'kgb' AND tablename = 'dead_letters'"))


async def test_nul_in_the_user_id_the_prompt_and_the_answer_is_stored_cleaned(pipeline: Pipeline) -> None:
    pipeline.fake.enqueue(text_stream("an answer\x00with a NUL", deltas=2))
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": True,
        "metadata": {
            "user_id": orjson.dumps({"device_id": "dev\x00ice", "account_uuid": "acc\x00ount", "session_id": "s\x00"}).decode()
        },
        "system": [{"type": "text", "text": "sys\x00tem"}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a prompt\x00with a NUL"}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_\x001", "name": "Ba\x00sh", "input": {"c": "\x00"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_\x001", "content": "out\x00put"}]},
        ],
    }
    headers = {"content-type": "application/json", "x-api-key": "sk-test"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(pipeline.url + "/v1/messages", data=orjson.dumps(body), headers=headers) as response,
    ):
        assert response.status == 200
        await response.read()
    rows, dead = await stored_or_dead(pipeline)
    assert [row["reason"] for row in dead] == []
    (row,) = rows
    assert "\x00" not in row["session_key"]
    (session,) = await pipeline.query("SELECT device_id, account_uuid FROM kgb.sessions")
    assert tuple(session) == ("dev\ufffdice", "acc\ufffdount")
    (tool,) = await pipeline.query("SELECT tool_use_id, name FROM kgb.tool_calls")
    assert tuple(tool) == ("toolu_\ufffd1", "Ba\ufffdsh")
    contents = " ".join(r["content"] for r in await pipeline.query("SELECT content::text AS content FROM kgb.messages"))
    assert "a prompt\ufffdwith a NUL" in contents and "an answer\ufffdwith a NUL" in contents
