"""The pure thread rules of `consumers.winni.thread_rules`, request by request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from consumers.winni.bodies import PARTS_REMEMBERED, part_hash, part_hashes
from consumers.winni.conversation_stage import states_from_rows
from consumers.winni.thread_rules import (
    AGENT_TOOLS,
    CANDIDATES,
    CopyRow,
    Reply,
    Request,
    SessionState,
    Writes,
    apply_reply,
    apply_request,
    device_and_account,
    message_hash,
    normal_content,
    title_of,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)


MAIN_TOOLS = [{"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}}]


def request(n: int, messages: list[dict[str, Any]], **body: Any) -> Request:
    """A main-thread request unless `body` says otherwise: the main thread offers client tools."""
    fields = {"model": "claude-opus-4-8", "messages": messages, "stream": True, "tools": MAIN_TOOLS, **body}
    return Request(
        f"ex-{n}", "s", "header", "/v1/messages", None, None, "claude-cli/2.1.197 (external, cli)", "claude-opus-4-8", fields, AT
    )


def user(value: Any) -> dict[str, Any]:
    return {"role": "user", "content": value}


def said(value: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": value}]}


def answer(n: int, value: str, partial: bool = False) -> Reply:
    return Reply(f"ex-{n}", "s", {"role": "assistant", "content": [{"type": "text", "text": value}]}, partial, AT)


def test_a_string_and_a_cached_text_block_are_the_same_message() -> None:
    cached = [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]
    assert normal_content("hi") == normal_content(cached) == [{"type": "text", "text": "hi"}]
    assert message_hash("user", normal_content("hi")) == message_hash("user", normal_content(cached))
    result = {"type": "tool_result", "tool_use_id": "t", "content": "ok", "cache_control": {"type": "ephemeral"}}
    assert normal_content([result]) == [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "ok"}]}]


def test_a_batch_writes_one_session_row_merged_the_way_the_upsert_merges() -> None:
    state, writes = SessionState("s"), Writes()
    first = request(1, [user("a")], metadata={"user_id": '{"device_id": "d1", "account_uuid": "a1"}'})
    later = replace(
        request(2, [user("b")], metadata={"user_id": '{"device_id": "d2"}'}),
        client="claude-cli/2.2.0 (external, cli)",
        at=AT + timedelta(seconds=5),
    )
    earlier = replace(request(3, [user("c")]), client=None, at=AT - timedelta(seconds=5))
    for r in (first, later, earlier):
        apply_request(state, r, writes)
    (row,) = writes.sessions.values()
    assert (row.device_id, row.account_uuid) == ("d1", "a1"), "the first device and account seen stay"
    assert (row.client, row.client_version) == ("claude-cli", "2.2.0"), "the latest client named wins"
    assert (row.first_seen, row.last_seen) == (AT - timedelta(seconds=5), AT + timedelta(seconds=5))


def test_a_failed_server_tool_result_is_an_error_like_a_client_one() -> None:
    state, writes = SessionState("s"), Writes()
    search = {"type": "server_tool_use", "id": "srv-1", "name": "web_search", "input": {"query": "q"}}
    outage = {
        "type": "web_search_tool_result",
        "tool_use_id": "srv-1",
        "content": {"type": "web_search_tool_result_error", "error_code": "unavailable"},
    }
    found = {"type": "web_search_tool_result", "tool_use_id": "srv-2", "content": [{"type": "web_search_result", "url": "u"}]}
    refused = {"type": "tool_result", "tool_use_id": "t-1", "content": "denied", "is_error": True}
    apply_request(
        state, request(1, [user("find it"), {"role": "assistant", "content": [search, outage, found]}, user([refused])]), writes
    )
    assert {(r.tool_use_id, r.is_error) for r in writes.tool_results} == {("srv-1", True), ("srv-2", False), ("t-1", True)}


def test_a_conversation_stores_each_position_once() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, request(1, [user("a")]), writes)
    apply_reply(state, answer(1, "b"), writes)
    apply_request(state, request(2, [user("a"), said("b, as the client kept it"), user("c")]), writes)
    apply_reply(state, answer(2, "d"), writes)
    assert [(m.position, m.role, m.source) for m in writes.messages] == [
        (0, "user", "request"),
        (1, "assistant", "response"),
        (2, "user", "request"),
        (3, "assistant", "response"),
    ]
    assert len(writes.conversations) == 1 and [x.reply_position for x in writes.exchanges] == [1, 3]


def test_a_retry_adds_nothing_and_a_complete_reply_replaces_a_partial_one() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, request(1, [user("a")]), writes)
    apply_reply(state, answer(1, "cut sh", partial=True), writes)
    apply_request(state, request(2, [user("a")], stream=False), writes)
    apply_reply(state, answer(2, "cut short no more"), writes)
    assert [x.retry_of for x in writes.exchanges] == [None, "ex-1"]
    assert [(m.position, m.partial, m.exchange_id) for m in writes.messages] == [
        (0, False, "ex-1"),
        (1, True, "ex-1"),
        (1, False, "ex-2"),
    ]


def test_a_rewound_history_branches_off() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, request(1, [user("a")]), writes)
    apply_reply(state, answer(1, "b"), writes)
    apply_request(state, request(2, [user("a"), said("b"), user("c")]), writes)
    apply_request(state, request(3, [user("a"), said("b"), user("c, said otherwise")]), writes)
    first, branch = writes.conversations.values()
    assert (branch.branch_of, branch.branch_position) == (first.id, 2)
    assert [(m.conversation_id, m.position) for m in writes.messages[-3:]] == [(branch.id, 0), (branch.id, 1), (branch.id, 2)]


def test_device_and_account_from_metadata() -> None:
    modern = {"metadata": {"user_id": '{"device_id":"d1","account_uuid":"","session_id":"s"}'}}
    legacy = {"metadata": {"user_id": "user_abc123_account_1b2c-3d_session_9f0e"}}
    assert device_and_account(modern) == ("d1", None)
    assert device_and_account(legacy) == ("abc123", "1b2c-3d")
    assert device_and_account({"metadata": {"user_id": "{not json"}}) == (None, None)


def test_titles_come_as_structured_output_or_plain_text() -> None:
    assert title_of(said('{"title": " Haiku about the sea "}')) == "Haiku about the sea"
    assert title_of(said("Plain title")) == "Plain title"
    assert title_of(said("")) is None


def test_remembered_hashes_change_no_row() -> None:
    """A warm state skips normalising resent messages; a cold one (read back from the tables) hashes all."""
    history = [user("a"), said("b"), user([{"type": "text", "text": "c", "cache_control": {"type": "ephemeral"}}])]
    requests = [
        request(1, history[:1]),
        request(2, history),
        request(3, [*history, said("d"), user("e")]),
        request(4, history[:1]),
    ]
    warm, cold = (SessionState("s"), Writes()), (SessionState("s"), Writes())
    for r in requests:
        apply_request(warm[0], r, warm[1])
        cold[0].hashes.clear()
        apply_request(cold[0], r, cold[1])
    assert warm[1] == cold[1]
    assert len(warm[0].hashes) == 5  # a, b, c as sent with its marker, d, e


def test_a_retry_is_told_by_its_system_and_tools_too() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, request(1, [user("a")], system="You are terse."), writes)
    apply_request(state, request(2, [user("a")], system="You are terse.", stream=False), writes)
    apply_request(state, request(3, [user("a")], system="You are verbose."), writes)
    apply_request(state, request(4, [user("a")], system="You are terse.", tools=[]), writes)
    apply_request(state, request(5, [user("a")], system="You are terse.", tools=[{**MAIN_TOOLS[0], "name": "Run"}]), writes)
    apply_request(state, request(6, [user("a")], tools=MAIN_TOOLS), writes)
    assert [x.retry_of for x in writes.exchanges] == [None, "ex-1", None, None, None, None]
    assert len({x.request_hash for x in writes.exchanges}) == 5


def test_known_part_hashes_change_no_row() -> None:
    """Hashes handed in by the stage (`Request.parts`) are those the rules make themselves."""
    made = [request(n, [user("a")], system=f"s{n % 2}") for n in range(4)]
    known: dict = {}
    given = [replace(r, parts=part_hashes(r.body, known)) for r in made]
    results = []
    for requests in (given, made):
        state, writes = SessionState("s"), Writes()
        for r in requests:
            apply_request(state, r, writes)
        results.append(writes)
    assert results[0] == results[1]
    assert given[0].parts == {"system": part_hash("s0"), "tools": part_hash(MAIN_TOOLS)}
    assert len(known) == 3  # s0, s1, the tools


def test_remembered_part_hashes_are_the_full_ones_and_bounded() -> None:
    known: dict = {}
    for n in range(PARTS_REMEMBERED * 2):
        body = {"system": [{"type": "text", "text": f"prompt {n}", "cache_control": {"type": "ephemeral"}}], "tools": MAIN_TOOLS}
        assert (
            part_hashes(body, known)
            == part_hashes(body, {})
            == {"system": part_hash(body["system"]), "tools": part_hash(MAIN_TOOLS)}
        )
        assert len(known) <= PARTS_REMEMBERED
    assert part_hashes({"messages": []}, known) == {}
    # the same value with its keys in another order is another entry as sent, and the same part
    reordered = [{k: MAIN_TOOLS[0][k] for k in reversed(MAIN_TOOLS[0])}]
    assert part_hashes({"tools": reordered}, known) == {"tools": part_hash(MAIN_TOOLS)}


def test_sub_agents_sending_the_same_body_are_not_retries_of_each_other() -> None:
    """Claude Code sends a sub-agent's first request without its agent id in the body: two
    given the same prompt are the same body, told apart by the header alone."""
    state, writes = SessionState("s"), Writes()
    for n, agent in enumerate(("a1", "a2", "a1")):
        apply_request(state, replace(request(n, [user("Run the tests.")]), agent_id=agent), writes)
    assert [x.retry_of for x in writes.exchanges] == [None, None, "ex-0"]
    assert [c.agent_id for c in writes.conversations.values()] == ["a1", "a2"]


# --- sub-agents linked to the Agent call that started them -----------------------------------

REMINDER = "<system-reminder>Answer in English.</system-reminder>"


def agent_use(tool_id: str, prompt: str, name: str = "Agent") -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": tool_id,
        "name": name,
        "input": {"description": "Look around", "prompt": prompt, "subagent_type": "general-purpose"},
    }


def at(n: int) -> datetime:
    return AT + timedelta(seconds=n)


def main_turn(n: int, messages: list[dict[str, Any]]) -> Request:
    return replace(request(n, messages), at=at(n))


def delegated(n: int, *blocks: dict[str, Any], partial: bool = False) -> Reply:
    """The reply to request ``n``: Agent calls (or any blocks)."""
    return Reply(f"ex-{n}", "s", {"role": "assistant", "content": list(blocks)}, partial, at(n))


def sub_agent(n: int, agent: str, content: Any) -> Request:
    """A sub-agent's first request; ``content`` of its first user message."""
    return replace(request(n, [user(content)]), agent_id=agent, at=at(n))


