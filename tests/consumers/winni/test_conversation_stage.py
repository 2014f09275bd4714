"""Conversation tables built by `kgb consume winni` from realistic sessions on a real topic."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import orjson
from aiokafka import AIOKafkaProducer

from consumers.winni.settings import WinniSettings
from consumers.winni.thread_rules import normal_content
from tests.consumers.conftest import count, eventually, publish, winni
from tests.consumers.sessions import (
    CONTINUATION,
    STUB_TEXT,
    SessionBuilder,
    long_session,
    reply,
    sample_events,
    text,
    tool_result,
)

CONVERSATIONS = """
SELECT c.ordinal, c.kind, c.agent_id, count(m.position) AS messages
FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
WHERE c.session_key = $1 GROUP BY c.id ORDER BY c.ordinal
"""
MESSAGES = """
SELECT m.position, m.role, m.source, m.partial, m.content, m.exchange_id::text
FROM messages m JOIN conversations c ON c.id = m.conversation_id
WHERE c.session_key = $1 AND c.kind = $2 ORDER BY m.position
"""


async def settled(db: asyncpg.Connection, events: list[dict[str, Any]]) -> None:
    """Wait until every exchange is stored with both halves, and its messages indexed for search."""
    exchanges = len({e["exchange_id"] for e in events})

    async def done() -> bool:
        try:
            return (
                await db.fetchval(
                    "SELECT count(*) FROM exchanges WHERE request_event_id IS NOT NULL AND response_event_id IS NOT NULL"
                )
                == exchanges
            )
        except asyncpg.UndefinedTableError:
            return False

    await eventually(done)
    await eventually(lambda: count(db, "indexed", 1))


async def snapshot(db: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every conversation table, row for row, in a stable order, each row with its session key."""
    return {name: [tuple(r) for r in await db.fetch(sql)] for name, sql in SNAPSHOT.items()}


SNAPSHOT = {
    "sessions": "SELECT * FROM sessions ORDER BY 1",
    "conversations": "SELECT * FROM conversations ORDER BY 1",
    "messages": "SELECT c.session_key, m.* FROM messages m JOIN conversations c ON c.id = m.conversation_id ORDER BY 2, 3",
    "tool_calls": "SELECT c.session_key, t.* FROM tool_calls t JOIN conversations c ON c.id = t.conversation_id ORDER BY 2, 3",
    "exchanges": "SELECT session_key, exchange_id, conversation_id, reply_position, retry_of, request_hash FROM exchanges ORDER BY 2",
}


async def stored_across_a_restart(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection, events: list[dict[str, Any]], cut: int
) -> None:
    """``events`` before ``cut`` stored by one winni, the rest by a new one that reads its state back from the tables."""
    await publish(producer, settings.kafka.topic, events[:cut], partition=0)
    async with winni(settings):
        await settled(db, events[:cut])
    await publish(producer, settings.kafka.topic, events[cut:], partition=0)
    async with winni(settings):
        await settled(db, events)


def roles(rows: list[asyncpg.Record]) -> list[tuple[str, str]]:
    return [(r["role"], r["source"]) for r in rows]


