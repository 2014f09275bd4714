"""Chats as applications hold them with the `anthropic` SDK, through the proxy, into every consumer's tables.

Each chat resends its whole history every turn (or, with the SDK's tool runner,
lets the server hold it), as real applications do: with or without tools,
streamed or not, with thinking, moving cache markers, images and documents,
an edited or regenerated turn, several chats on one key. For each, the
conversation tables must hold exactly one conversation per chat (and one per
branch), each message once at its position, each reply as the response
brought it, in rows that grow with the turns; Dewey must get each
conversation once; metrics count each exchange once, as a ``main`` model call.

Winni, Dewey's consumer and metrics all read the one topic the proxy writes,
as in production; the fake Anthropic upstream answers what each test scripts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import asyncpg
import pytest
from anthropic import beta_async_tool

from consumers import kinds
from consumers.dewey.settings import DeweySettings
from consumers.dewey.consumer import run as run_dewey
from consumers.dewey.settings import JitteredBackoff
from consumers.metrics.settings import MetricsSettings
from consumers.metrics.consumer import run as run_metrics
from consumers.replay.rebuild import replay
from consumers.winni.thread_rules import normal_content
from common.config import KafkaSettings
from tests import services
from tests.e2e.conftest import (
    DEADLINE,
    POLL,
    Pipeline,
    PipelineError,
    proxy_settings,
    running,
    running_proxy,
    running_winni,
    winni_settings,
)
from tests.fakes.anthropic import FakeAnthropic, Reply, Usage, json_message, text_stream, thinking_stream, tool_use_stream
from tests.fakes.dewey import FakeDewey

MODEL = "claude-opus-4-8"
KEY = "sk-ant-api03-" + "SDKchats" * 10 + "-e2eAA"
USAGE = Usage()  # what the fake reports for every reply: 25 input and 12 output tokens


@dataclasses.dataclass
class Stack:
    """The pipeline with winni, Dewey's consumer (against a fake Dewey) and metrics all consuming its topic."""

    pipeline: Pipeline
    dewey: FakeDewey
    clients: list[anthropic.AsyncAnthropic] = dataclasses.field(default_factory=list)

    @property
    def url(self) -> str:
        return self.pipeline.url

    def sdk(self, **options: Any) -> anthropic.AsyncAnthropic:
        """A client of the proxy, closed when the test ends; no retries, so each scripted reply answers one call."""
        self.clients.append(anthropic.AsyncAnthropic(base_url=self.url, api_key=KEY, max_retries=0, **options))
        return self.clients[-1]

    def enqueue(self, *replies: Reply) -> None:
        self.pipeline.fake.enqueue(*replies)

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.pipeline.query(sql, *args)


@pytest.fixture
async def stack(kafka: services.KafkaBroker, topic: str, database: str, tmp_path: Path) -> AsyncIterator[Stack]:
    winni = dataclasses.replace(winni_settings(kafka.bootstrap, topic, database), store_request_bodies=False)
    source = KafkaSettings(bootstrap=kafka.bootstrap, topic=topic)
    async with FakeAnthropic() as fake, FakeDewey() as dewey:
        dewey_settings = DeweySettings(
            kafka=source,
            database_url=database,
            group=f"dewey-e2e-{uuid.uuid4().hex[:8]}",
            url=dewey.url,
            batch_size=50,
            timeout=10.0,
            backoff=JitteredBackoff(initial=0.05, maximum=0.5),
        )
        metrics_settings = MetricsSettings(
            kafka=source,
            database_url=database,
            group=f"metrics-e2e-{uuid.uuid4().hex[:8]}",
            port=services.free_port(),
        )
        async with (
            running_winni(winni) as task,
            running(run_dewey, dewey_settings, "dewey"),
            running(run_metrics, metrics_settings, "metrics"),
            running_proxy(proxy_settings(fake.url, kafka.bootstrap, topic, tmp_path / "spool")) as url,
        ):
            built = Stack(Pipeline(url, fake, kafka.bootstrap, topic, database, task, tmp_path / "spool"), dewey)
            try:
                yield built
            finally:
                for client in built.clients:
                    await client.close()


# --- driving the SDK as an application does ----------------------------------------------------