def spawned_by(writes: Writes) -> dict[str | None, str | None]:
    """Each conversation's agent id -> the tool_use id it was linked to."""
    return {row.agent_id: row.spawned_by_tool_use_id for row in writes.conversations.values()}


def test_a_sub_agent_is_linked_to_the_agent_call_with_its_prompt() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, main_turn(1, [user("look around")]), writes)
    apply_reply(state, delegated(1, {"type": "text", "text": "Delegating."}, agent_use("toolu_1", "Survey the repo.")), writes)
    first = [
        {"type": "text", "text": REMINDER},
        {"type": "text", "text": "Survey the repo.", "cache_control": {"type": "ephemeral"}},
    ]
    apply_request(state, sub_agent(2, "a1", first), writes)
    assert spawned_by(writes) == {None: None, "a1": "toolu_1"}
    # the same sub-agent's next request extends its conversation and links nothing anew
    apply_request(state, sub_agent(3, "a1", first), writes)
    assert len(writes.conversations) == 2 and state.agent_calls == {}


def test_parallel_sub_agents_each_find_their_call() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, main_turn(1, [user("look around")]), writes)
    apply_reply(
        state, delegated(1, agent_use("toolu_1", "Read the docs."), agent_use("toolu_2", "Read the tests.", name="Task")), writes
    )
    apply_request(state, sub_agent(2, "a2", "Read the tests."), writes)  # a plain string content
    apply_request(state, sub_agent(3, "a1", [{"type": "text", "text": "Read the docs.\n"}]), writes)
    assert spawned_by(writes) == {None: None, "a2": "toolu_2", "a1": "toolu_1"}