async def test_the_samples_become_their_conversations(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    events = sample_events()
    await publish(producer, settings.kafka.topic, events)
    async with winni(settings):
        await settled(db, events)

    interactive = "b6b030ed-8b02-4e1a-875c-3bb826d4ff3a"
    assert [tuple(r) for r in await db.fetch(CONVERSATIONS, interactive)] == [
        (0, "title", None, 2),
        (1, "main", None, 13),
        (2, "title", None, 2),
        (3, "count_tokens", None, 1),
        (4, "count_tokens", None, 1),
    ]
    main = await db.fetch(MESSAGES, interactive, "main")
    assert [r["position"] for r in main] == list(range(13))
    assert roles(main) == [
        ("user", "request"),
        ("system", "request"),
        ("assistant", "response"),
        ("user", "request"),
        ("assistant", "response"),
        ("user", "request"),
        ("assistant", "response"),
        ("user", "request"),
        ("assistant", "response"),
        ("user", "request"),
        ("assistant", "request"),
        ("user", "request"),
        ("assistant", "response"),
    ]
    # "now another one about mountains" came as a string, then as a block with cache_control: one row.
    assert orjson.loads(main[3]["content"]) == [{"type": "text", "text": "now another one about mountains"}]
    assert orjson.loads(main[12]["content"]) == [{"type": "text", "text": STUB_TEXT}]

    # 030 and 031 failed with 529; 032 repeats 030 and brings the reply.
    retries = await db.fetch(
        "SELECT exchange_id::text, retry_of::text, reply_position, status FROM exchanges "
        "WHERE session_key = $1 AND reply_position = 12 ORDER BY received_at",
        interactive,
    )
    first = retries[0]["exchange_id"]
    assert [(r["retry_of"], r["status"]) for r in retries] == [(None, 529), (first, 529), (first, 200)]
    assert main[12]["exchange_id"] == retries[2]["exchange_id"]

    tool = await db.fetchrow(
        "SELECT * FROM tool_calls t JOIN conversations c ON c.id = t.conversation_id WHERE c.session_key = $1", interactive
    )
    assert (tool["name"], tool["use_position"], tool["result_position"], tool["is_error"]) == ("Bash", 6, 7, False)
    assert orjson.loads(tool["result"]) == [{"type": "text", "text": "hello-from-tool"}]

    session = await db.fetchrow("SELECT * FROM sessions WHERE session_key = $1", interactive)
    assert (session["client"], session["client_version"], session["source"]) == ("claude-cli", "2.1.197", "header")
    assert session["device_id"] == "e04daec3c9cd1396e01348e6e533dac03027d7e6ec36446c0f9e7a87ac6c3243"
    assert session["title"] == STUB_TEXT  # the stand-in answered titles in plain text

    # 055 was an empty stream; 056, its non-streaming fallback without `stream`, is its retry.
    fallback = await db.fetch(MESSAGES, "f910a848-8baa-4c5e-9588-8e80f7795a9f", "main")
    assert len(fallback) == 17 and roles(fallback)[-1] == ("assistant", "response")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM exchanges WHERE session_key = 'f910a848-8baa-4c5e-9588-8e80f7795a9f' AND retry_of IS NOT NULL"
        )
        == 1
    )
    # Thinking keeps its signature.
    assert orjson.loads(fallback[4]["content"])[0]["signature"].startswith("c3R1Yi1zaWduYXR1cmU")

    # `claude -p -c`: the same session continued by a new process extends the same conversation.
    continued = await db.fetch(MESSAGES, "f07a70d5-1791-4efe-9144-38f7f527e83b", "main")
    assert roles(continued) == [
        ("user", "request"),
        ("system", "request"),
        ("assistant", "response"),
        ("user", "request"),
        ("assistant", "response"),
        ("user", "request"),
        ("assistant", "response"),
    ]
    # 062's stream broke with an error event; 063 repeats it and answers.
    assert roles(await db.fetch(MESSAGES, "324dd466-3076-43c0-bd81-1ef6b35c9c15", "main"))[-1] == ("assistant", "response")

    assert await db.fetchval("SELECT count(*) FROM conversations") == 10
    assert await db.fetchval("SELECT count(*) FROM messages") == 52
    assert await db.fetchval("SELECT count(*) FROM tool_calls") == 3
    assert await db.fetchval("SELECT count(*) FROM tool_calls WHERE result IS NULL") == 0
    assert await db.fetchval("SELECT count(*) FROM exchanges WHERE path = '/' AND conversation_id IS NULL") == 5