async def ask(sdk: anthropic.AsyncAnthropic, stream: bool, **params: Any) -> Any:
    """One model call: streamed with `messages.stream` (the SDK's helper), else `messages.create`."""
    if not stream:
        return await sdk.messages.create(model=MODEL, max_tokens=4096, **params)
    async with sdk.messages.stream(model=MODEL, max_tokens=4096, **params) as events:
        return await events.get_final_message()


def answer(text: str, stream: bool, **options: Any) -> Reply:
    return text_stream(text, deltas=3, **options) if stream else json_message(text, **options)


@dataclasses.dataclass
class Chat:
    """An application's chat: it keeps the history, and resends it whole with the SDK's own reply objects."""

    sdk: anthropic.AsyncAnthropic
    stream: bool = False
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    async def say(self, content: Any) -> Any:
        self.history.append({"role": "user", "content": content})
        reply = await ask(self.sdk, self.stream, messages=list(self.history), **self.params)
        self.history.append({"role": "assistant", "content": reply.content})
        return reply


# --- what the tables must hold -----------------------------------------------------------------

CONVERSATIONS = """
SELECT c.id, c.ordinal, c.kind, c.branch_of, c.branch_position, c.summarises_conversation_id, c.session_key,
       (SELECT count(*) FROM kgb.messages m WHERE m.conversation_id = c.id) AS messages
FROM kgb.conversations c ORDER BY c.session_key, c.ordinal
"""
MESSAGES = """
SELECT position, role, source, partial, content::text AS content, exchange_id::text AS exchange_id
FROM kgb.messages WHERE conversation_id = $1 ORDER BY position
"""
REPLIES = """
SELECT exchange_id::text AS exchange_id, reply_position, message::text AS message
FROM kgb.exchanges WHERE conversation_id = $1 AND retry_of IS NULL
"""
COUNTS = """
SELECT (SELECT count(*) FROM kgb.exchanges) AS exchanges, (SELECT count(*) FROM kgb.conversations) AS conversations,
       (SELECT count(*) FROM kgb.messages) AS messages, (SELECT count(*) FROM kgb.tool_calls) AS tool_calls
"""


async def settled(stack: Stack, exchanges: int) -> list[asyncpg.Record]:
    """Every exchange stored whole by winni, sent on by Dewey's consumer, counted by metrics; the conversations."""
    await stack.pipeline.wait_for_exchanges(exchanges)
    await until(stack, "Dewey's consumer to send every message", lambda: _dewey_caught_up(stack))
    await until(stack, "metrics to count every exchange", lambda: _metrics_caught_up(stack, exchanges))
    return await stack.query(CONVERSATIONS)


async def until(stack: Stack, what: str, check: Any) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + DEADLINE
    while loop.time() < give_up:
        with contextlib.suppress(asyncpg.UndefinedTableError):
            if await check():
                return
        await asyncio.sleep(POLL)
    raise PipelineError(f"gave up waiting for {what} after {DEADLINE:.0f}s")


async def _dewey_caught_up(stack: Stack) -> bool:
    held = sum(len(c.messages) for c in stack.dewey.conversations.values())
    (row,) = await stack.query("SELECT count(*) AS n FROM kgb.messages")
    return held >= row["n"] > 0


async def _metrics_caught_up(stack: Stack, exchanges: int) -> bool:
    (row,) = await stack.query("SELECT count(*) AS n FROM kgb_metrics.usage_exchanges WHERE has_request AND has_response")
    return row["n"] >= exchanges


def sent_messages(stack: Stack) -> list[list[dict[str, Any]]]:
    """The `messages` of every model call, as the upstream received them, oldest first."""
    return [r.json()["messages"] for r in stack.pipeline.fake.requests if r.path == "/v1/messages"]