def test_a_repeated_prompt_links_each_call_once_first_come_first_served() -> None:
    state, writes = SessionState("s"), Writes()
    history = [user("check")]
    apply_request(state, main_turn(1, history), writes)
    apply_reply(state, delegated(1, agent_use("toolu_1", "Run the tests."), agent_use("toolu_2", "Run the tests.")), writes)
    history += [
        {"role": "assistant", "content": [agent_use("toolu_1", "Run the tests."), agent_use("toolu_2", "Run the tests.")]},
        user(
            [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "ok"},
            ]
        ),
    ]
    apply_request(state, main_turn(2, history), writes)
    apply_reply(state, delegated(2, agent_use("toolu_3", "Run the tests.")), writes)
    for n, agent in enumerate(("a1", "a2", "a3", "a4"), start=3):
        apply_request(state, sub_agent(n, agent, "Run the tests."), writes)
    assert spawned_by(writes) == {None: None, "a1": "toolu_1", "a2": "toolu_2", "a3": "toolu_3", "a4": None}


def test_no_call_no_link() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, main_turn(1, [user("look around")]), writes)
    apply_reply(state, delegated(1, agent_use("toolu_1", "Survey the repo.")), writes)
    apply_request(state, sub_agent(2, "a1", "Something else."), writes)
    # a reply cut short was not run: its call starts nothing
    apply_request(state, main_turn(3, [user("again")]), writes)
    apply_reply(state, delegated(3, agent_use("toolu_2", "Cut short."), partial=True), writes)
    apply_request(state, sub_agent(4, "a2", "Cut short."), writes)
    # a tool named otherwise, or with no prompt, is no Agent call
    apply_request(state, main_turn(5, [user("once more")]), writes)
    apply_reply(
        state,
        delegated(
            5,
            {**agent_use("toolu_3", "Not an agent."), "name": "Bash"},
            {**agent_use("toolu_4", ""), "input": {"description": "no prompt"}},
        ),
        writes,
    )
    apply_request(state, sub_agent(6, "a3", "Not an agent."), writes)
    assert spawned_by(writes) == {None: None, "a1": None, "a2": None, "a3": None}
    assert [r.tool_use_id for r in writes.tool_uses] == ["toolu_1", "toolu_2", "toolu_3", "toolu_4"]