async def test_a_long_session_stores_each_message_once(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    session = long_session(200)
    await publish(producer, settings.kafka.topic, session.events)
    async with winni(settings):
        await settled(db, session.events)

    rows = await db.fetch(CONVERSATIONS, session.session_id)
    assert len(rows) == session.conversations
    assert sorted(r["messages"] for r in rows) == sorted(session.positions.values())
    assert await db.fetchval("SELECT count(*) FROM messages") == session.messages
    # Growth: linear in the turns. The main thread's 200 turns are 400 messages, the
    # side requests and sub-agents a bounded number each, the compaction one copy.
    turns = 200
    assert session.messages < 6 * turns
    requests = sum(1 for e in session.events if e["kind"] == "REQUEST")
    resent = sum(len(orjson.loads(e["request"]["body"])["messages"]) for e in session.events if e["kind"] == "REQUEST")
    assert resent > 25 * session.messages > 25 * requests  # what storing every request's history would cost
    # Bytes too: each exchange keeps a bounded rest of its body, system prompts and tools are stored once.
    assert await db.fetchval("SELECT count(*) FROM exchanges WHERE request_messages IS NULL") == 0
    assert await db.fetchval("SELECT max(octet_length(request_body::text)) FROM exchanges") < 1024
    assert await db.fetchval("SELECT count(*) FROM request_parts") == 4  # system, tools, the title's system, and [] (no tools)

    assert await db.fetchval("SELECT count(*) FROM tool_calls") == session.tool_calls
    assert await db.fetchval("SELECT count(*) FROM tool_calls WHERE result IS NULL") == 0
    assert await db.fetchval("SELECT count(*) FROM messages WHERE partial") == 7  # turns 7, 37, ... 187
    assert await db.fetchval("SELECT count(*) FROM exchanges WHERE retry_of IS NOT NULL") == 2 * 10
    assert await db.fetchval("SELECT title FROM sessions") == "Title at turn 160"

    kinds = dict(await db.fetch("SELECT kind, count(*) FROM conversations GROUP BY kind"))
    assert kinds == {"main": 2, "subagent": 16, "title": 5, "count_tokens": 5, "compaction": 1}
    _compaction, old_main, new_main = await db.fetchrow(
        "SELECT c.id, c.summarises_conversation_id, n.id FROM conversations c "
        "JOIN conversations n ON n.summarises_conversation_id = c.summarises_conversation_id AND n.kind = 'main' "
        "WHERE c.kind = 'compaction'"
    )
    assert await db.fetchval("SELECT id FROM conversations WHERE kind = 'main' ORDER BY ordinal LIMIT 1") == old_main
    assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", new_main) > 100

    # Each nested sub-agent hangs under its sub-agent, each sub-agent under a main conversation.
    tree = await db.fetch(
        "SELECT c.agent_id, p.kind AS parent_kind, p.agent_id AS parent_agent FROM conversations c "
        "JOIN conversations p ON p.id = c.parent_conversation_id WHERE c.kind = 'subagent' ORDER BY c.ordinal"
    )
    assert len(tree) == 16
    assert all((r["parent_kind"], r["parent_agent"]) == ("main", None) for r in tree if r["agent_id"].startswith("a"))
    assert all(r["parent_agent"] == "a" + r["agent_id"][1:] for r in tree if r["agent_id"].startswith("b"))
    # ... and is linked to the Agent call its parent made, whose prompt its first message holds.
    calls = await db.fetch(
        "SELECT c.agent_id, c.spawned_by_tool_use_id, t.name, t.input->>'prompt' AS prompt, m.content FROM conversations c "
        "JOIN tool_calls t ON t.conversation_id = c.parent_conversation_id AND t.tool_use_id = c.spawned_by_tool_use_id "
        "JOIN messages m ON m.conversation_id = c.id AND m.position = 0 WHERE c.kind = 'subagent'"
    )
    assert {r["agent_id"]: r["spawned_by_tool_use_id"] for r in calls} == session.spawns and len(calls) == 16
    assert all(r["name"] == "Agent" and orjson.loads(r["content"])[-1]["text"] == r["prompt"] for r in calls)


async def test_redelivery_and_a_restart_change_nothing(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    """Half the session, a restart (state read back from the tables), the rest, then all of it again."""
    session = long_session(60)
    half = len(session.events) // 4 * 2  # whole exchanges: a request and its response
    await stored_across_a_restart(settings, producer, db, session.events, half)
    once = await snapshot(db)
    assert len(once["messages"]) == session.messages
    assert sorted(r[-1] for r in once["conversations"] if r[-1]) == sorted(session.spawns.values())  # spawned_by_tool_use_id

    # A marker after the copies on the same partition: once it is stored, so are they.
    marker = SessionBuilder()
    marker.turn("main", text("marker"), answer=reply(text("ok")))
    await publish(producer, settings.kafka.topic, [*session.events, *marker.events], partition=0)
    async with winni(settings):
        await settled(db, [*session.events, *marker.events])
    again = await snapshot(db)
    assert {t: [r for r in rows if marker.session_id not in str(r)] for t, rows in again.items()} == once


async def test_sub_agents_find_their_agent_calls_after_a_restart(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    """Parallel calls, two with the same prompt, then a restart (the state read back from the
    tables) before the sub-agents start: each call is claimed once, in order; a fourth finds none."""
    s = SessionBuilder()
    calls = s.spawn("main", {"a1": "Run the tests.", "a2": "Run the tests.", "a3": "Read the docs."})
    cut = len(s.events)
    s.start("a3", "Read the docs.", reply(text("Read.")))
    s.start("a1", "Run the tests.", reply(text("Ran.")))
    s.start("a2", "Run the tests.", reply(text("Ran again.")))
    s.start("a4", "Run the tests.", reply(text("No call left for me.")))
    await stored_across_a_restart(settings, producer, db, s.events, cut)
    rows = await db.fetch("SELECT agent_id, spawned_by_tool_use_id FROM conversations WHERE kind = 'subagent'")
    assert {r["agent_id"]: r["spawned_by_tool_use_id"] for r in rows} == {**calls, "a4": None}


@pytest.mark.parametrize(
    ("prompt", "continuation", "side"),
    [
        ("CRITICAL: Respond with TEXT ONLY. Do NOT call any tools. Then write it all up.", "Earlier, in short: ", True),
        ("Please write a summary of our conversation so far.", "Earlier, in short: ", True),
        ("Boil everything above down to a page.", CONTINUATION, False),
    ],
    ids=["text-only-opener", "summary-request", "continuation"],
)
async def test_each_compaction_marker_alone_links_the_thread_across_a_restart(
    settings: WinniSettings,
    producer: AIOKafkaProducer,
    db: asyncpg.Connection,
    prompt: str,
    continuation: str,
    side: bool,
) -> None:
    """A restart between the compaction and the request after it: the link comes from the tables."""
    s = SessionBuilder()
    for n in range(3):
        s.turn("main", text(f"Question {n}"), answer=reply(text(f"Answer {n}.")))
    cut = len(s.events) + 2  # the summary request and its answer
    s.compact(prompt=prompt, continuation=continuation, side=side)
    s.turn("main", text("Go on."), answer=reply(text("Going on.")))
    await stored_across_a_restart(settings, producer, db, s.events, cut)

    rows = await db.fetch("SELECT id, kind, summarises_conversation_id, branch_of FROM conversations ORDER BY ordinal")
    before, *compaction, after = rows
    assert [r["kind"] for r in rows] == ["main", *(["compaction"] if side else []), "main"]
    assert (after["summarises_conversation_id"], after["branch_of"]) == (before["id"], None)
    assert all(r["summarises_conversation_id"] == before["id"] for r in compaction)
    assert sorted(r["messages"] for r in await db.fetch(CONVERSATIONS, s.session_id)) == sorted(s.positions.values())


async def test_a_web_search_is_a_conversation_of_its_own_with_its_server_tool_call(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    """The main thread calls WebSearch; Claude Code sends the side request, the API runs the search."""
    s = SessionBuilder()
    query = "what is new in Python 3.14"
    web_call = {"type": "tool_use", "id": "toolu_web", "name": "WebSearch", "input": {"query": query}}
    s.turn("main", text("What is new in Python 3.14?"), answer=reply(web_call, stop_reason="tool_use"))
    results = [
        {
            "type": "web_search_result",
            "url": "https://docs.python.org/3.14/whatsnew/3.14.html",
            "title": "What's new in Python 3.14",
            "encrypted_content": "RW5jcnlwdGVk",
            "page_age": "October 7, 2025",
        }
    ]
    answer = s.web_search(query, results)
    s.turn("main", tool_result("toolu_web", "Python 3.14: template strings, ..."), answer=reply(text("Template strings.")))
    await publish(producer, settings.kafka.topic, s.events)
    async with winni(settings):
        await settled(db, s.events)

    assert [tuple(r) for r in await db.fetch(CONVERSATIONS, s.session_id)] == [(0, "main", None, 4), (1, "web_search", None, 2)]
    search = await db.fetch(MESSAGES, s.session_id, "web_search")
    assert roles(search) == [("user", "request"), ("assistant", "response")]
    assert orjson.loads(search[0]["content"]) == [{"type": "text", "text": f"Perform a web search for the query: {query}"}]
    assert orjson.loads(search[1]["content"]) == answer["content"]  # server blocks and citations as the API sent them
    request = s.events[2]
    assert search[0]["exchange_id"] == search[1]["exchange_id"] == request["exchange_id"]

    calls = await db.fetch(
        "SELECT c.kind, t.tool_use_id, t.name, t.input, t.use_position, t.use_exchange_id::text, t.result, t.is_error, "
        "t.result_position, t.result_exchange_id::text FROM tool_calls t JOIN conversations c ON c.id = t.conversation_id "
        "ORDER BY c.ordinal"
    )
    (server_use,) = answer["content"][:1]
    assert [(r["kind"], r["tool_use_id"], r["name"], orjson.loads(r["input"])) for r in calls] == [
        ("main", "toolu_web", "WebSearch", {"query": query}),
        ("web_search", server_use["id"], "web_search", {"query": query}),
    ]
    # the server tool's use and its result sit in the same reply
    web = calls[1]
    assert (web["use_position"], web["result_position"], web["is_error"]) == (1, 1, False)
    assert web["use_exchange_id"] == web["result_exchange_id"] == request["exchange_id"]
    assert orjson.loads(web["result"]) == results
    assert (calls[0]["use_position"], calls[0]["result_position"]) == (1, 2)
    link = await db.fetchrow("SELECT reply_position, retry_of FROM exchanges WHERE exchange_id = $1", request["exchange_id"])
    assert tuple(link) == (1, None)


async def test_a_reply_before_its_request_still_lands(
    settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    s = SessionBuilder()
    s.turn("main", text("hello"), answer=reply(text("hi")))
    request, response = s.events
    await publish(producer, settings.kafka.topic, [response], partition=0)
    async with winni(settings):
        await eventually(lambda: count(db, "exchanges", 1))
    await publish(producer, settings.kafka.topic, [request], partition=0)
    async with winni(settings):
        await settled(db, s.events)
        rows = await eventually(lambda: _main_messages(db, s.session_id, 2))
    assert roles(rows) == [("user", "request"), ("assistant", "response")]


async def _main_messages(db: asyncpg.Connection, session: str, n: int) -> list[asyncpg.Record] | None:
    rows = await db.fetch(MESSAGES, session, "main")
    return rows if len(rows) == n else None


def readme_queries() -> list[str]:
    """The SQL blocks of the README's conversations section, psql variables as parameters."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme.split("## Conversations in winni", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.DOTALL)
    return [
        b.replace(":'conversation'", "$1::uuid").replace(":'exchange'", "$1::uuid").replace(":'session'", "$1::text")
        for b in blocks
    ]


async def test_the_readme_queries_answer(settings: WinniSettings, producer: AIOKafkaProducer, db: asyncpg.Connection) -> None:
    s = SessionBuilder()
    s.title("fix the build", "Fix the build")
    s.tool_turn("main", "make", "ok")
    call = s.spawn("main", {"agent-1": "Look around the repository."})["agent-1"]
    s.start("agent-1", "Look around the repository.", reply(text("done")))
    s.turn("main", tool_result(call, "done"), answer=reply(text("The sub-agent looked around.")))
    await publish(producer, settings.kafka.topic, s.events)
    async with winni(settings):
        await settled(db, s.events)
    latest, messages, tree, rebuild, tokens = readme_queries()

    assert [r["kind"] for r in await db.fetch(latest)] == ["subagent", "main", "title"]
    main = await db.fetchval("SELECT id FROM conversations WHERE kind = 'main'")
    rows = await db.fetch(messages, main)
    assert [(r["position"], r["tool"], r["is_error"]) for r in rows] == [
        (0, None, None),
        (1, "Bash", False),
        (2, None, None),
        (3, None, None),
        (4, None, None),
        (5, "Agent", False),
        (6, None, None),
        (7, None, None),
    ]
    threads = [(r["thread"], r["tool"], r["description"], r["prompt"]) for r in await db.fetch(tree, s.session_id)]
    assert threads == [
        ("main", None, None, None),
        ("  subagent agent-1", "Agent", "Do a sub-task", "Look around the repository."),
    ]
    last = next(e for e in reversed(s.events) if e["kind"] == "REQUEST" and e["agent_id"] is None)
    sent, rebuilt = orjson.loads(last["request"]["body"]), orjson.loads(await db.fetchval(rebuild, last["exchange_id"]))
    assert {k: v for k, v in rebuilt.items() if k != "messages"} == {k: v for k, v in sent.items() if k != "messages"}
    assert rebuilt["messages"] == [{"role": m["role"], "content": normal_content(m["content"])} for m in sent["messages"]]
    (usage,) = await db.fetch(tokens)
    assert (usage["title"], usage["requests"], usage["output"]) == ("Fix the build", 6, 6 * 12)