async def assert_holds(stack: Stack, conversation: uuid.UUID, history: list[dict[str, Any]], answered: set[int]) -> None:
    """The conversation holds ``history`` (what its last request sent), then the reply to it, each position once.

    The positions in ``answered`` are replies, from the response of the exchange placed there (the
    reassembled message, thinking signatures and all); the others are as the client sent them
    (the user's, and in a branch the replies it copied from its first request).
    """
    rows = await stack.query(MESSAGES, conversation)
    replies = {r["reply_position"]: r for r in await stack.query(REPLIES, conversation)}
    assert [r["position"] for r in rows] == list(range(len(history) + 1)), "each position once, none missing"
    assert answered | {len(history)} <= set(replies), "every reply stored has its exchange"
    for row in rows:
        position = row["position"]
        if position in answered or position == len(history):
            reply = replies[position]
            assert (row["role"], row["source"], row["partial"], row["exchange_id"]) == (
                "assistant",
                "response",
                False,
                reply["exchange_id"],
            )
            assert json.loads(row["content"]) == json.loads(reply["message"])["content"]
        else:
            sent = history[position]
            assert (row["role"], row["source"]) == (sent["role"], "request")
            assert json.loads(row["content"]) == normal_content(sent["content"])


async def assert_counts(stack: Stack, **expected: int) -> None:
    (row,) = await stack.query(COUNTS)
    assert {name: row[name] for name in expected} == expected


async def assert_in_dewey_once(stack: Stack) -> None:
    """Dewey's consumer threads as winni does, and Dewey got each conversation once, each position once."""
    kgb = {(r["id"], r["messages"]) for r in await stack.query(CONVERSATIONS)}
    copy = await stack.query(
        "SELECT c.id, (SELECT count(*) FROM kgb_dewey.messages m WHERE m.conversation_id = c.id) AS messages FROM kgb_dewey.conversations c"
    )
    assert {(r["id"], r["messages"]) for r in copy} == kgb
    found = stack.dewey.by_kgb_id()
    assert sorted(found) == sorted(str(conversation) for conversation, _ in kgb), "one Dewey conversation per KGB conversation"
    for conversation, messages in kgb:
        (held,) = found[str(conversation)]
        assert held.turns == list(range(messages))


async def assert_metrics(stack: Stack, exchanges: int, kinds_: dict[str, int] | None = None) -> None:
    """Every exchange counted once, by the kind winni threads it as; tokens as the upstream reported them."""
    by_kind = {
        r["kind"]: r["n"] for r in await stack.query("SELECT kind, count(*) AS n FROM kgb_metrics.usage_exchanges GROUP BY kind")
    }
    assert by_kind == (kinds_ or {"main": exchanges})
    (totals,) = await stack.query(
        "SELECT sum(requests) AS requests, sum(input_tokens) AS input, sum(output_tokens) AS output FROM kgb_metrics.usage_daily"
    )
    assert (totals["requests"], totals["input"], totals["output"]) == (
        exchanges,
        exchanges * USAGE.input_tokens,
        exchanges * USAGE.output_tokens,
    )


def single(conversations: list[asyncpg.Record]) -> asyncpg.Record:
    (conversation,) = conversations
    assert (conversation["kind"], conversation["branch_of"], conversation["summarises_conversation_id"]) == ("main", None, None)
    return conversation


def replies_at(turns: int) -> set[int]:
    return {2 * n + 1 for n in range(turns)}


# --- the chats ---------------------------------------------------------------------------------

TURNS = 6


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_chat_without_tools_is_one_conversation(stack: Stack, stream: bool) -> None:
    stack.enqueue(*(answer(f"Answer {n}: {'streamed' if stream else 'whole'}.", stream) for n in range(TURNS)))
    chat = Chat(stack.sdk(), stream=stream, params={"system": "You are terse."})
    for n in range(TURNS):
        reply = await chat.say(f"Question {n}?")
        assert reply.content[0].text == f"Answer {n}: {'streamed' if stream else 'whole'}."

    conversation = single(await settled(stack, TURNS))
    assert conversation["messages"] == 2 * TURNS
    await assert_holds(stack, conversation["id"], sent_messages(stack)[-1], replies_at(TURNS - 1))
    await assert_counts(stack, exchanges=TURNS, conversations=1, messages=2 * TURNS, tool_calls=0)
    # each request body is kept without its messages (positions 0 to request_messages - 1), the system once
    bodies = await stack.query(
        "SELECT request_messages, request_body ? 'messages' AS whole, request_system FROM kgb.exchanges ORDER BY received_at"
    )
    assert [(b["request_messages"], b["whole"]) for b in bodies] == [(2 * n + 1, False) for n in range(TURNS)]
    assert len({b["request_system"] for b in bodies}) == 1 and len(await stack.query("SELECT 1 FROM kgb.request_parts")) == 1
    await assert_in_dewey_once(stack)
    await assert_metrics(stack, TURNS)