def test_a_copied_call_is_not_offered_again() -> None:
    """A compaction copies the history with its Agent calls: one claimed already stays claimed."""
    state, writes = SessionState("s"), Writes()
    history = [user("look around"), {"role": "assistant", "content": [agent_use("toolu_1", "Survey the repo.")]}]
    apply_request(state, main_turn(1, history[:1]), writes)
    apply_reply(state, delegated(1, *history[1]["content"]), writes)
    apply_request(state, sub_agent(2, "a1", "Survey the repo."), writes)
    summary = "Your task is to create a detailed summary of the conversation so far."
    apply_request(state, main_turn(3, [*history, user(summary)]), writes)
    apply_request(state, sub_agent(4, "a2", "Survey the repo."), writes)
    assert spawned_by(writes) == {None: None, "a1": "toolu_1", "a2": None}
    assert [r.tool_use_id for r in writes.tool_uses] == ["toolu_1", "toolu_1"]  # the call, and the compaction's copy


def test_calls_read_back_from_the_tables_are_claimed_as_the_live_ones() -> None:
    """A restart between an Agent call and its sub-agent: the state rebuilt from rows links the same."""
    history = [
        user("check"),
        {"role": "assistant", "content": [agent_use("toolu_1", "Run the tests."), agent_use("toolu_2", "Lint.")]},
    ]
    before = [
        main_turn(1, history[:1]),
        delegated(1, *history[1]["content"]),
        sub_agent(2, "a0", "Lint."),
        main_turn(3, [*history, user("more")]),
        delegated(3, agent_use("toolu_3", "Run the tests.")),
        main_turn(4, [*history, user("Your task is to create a detailed summary of the conversation so far.")]),
        main_turn(5, [user("and")]),
        delegated(5, agent_use("toolu_4", "Cut short."), partial=True),
    ]
    after = [
        sub_agent(6, "a2", "Run the tests."),
        sub_agent(7, "a1", [{"type": "text", "text": "Run the tests."}]),
        sub_agent(8, "a3", "Cut short."),
        sub_agent(9, "a4", "Lint."),
        sub_agent(10, "a5", "Run the tests."),
    ]
    live, writes = SessionState("s"), Writes()
    for event in before:
        (apply_request if isinstance(event, Request) else apply_reply)(live, event, writes)
    reloaded = states_from_rows(["s"], *rows_of(writes))["s"]
    assert reloaded.agent_calls == live.agent_calls and reloaded.spawned == live.spawned == {"toolu_2"}
    results = []
    for state in (live, reloaded):
        results.append(Writes())
        for event in after:
            apply_request(state, event, results[-1])
    assert results[0] == results[1]
    assert spawned_by(results[0]) == {"a2": "toolu_1", "a1": "toolu_3", "a3": None, "a4": None, "a5": None}