@beta_async_tool
async def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: The city's name.
    """
    return f"Sunny in {city}, 21 degrees."


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_a_chat_running_its_own_tools_is_one_conversation(stack: Stack) -> None:
    cities = ["Oslo", "Lima", "Kyoto"]
    for n, city in enumerate(cities):
        stack.enqueue(
            tool_use_stream("get_weather", {"city": city}, tool_id=f"toolu_01Weather{n:016d}"), text_stream(f"{city}: sunny.")
        )
    chat = Chat(stack.sdk(), stream=True, params={"tools": [WEATHER_TOOL]})
    for city in cities:
        reply = await chat.say(f"Weather in {city}?")
        use = next(block for block in reply.content if block.type == "tool_use")
        result = {"type": "tool_result", "tool_use_id": use.id, "content": f"Sunny in {city}"}
        await chat.say([result])

    conversation = single(await settled(stack, 2 * len(cities)))
    await assert_holds(stack, conversation["id"], sent_messages(stack)[-1], replies_at(2 * len(cities) - 1))
    calls = await stack.query(
        "SELECT tool_use_id, name, input, use_position, result_position, is_error FROM kgb.tool_calls ORDER BY use_position"
    )
    assert [(c["name"], json.loads(c["input"]), c["use_position"], c["result_position"], c["is_error"]) for c in calls] == [
        ("get_weather", {"city": city}, 4 * n + 1, 4 * n + 2, False) for n, city in enumerate(cities)
    ]
    await assert_counts(stack, exchanges=6, conversations=1, messages=12, tool_calls=3)
    await assert_in_dewey_once(stack)
    await assert_metrics(stack, 6)


async def test_the_sdk_tool_runner_is_one_conversation_though_the_server_holds_its_history(stack: Stack) -> None:
    """The tool runner sends only each turn's new messages (message threads: ``thread.previous_message_id``)."""
    stack.enqueue(
        tool_use_stream("get_weather", {"city": "Oslo"}, tool_id="toolu_01RunnerOslo00000000000"),
        tool_use_stream("get_weather", {"city": "Lima"}, tool_id="toolu_01RunnerLima00000000000"),
        text_stream("Oslo and Lima are sunny."),
    )
    runner = stack.sdk().beta.messages.tool_runner(
        model=MODEL,
        max_tokens=1024,
        tools=[get_weather],
        stream=True,
        messages=[{"role": "user", "content": "Weather in Oslo, then Lima?"}],
    )
    async for _ in runner:
        pass
    sent = sent_messages(stack)
    assert [len(messages) for messages in sent] == [1, 1, 1], "the runner sends only what is new"
    assert [r.json().get("thread", {}).get("type") for r in stack.pipeline.fake.requests] == ["create", "continue", "continue"]

    conversation = single(await settled(stack, 3))
    rows = await stack.query(MESSAGES, conversation["id"])
    assert [(r["position"], r["role"], r["source"]) for r in rows] == [
        (0, "user", "request"),
        (1, "assistant", "response"),
        (2, "user", "request"),
        (3, "assistant", "response"),
        (4, "user", "request"),
        (5, "assistant", "response"),
    ]
    assert [json.loads(rows[p]["content"]) for p in (0, 2, 4)] == [normal_content(m[0]["content"]) for m in sent]
    placed = await stack.query(
        "SELECT reply_position, request_messages, request_body ? 'messages' AS whole FROM kgb.exchanges ORDER BY received_at"
    )
    # the first request's messages are positions 0..0 and leave its body; the others follow a held history and keep theirs
    assert [(p["reply_position"], p["request_messages"], p["whole"]) for p in placed] == [
        (1, 1, False),
        (3, None, True),
        (5, None, True),
    ]
    calls = await stack.query("SELECT name, use_position, result_position FROM kgb.tool_calls ORDER BY use_position")
    assert [tuple(c) for c in calls] == [("get_weather", 1, 2), ("get_weather", 3, 4)]
    await assert_in_dewey_once(stack)
    await assert_metrics(stack, 3)


async def test_a_chat_with_extended_thinking_keeps_each_signed_block_once(stack: Stack) -> None:
    for n in range(3):
        stack.enqueue(
            thinking_stream(
                f"Thought {n}: answer briefly.", f"Answer {n}.", signature=f"EqQBCkgIBxABGAIiQ{n:08d}", redacted=n == 1
            )
        )
    chat = Chat(stack.sdk(), stream=True, params={"thinking": {"type": "enabled", "budget_tokens": 2048}})
    for n in range(3):
        await chat.say(f"Question {n}?")
    history = sent_messages(stack)[-1]
    assert history[1]["content"][0] == {
        "type": "thinking",
        "thinking": "Thought 0: answer briefly.",
        "signature": "EqQBCkgIBxABGAIiQ00000000",
    }

    conversation = single(await settled(stack, 3))
    await assert_holds(stack, conversation["id"], history, replies_at(2))
    rows = await stack.query(MESSAGES, conversation["id"])
    assert [b["type"] for b in json.loads(rows[3]["content"])] == ["thinking", "redacted_thinking", "text"]
    assert json.loads(rows[5]["content"])[0]["signature"] == "EqQBCkgIBxABGAIiQ00000002"
    await assert_counts(stack, exchanges=3, conversations=1, messages=6)
    await assert_in_dewey_once(stack)
    await assert_metrics(stack, 3)


def marked(content: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content, "cache_control": {"type": "ephemeral"}}]


async def test_cache_markers_moving_from_turn_to_turn_change_no_message(stack: Stack) -> None:
    """As the prompt-caching guide has it: the system cached, and the marker on the newest user turn only."""
    stack.enqueue(*(json_message(f"Answer {n}.") for n in range(4)))
    sdk, history = stack.sdk(), []
    system = [{"type": "text", "text": "You answer questions about Kafka.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    for n in range(4):
        for message in history:
            if message["role"] == "user":
                message["content"] = [{"type": "text", "text": message["content"][0]["text"]}]
        history.append({"role": "user", "content": marked(f"Question {n}?")})
        reply = await ask(sdk, False, system=system, messages=list(history))
        history.append({"role": "assistant", "content": reply.content})
    sent = sent_messages(stack)
    assert "cache_control" in sent[0][0]["content"][0] and "cache_control" in sent[1][2]["content"][0]
    assert "cache_control" not in sent[1][0]["content"][0], "the marker moved on"

    conversation = single(await settled(stack, 4))
    await assert_holds(stack, conversation["id"], sent[-1], replies_at(3))
    rows = await stack.query(MESSAGES, conversation["id"])
    assert json.loads(rows[0]["content"]) == [{"type": "text", "text": "Question 0?"}]
    await assert_counts(stack, exchanges=4, conversations=1, messages=8)
    await assert_in_dewey_once(stack)
    await assert_metrics(stack, 4)


PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360f8cf"
        "c0f01f0005000201e22c0b7d0000000049454e44ae426082"
    )
).decode()
PDF = base64.b64encode(
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
).decode()


async def test_images_and_documents_in_the_history_are_stored_once(stack: Stack) -> None:
    stack.enqueue(*(answer(f"Answer {n}.", stream=True) for n in range(3)))
    chat = Chat(stack.sdk(), stream=True)
    await chat.say(
        [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}, "title": "spec.pdf"},
            {"type": "text", "text": "What do these show?"},
        ]
    )
    await chat.say("And the second page?")
    await chat.say(
        [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/chart.png"}},
            {"type": "text", "text": "This one?"},
        ]
    )

    conversation = single(await settled(stack, 3))
    await assert_holds(stack, conversation["id"], sent_messages(stack)[-1], replies_at(2))
    holding = await stack.query("SELECT position FROM kgb.messages WHERE content::text LIKE '%' || $1 || '%'", PNG[:40])
    assert [r["position"] for r in holding] == [0], "the image is stored once, however often it is resent"
    await assert_counts(stack, exchanges=3, conversations=1, messages=6)
    await assert_in_dewey_once(stack)
    texts = [m["content"] for c in stack.dewey.conversations.values() for m in c.messages]
    assert "[image image/png]" in texts[0] and "[document application/pdf]" in texts[0]
    await assert_metrics(stack, 3)