def rows_of(writes: Writes) -> tuple[list[dict[str, Any]], ...]:
    """What the ``load_*`` queries would read back after ``writes``, for the test above only
    (one session, no early replies, replies without ids); the queries themselves run on PostgreSQL in test_conversation_stage."""
    conversations = sorted(writes.conversations.values(), key=lambda c: c.ordinal)
    kinds = {c.id: c.kind for c in conversations}
    messages: dict[tuple[Any, int], Any] = {}
    for m in writes.messages:  # upsert_message: only a partial reply gives way, to a complete one
        old = messages.get((m.conversation_id, m.position))
        if old is None or (old.partial and old.source == m.source == "response" and not m.partial):
            messages[(m.conversation_id, m.position)] = m
    uses = {(u.conversation_id, u.tool_use_id): u for u in reversed(writes.tool_uses)}  # the first use of each stays
    return (
        [
            {
                "session_key": c.session_key,
                "id": c.id,
                "kind": c.kind,
                "agent_id": c.agent_id,
                "summarises_conversation_id": c.summarises_conversation_id,
                "spawned_by_tool_use_id": c.spawned_by_tool_use_id,
                "last_at": c.last_at,
            }
            for c in conversations
        ],
        [
            {
                "conversation_id": m.conversation_id,
                "role": m.role,
                "content_hash": m.content_hash,
                "from_response": m.source == "response",
                "partial": m.partial,
            }
            for m in sorted(messages.values(), key=lambda m: m.position)
        ],
        [
            {
                "session_key": "s",
                "exchange_id": x.exchange_id,
                "conversation_id": x.conversation_id,
                "reply_position": x.reply_position,
                "retry_of": x.retry_of,
                "request_hash": x.request_hash,
                "kind": kinds[x.conversation_id],
                "message_id": None,
            }
            for x in writes.exchanges
        ],  # the replies here have no ids
        [],
        [
            {
                "session_key": "s",
                "conversation_id": u.conversation_id,
                "tool_use_id": u.tool_use_id,
                "prompt": orjson.loads(u.input)["prompt"],
                "used_at": u.used_at,
                "use_position": u.use_position,
            }
            for u in uses.values()
            if u.name in AGENT_TOOLS and _holds(messages[(u.conversation_id, u.use_position)], u.tool_use_id)
        ],
    )


def _holds(message: Any, tool_use_id: str) -> bool:
    return not message.partial and any(b.get("id") == tool_use_id for b in orjson.loads(message.content))


# --- every client's chats: threaded by their messages alone ------------------------------------


def chat(n: int, messages: list[dict[str, Any]], **body: Any) -> Request:
    """A request as the `anthropic` SDK sends one for a chat: no tools, no session of its own."""
    fields = {"model": "claude-opus-4-8", "max_tokens": 1024, "messages": messages, **body}
    return Request(
        f"ex-{n}", "s", "api_key", "/v1/messages", None, None, "AsyncAnthropic/Python 2.15.0", "claude-opus-4-8", fields, at(n)
    )


class Chat:
    """One client chat: each `say` sends the history so far plus the user's words, and answers it."""

    def __init__(self, state: SessionState, writes: Writes, numbers: Any) -> None:
        self.state, self.writes, self.numbers, self.history = state, writes, numbers, []

    def say(self, words: str, answer_text: str, **body: Any) -> Request:
        n = next(self.numbers)
        sent = chat(n, [*self.history, user(words)], **body)
        apply_request(self.state, sent, self.writes)
        apply_reply(self.state, answer(n, answer_text), self.writes)
        self.history += [user(words), said(answer_text)]
        return sent


def chats(count: int) -> tuple[SessionState, Writes, list[Chat]]:
    state, writes, numbers = SessionState("s"), Writes(), iter(range(10_000))
    return state, writes, [Chat(state, writes, numbers) for _ in range(count)]


def threaded(writes: Writes) -> dict[Any, list[tuple[int, str, str]]]:
    """Each conversation's stored rows: (position, role, text), in the order they were written."""
    out: dict[Any, list[tuple[int, str, str]]] = {c: [] for c in writes.conversations}
    for m in writes.messages:
        out[m.conversation_id].append((m.position, m.role, orjson.loads(m.content)[0]["text"]))
    return out


def test_a_chat_without_tools_is_one_conversation_of_each_position_once() -> None:
    _state, writes, (talk,) = chats(1)
    for turn in range(6):
        talk.say(f"question {turn}", f"answer {turn}")
    ((conversation, rows),) = threaded(writes).items()
    assert writes.conversations[conversation].kind == "main"
    assert rows == [(p, ("user", "assistant")[p % 2], f"{('question', 'answer')[p % 2]} {p // 2}") for p in range(12)]
    assert [m.source for m in writes.messages] == ["request", "response"] * 6
    assert [x.reply_position for x in writes.exchanges] == [1, 3, 5, 7, 9, 11]