async def test_an_edited_turn_and_a_regenerated_answer_are_branches(stack: Stack) -> None:
    stack.enqueue(
        *(
            json_message(text)
            for text in (
                "Kafka is a log.",
                "Partitions order it.",
                "Use KRaft.",  # the chat
                "Consumers read it in order.",  # turn 2 asked otherwise
                "Kafka keeps a log of records.",  # the first answer asked for again
            )
        )
    )
    chat = Chat(stack.sdk())
    for question in ("What is Kafka?", "How is it ordered?", "And ZooKeeper?"):
        await chat.say(question)
    edited = Chat(chat.sdk, history=chat.history[:2])
    await edited.say("Who reads it?")
    regenerated = Chat(chat.sdk, history=[])
    await regenerated.say("What is Kafka?")

    main, edit, again = await settled(stack, 5)
    sent = sent_messages(stack)
    assert (main["kind"], main["branch_of"], main["messages"]) == ("main", None, 6)
    assert (edit["kind"], edit["branch_of"], edit["branch_position"], edit["messages"]) == ("main", main["id"], 2, 4)
    assert (again["kind"], again["branch_of"], again["branch_position"], again["messages"]) == ("main", main["id"], 1, 2)
    await assert_holds(stack, main["id"], sent[2], replies_at(2))
    await assert_holds(stack, edit["id"], sent[3], set())  # copied whole from its request: it reads on its own
    await assert_holds(stack, again["id"], sent[4], set())
    await assert_counts(stack, exchanges=5, conversations=3, messages=12)
    (retries,) = await stack.query("SELECT count(retry_of) AS n FROM kgb.exchanges")
    assert retries["n"] == 0, "asking again after an answer is no retry"
    await assert_in_dewey_once(stack)
    await assert_metrics(stack, 5)


async def test_a_turn_continuing_an_earlier_reply_of_a_held_history_is_a_branch_copied_whole(stack: Stack) -> None:
    """A client of the message threads beta may continue from any reply the server holds, not only the latest."""
    stack.enqueue(json_message("Oslo is sunny."), json_message("Lima is cloudy."), json_message("Kyoto is rainy."))
    beta = stack.sdk().beta.messages
    first = await beta.create(
        model=MODEL, max_tokens=256, thread={"type": "create"}, messages=[{"role": "user", "content": "Weather in Oslo?"}]
    )
    await beta.create(
        model=MODEL,
        max_tokens=256,
        thread={"type": "continue", "previous_message_id": first.id},
        messages=[{"role": "user", "content": "And Lima?"}],
    )
    await beta.create(
        model=MODEL,
        max_tokens=256,
        thread={"type": "continue", "previous_message_id": first.id},
        messages=[{"role": "user", "content": "And Kyoto?"}],
    )

    main, branch = await settled(stack, 3)
    assert (main["messages"], branch["branch_of"], branch["branch_position"], branch["messages"]) == (4, main["id"], 2, 4)
    held = await stack.query(MESSAGES, main["id"])
    copied = await stack.query(MESSAGES, branch["id"])
    assert [tuple(r) for r in copied[:2]] == [tuple(r) for r in held[:2]], "the held history, copied as it is stored"
    assert [json.loads(r["content"])[0]["text"] for r in copied] == [
        "Weather in Oslo?",
        "Oslo is sunny.",
        "And Kyoto?",
        "Kyoto is rainy.",
    ]
    await assert_in_dewey_once(stack)
    await assert_metrics(stack, 3)


@pytest.mark.parametrize("opening", ["different", "alike"])
async def test_interleaved_chats_on_one_key_are_threaded_each_on_its_own(stack: Stack, opening: str) -> None:
    """One program, one key, no session named: one session, one conversation per chat, turns interleaved.
    Chats that open with the same words and get different answers are told apart by those answers."""
    names = ("ada", "bob", "cy")
    for turn in range(3):
        stack.enqueue(*(json_message(f"{name} answer {turn}") for name in names))
    sdk = stack.sdk()
    chats = {name: Chat(sdk) for name in names}
    for turn in range(3):
        for name, chat in chats.items():
            await chat.say("Hello!" if turn == 0 and opening == "alike" else f"{name} question {turn}")

    conversations = await settled(stack, 9)
    assert len(conversations) == 3 and len({c["session_key"] for c in conversations}) == 1
    sent = sent_messages(stack)
    for number, conversation in enumerate(conversations):
        assert conversation["messages"] == 6
        await assert_holds(stack, conversation["id"], sent[6 + number], replies_at(2))
        rows = await stack.query(MESSAGES, conversation["id"])
        assert [json.loads(r["content"])[0]["text"] for r in rows if r["role"] == "assistant"] == [
            f"{names[number]} answer {turn}" for turn in range(3)
        ]
    firsts = [c["branch_of"] for c in conversations]
    # opening alike, the later chats answer the first one's question again: branches of it
    assert firsts == ([None] * 3 if opening == "different" else [None, conversations[0]["id"], conversations[0]["id"]])
    await assert_counts(stack, exchanges=9, conversations=3, messages=18)
    await assert_in_dewey_once(stack)
    await assert_metrics(stack, 9)


async def test_sessions_a_client_names_keep_its_chats_apart(stack: Stack) -> None:
    """``metadata.user_id`` (the end user) and ``X-KGB-Session`` name sessions within the key."""
    stack.enqueue(*(json_message(f"Answer {n}.") for n in range(6)))
    alice = Chat(stack.sdk(), params={"metadata": {"user_id": "alice"}})
    bob = Chat(stack.sdk(), params={"metadata": {"user_id": "bob"}})
    project = Chat(stack.sdk(default_headers={"X-KGB-Session": "release-4.1"}))
    for chat in (alice, bob, project, alice, bob, project):
        await chat.say("Hello!")

    conversations = await settled(stack, 6)
    sessions = await stack.query("SELECT session_key, source FROM kgb.sessions ORDER BY session_key")
    scope = (await stack.query("SELECT DISTINCT 'key:' || left(api_key_fingerprint, 16) AS scope FROM kgb.exchanges"))[0]["scope"]
    assert [tuple(s) for s in sessions] == [
        (f"{scope}:session:release-4.1", "kgb_header"),
        (f"{scope}:user:alice", "metadata_user"),
        (f"{scope}:user:bob", "metadata_user"),
    ]
    assert Counter(c["session_key"] for c in conversations) == {s["session_key"]: 1 for s in sessions}
    assert all(c["messages"] == 4 and c["branch_of"] is None for c in conversations)
    await assert_in_dewey_once(stack)
    await assert_metrics(stack, 6)


async def test_a_replay_rebuilds_tables_an_older_winni_built_under_the_new_rules(
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tables built while a chat without tools was its own conversation per turn (an older winni's
    rule) come back, after `kgb replay`, as what winni builds today."""
    from consumers.winni import thread_rules

    def older(path: str, body: Any, agent_id: str | None) -> str:
        kind = kinds.kind_of(path, body, agent_id)
        return "count_tokens" if kind == "main" and not body.get("tools") else kind  # a conversation of its own

    monkeypatch.setattr(thread_rules, "kind_of", older)
    stack.enqueue(*(json_message(f"Answer {n}.") for n in range(4)))
    chat = Chat(stack.sdk())
    for n in range(4):
        await chat.say(f"Question {n}?")
    before = await settled(stack, 4)
    assert [c["messages"] for c in before] == [2, 4, 6, 8], "the old rule: every turn its own conversation, O(turns²)"

    monkeypatch.undo()
    settings = dataclasses.replace(
        winni_settings(stack.pipeline.bootstrap, stack.pipeline.topic, stack.pipeline.database), store_request_bodies=False
    )
    outcome = await replay(settings, stream=io.StringIO())
    assert (outcome.schema, outcome.complete) == ("kgb", True)
    conversation = single(await stack.query(CONVERSATIONS))
    await assert_holds(stack, conversation["id"], sent_messages(stack)[-1], replies_at(3))
    await assert_counts(stack, exchanges=4, conversations=1, messages=8)