def test_interleaved_chats_that_open_alike_keep_their_own_turns() -> None:
    """Same first message, same body: the second chat's opening is no retry of the first's (that one
    was answered), and every later turn goes to the chat whose answer it repeats."""
    _state, writes, (a, b) = chats(2)
    a.say("Hi", "Hello from A")
    b.say("Hi", "Hello from B")
    for turn in range(3):
        a.say(f"a{turn}", f"A answers {turn}")
        b.say(f"b{turn}", f"B answers {turn}")
    first, second = writes.conversations.values()
    rows = threaded(writes)
    assert [text for _, _, text in rows[first.id]] == [
        "Hi",
        "Hello from A",
        "a0",
        "A answers 0",
        "a1",
        "A answers 1",
        "a2",
        "A answers 2",
    ]
    assert [text for _, _, text in rows[second.id]] == [
        "Hi",
        "Hello from B",
        "b0",
        "B answers 0",
        "b1",
        "B answers 1",
        "b2",
        "B answers 2",
    ]
    assert [p for p, _, _ in rows[second.id]] == list(range(8))
    assert (second.branch_of, second.branch_position) == (first.id, 1)  # it answered A's first question again
    assert [x.retry_of for x in writes.exchanges] == [None] * 8


def test_more_chats_than_candidates_each_find_their_own() -> None:
    _state, writes, talks = chats(CANDIDATES + 8)
    for turn in range(3):
        for number, talk in enumerate(talks):
            talk.say(f"chat {number} turn {turn}", f"reply {number}.{turn}")
    rows = threaded(writes)
    assert len(rows) == len(talks)
    assert all(len(r) == 6 and [p for p, _, _ in r] == list(range(6)) for r in rows.values())
    assert all(row.branch_of is None for row in writes.conversations.values())


def test_the_same_question_asked_again_after_its_answer_is_a_branch_and_after_a_failure_a_retry() -> None:
    state, writes, (talk,) = chats(1)
    talk.say("Name a colour.", "Blue.")
    again = chat(10, [user("Name a colour.")])
    apply_request(state, again, writes)
    apply_reply(state, answer(10, "Red."), writes)
    failed_once = chat(11, [user("Name a colour.")])
    apply_request(state, failed_once, writes)  # no answer: it failed
    apply_request(state, chat(12, [user("Name a colour.")], stream=False), writes)
    apply_reply(state, answer(12, "Green."), writes)
    original, regenerated, third = writes.conversations.values()
    assert (regenerated.branch_of, regenerated.branch_position) == (original.id, 1)
    assert (third.branch_of, third.branch_position) == (original.id, 1)  # of equals, the earliest
    assert [x.retry_of for x in writes.exchanges] == [None, None, None, "ex-11"]
    assert {cid: [t for _, _, t in r] for cid, r in threaded(writes).items()} == {
        original.id: ["Name a colour.", "Blue."],
        regenerated.id: ["Name a colour.", "Red."],
        third.id: ["Name a colour.", "Green."],
    }


def test_asking_again_up_to_a_cut_reply_replaces_it() -> None:
    """A client that gave up on a cut answer asks again with other settings: not the same body, same place."""
    state, writes = SessionState("s"), Writes()
    apply_request(state, chat(1, [user("Explain Kafka.")]), writes)
    apply_reply(state, answer(1, "Kafka is a", partial=True), writes)
    apply_request(state, chat(2, [user("Explain Kafka.")], max_tokens=4096), writes)
    apply_reply(state, answer(2, "Kafka is a log."), writes)
    assert len(writes.conversations) == 1
    assert [(m.position, m.partial, m.exchange_id) for m in writes.messages] == [
        (0, False, "ex-1"),
        (1, True, "ex-1"),
        (1, False, "ex-2"),
    ]


@pytest.mark.parametrize(
    ("change", "kept"),
    [
        (lambda history: [*history[:2], user("q1, put otherwise")], 3),  # an edited turn
        (lambda history: [*history[:2], *history[4:], user("q3")], 5),  # a dropped one
    ],
)
def test_an_edited_or_dropped_turn_branches_where_the_histories_part(change: Callable[[list[Any]], list[Any]], kept: int) -> None:
    state, writes, (talk,) = chats(1)
    for turn in range(3):
        talk.say(f"q{turn}", f"a{turn}")
    apply_request(state, chat(20, change(talk.history)), writes)
    original, branch = writes.conversations.values()
    assert (branch.kind, branch.branch_of, branch.branch_position) == ("main", original.id, 2)
    assert [len(r) for r in threaded(writes).values()] == [6, kept]


def test_what_is_no_model_call_is_an_exchange_only() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, replace(chat(1, []), path="/v1/models", body=None), writes)
    apply_request(state, replace(chat(2, []), path="/", body=None), writes)
    apply_request(state, chat(3, []), writes)  # an empty history: the API refuses it
    apply_request(state, replace(chat(4, [user("hi")]), path="/v1/messages/batches"), writes)
    assert writes.exchanges == [] and writes.conversations == {} and writes.messages == []
    assert len(writes.sessions) == 1


# --- compaction recognised by each of its markers, and the continuation linked ------------------

OPENER = "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools."
CONTINUATION = "This session is being continued from a previous conversation that ran out of context."


def compacted(summary_request: str, continuation: str) -> Writes:
    """A main thread of two turns, its compaction asked with ``summary_request``, and the next
    main request opening with ``continuation``."""
    state, writes = SessionState("s"), Writes()
    history = [user("a"), said("b"), user("c"), said("d")]
    apply_request(state, main_turn(1, history[:1]), writes)
    apply_request(state, main_turn(2, history[:3]), writes)
    apply_request(state, main_turn(3, [*history, user(summary_request)]), writes)
    apply_reply(state, delegated(3, {"type": "text", "text": "The summary."}), writes)
    apply_request(state, main_turn(4, [user(f"{continuation} The summary.")]), writes)
    apply_request(state, main_turn(5, [user(f"{continuation} The summary."), said("Continuing."), user("e")]), writes)
    return writes


def test_compaction_by_its_text_only_opener_alone_links_what_follows() -> None:
    main, compaction, after = compacted(OPENER + " Write it up.", "Earlier, in short:").conversations.values()
    assert compaction.kind == "compaction" and compaction.summarises_conversation_id == main.id
    assert (after.kind, after.summarises_conversation_id, after.branch_of) == ("main", main.id, None)


def test_compaction_by_its_summary_request_alone_links_what_follows() -> None:
    main, compaction, after = compacted("Create a summary of the conversation.", "Earlier, in short:").conversations.values()
    assert compaction.kind == "compaction" and after.summarises_conversation_id == main.id


def test_the_continuation_alone_links_to_the_conversation_it_continues() -> None:
    """A compaction prompt no marker knows is stored as a turn of the thread; the request after it,
    opening as continuations do, still says which conversation it continues."""
    main, after = compacted("Boil all of it down, please.", CONTINUATION).conversations.values()
    assert (after.kind, after.summarises_conversation_id, after.branch_of) == ("main", main.id, None)


def test_with_every_marker_the_continuation_links_once() -> None:
    main, compaction, after = compacted(OPENER + " " + COMPACTION, CONTINUATION).conversations.values()
    assert compaction.summarises_conversation_id == after.summarises_conversation_id == main.id


def test_a_new_chat_without_a_marker_after_none_is_linked_to_nothing() -> None:
    _main, after = compacted("Boil all of it down, please.", "Unrelated:").conversations.values()
    assert after.summarises_conversation_id is None and after.branch_of is None


COMPACTION = "Your task is to create a detailed summary of the conversation so far."


def test_a_sub_agent_s_parent_is_the_conversation_holding_its_call() -> None:
    """A newer main conversation (another chat, a side request no marker names) is not the parent."""
    state, writes = SessionState("s"), Writes()
    apply_request(state, main_turn(1, [user("look around")]), writes)
    apply_reply(state, delegated(1, agent_use("toolu_1", "Survey the repo.")), writes)
    apply_request(state, replace(chat(2, [user("quota")]), at=at(2)), writes)
    apply_request(state, sub_agent(3, "a1", "Survey the repo."), writes)
    apply_request(state, sub_agent(4, "a2", "Nobody asked for this."), writes)
    main, other, agent, stray = writes.conversations.values()
    assert (agent.spawned_by_tool_use_id, agent.parent_conversation_id) == ("toolu_1", main.id)
    assert stray.parent_conversation_id == other.id  # no call: the main thread active last


def test_chats_read_back_from_the_tables_go_on_as_the_live_ones() -> None:
    """A restart between turns: the state rebuilt from rows threads the next turns the same."""
    live, writes, (a, b) = chats(2)
    a.say("Hi", "Hello from A")
    b.say("Hi", "Hello from B")
    a.say("a0", "A answers 0")
    reloaded = states_from_rows(["s"], *rows_of(writes))["s"]
    assert reloaded.openings.keys() == live.openings.keys() and reloaded.first_by_hash == live.first_by_hash
    results = []
    for state in (live, reloaded):
        results.append(Writes())
        histories = {"a": list(a.history), "b": list(b.history)}
        for n, (name, words) in enumerate((("b", "b0"), ("a", "a1"), ("b", "b1")), start=100):
            apply_request(state, chat(n, [*histories[name], user(words)]), results[-1])
            apply_reply(state, answer(n, f"{words} answered"), results[-1])
            histories[name] += [user(words), said(f"{words} answered")]
        apply_request(state, chat(150, [user("Hi")]), results[-1])
    assert results[0] == results[1]
    chat_b, chat_a, third = results[0].conversations.values()  # in the order this batch touched them
    assert [m.conversation_id for m in results[0].messages] == [chat_b.id] * 2 + [chat_a.id] * 2 + [chat_b.id] * 2 + [third.id]
    assert chat_a.id == writes.messages[0].conversation_id and third.branch_of is not None
    assert {x.retry_of for x in results[0].exchanges} == {None}


# --- histories the server holds: requests that send only their new messages --------------------


def thread_turn(n: int, messages: list[dict[str, Any]], previous: str | None) -> Request:
    """A turn of the message threads beta, as the SDK's tool runner sends it."""
    thread = {"type": "continue", "previous_message_id": previous} if previous else {"type": "create"}
    return chat(n, messages, thread=thread, stream=True)


def answered_as(n: int, message_id: str, *blocks: dict[str, Any], partial: bool = False) -> Reply:
    return Reply(f"ex-{n}", "s", {"id": message_id, "role": "assistant", "content": list(blocks)}, partial, at(n))


WEATHER = {"type": "tool_use", "id": "toolu_w", "name": "get_weather", "input": {"city": "Oslo"}}
SUNNY = {"type": "tool_result", "tool_use_id": "toolu_w", "content": "Sunny"}


def weather_asked() -> tuple[SessionState, Writes]:
    """A tool runner's first two turns: the question, the tool's result; each reply with its id."""
    state, writes = SessionState("s"), Writes()
    apply_request(state, thread_turn(1, [user("Weather in Oslo?")], None), writes)
    apply_reply(state, answered_as(1, "msg_1", WEATHER), writes)
    apply_request(state, thread_turn(2, [user([SUNNY])], "msg_1"), writes)
    apply_reply(state, answered_as(2, "msg_2", {"type": "text", "text": "It is sunny."}), writes)
    return state, writes


def test_a_turn_continuing_a_held_history_extends_its_conversation() -> None:
    state, writes = weather_asked()
    apply_request(state, thread_turn(3, [user("And tomorrow?")], "msg_2"), writes)
    (_conversation,) = writes.conversations.values()
    assert [(m.position, m.role, m.source) for m in writes.messages] == [
        (0, "user", "request"),
        (1, "assistant", "response"),
        (2, "user", "request"),
        (3, "assistant", "response"),
        (4, "user", "request"),
    ]
    assert [x.reply_position for x in writes.exchanges] == [1, 3, 5]
    assert [(r.tool_use_id, r.result_position) for r in writes.tool_results] == [("toolu_w", 2)]
    assert writes.copies == []


def test_a_turn_continuing_an_earlier_reply_branches_with_a_copy_of_what_the_server_held() -> None:
    state, writes = weather_asked()
    apply_request(state, thread_turn(3, [user([{**SUNNY, "content": "Raining"}])], "msg_1"), writes)  # from msg_1 again
    apply_reply(state, answered_as(3, "msg_3", {"type": "text", "text": "It rains."}), writes)
    original, branch = writes.conversations.values()
    assert (branch.branch_of, branch.branch_position) == (original.id, 2)
    assert writes.copies == [CopyRow(original.id, branch.id, 2)]
    assert [(m.conversation_id, m.position) for m in writes.messages[-2:]] == [(branch.id, 2), (branch.id, 3)]
    # the branch holds the copied history in its state too: the next turn of it continues it
    apply_request(state, thread_turn(4, [user("Thanks")], "msg_3"), writes)
    assert writes.messages[-1].conversation_id == branch.id and writes.messages[-1].position == 4


def test_a_turn_continuing_a_reply_never_stored_starts_with_what_it_has() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, thread_turn(1, [user([SUNNY])], "msg_from_before_kgb"), writes)
    (_conversation,) = writes.conversations.values()
    assert [(m.position, m.role) for m in writes.messages] == [(0, "user")] and writes.exchanges[0].reply_position == 1


def test_a_failed_threaded_turn_sent_again_is_a_retry() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, thread_turn(1, [user("Weather in Oslo?")], None), writes)
    apply_reply(state, answered_as(1, "msg_1", WEATHER), writes)
    apply_request(state, thread_turn(2, [user([SUNNY])], "msg_1"), writes)  # 529: no answer
    apply_request(state, thread_turn(3, [user([SUNNY])], "msg_1"), writes)
    assert [x.retry_of for x in writes.exchanges] == [None, None, "ex-2"]
    assert len(writes.conversations) == 1 and len(writes.messages) == 3
