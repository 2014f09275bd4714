"""The pure thread rules of `consumers.winni.threads`, request by request."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from consumers.winni.conversations import states_from_rows
from consumers.winni.threads import (
    AGENT_TOOLS, PARTS_REMEMBERED, Reply, Request, SessionState, Writes, apply_reply, apply_request, client_and_version,
    device_and_account, message_hash, normal_content, part_hashes, title_of,
)
from consumers.winni.store import part_hash

AT = datetime(2026, 1, 1, tzinfo=UTC)


MAIN_TOOLS = [{"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}}]


def request(n: int, messages: list[dict[str, Any]], **body: Any) -> Request:
    """A main-thread request unless `body` says otherwise: the main thread offers client tools."""
    fields = {"model": "claude-opus-4-8", "messages": messages, "stream": True, "tools": MAIN_TOOLS, **body}
    return Request(f"ex-{n}", "s", "header", "/v1/messages", None, None, "claude-cli/2.1.197 (external, cli)",
                   "claude-opus-4-8", fields, AT)


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
    later = replace(request(2, [user("b")], metadata={"user_id": '{"device_id": "d2"}'}),
                    client="claude-cli/2.2.0 (external, cli)", at=AT + timedelta(seconds=5))
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
    outage = {"type": "web_search_tool_result", "tool_use_id": "srv-1",
              "content": {"type": "web_search_tool_result_error", "error_code": "unavailable"}}
    found = {"type": "web_search_tool_result", "tool_use_id": "srv-2", "content": [{"type": "web_search_result", "url": "u"}]}
    refused = {"type": "tool_result", "tool_use_id": "t-1", "content": "denied", "is_error": True}
    apply_request(state, request(1, [user("find it"), {"role": "assistant", "content": [search, outage, found]},
                                     user([refused])]), writes)
    assert {(r.tool_use_id, r.is_error) for r in writes.tool_results} == {("srv-1", True), ("srv-2", False), ("t-1", True)}


def test_a_conversation_stores_each_position_once() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, request(1, [user("a")]), writes)
    apply_reply(state, answer(1, "b"), writes)
    apply_request(state, request(2, [user("a"), said("b, as the client kept it"), user("c")]), writes)
    apply_reply(state, answer(2, "d"), writes)
    assert [(m.position, m.role, m.source) for m in writes.messages] == [
        (0, "user", "request"), (1, "assistant", "response"), (2, "user", "request"), (3, "assistant", "response"),
    ]
    assert len(writes.conversations) == 1 and [x.reply_position for x in writes.exchanges] == [1, 3]


def test_a_retry_adds_nothing_and_a_complete_reply_replaces_a_partial_one() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, request(1, [user("a")]), writes)
    apply_reply(state, answer(1, "cut sh", partial=True), writes)
    apply_request(state, request(2, [user("a")], stream=False), writes)
    apply_reply(state, answer(2, "cut short no more"), writes)
    assert [x.retry_of for x in writes.exchanges] == [None, "ex-1"]
    assert [(m.position, m.partial, m.exchange_id) for m in writes.messages] == [(0, False, "ex-1"), (1, True, "ex-1"), (1, False, "ex-2")]


def test_a_rewound_history_branches_off() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, request(1, [user("a")]), writes)
    apply_reply(state, answer(1, "b"), writes)
    apply_request(state, request(2, [user("a"), said("b"), user("c")]), writes)
    apply_request(state, request(3, [user("a"), said("b"), user("c, said otherwise")]), writes)
    first, branch = writes.conversations.values()
    assert (branch.branch_of, branch.branch_position) == (first.id, 2)
    assert [(m.conversation_id, m.position) for m in writes.messages[-3:]] == [(branch.id, 0), (branch.id, 1), (branch.id, 2)]


def test_identity_from_metadata_and_user_agent() -> None:
    modern = {"metadata": {"user_id": '{"device_id":"d1","account_uuid":"","session_id":"s"}'}}
    legacy = {"metadata": {"user_id": "user_abc123_account_1b2c-3d_session_9f0e"}}
    assert device_and_account(modern) == ("d1", None)
    assert device_and_account(legacy) == ("abc123", "1b2c-3d")
    assert device_and_account({"metadata": {"user_id": "{not json"}}) == (None, None)
    assert client_and_version("claude-cli/2.1.197 (external, cli)") == ("claude-cli", "2.1.197")
    assert client_and_version(None) == (None, None)


def test_titles_come_as_structured_output_or_plain_text() -> None:
    assert title_of(said('{"title": " Haiku about the sea "}')) == "Haiku about the sea"
    assert title_of(said("Plain title")) == "Plain title"
    assert title_of(said("")) is None


def test_remembered_hashes_change_no_row() -> None:
    """A warm state skips normalising resent messages; a cold one (read back from the tables) hashes all."""
    history = [user("a"), said("b"), user([{"type": "text", "text": "c", "cache_control": {"type": "ephemeral"}}])]
    requests = [request(1, history[:1]), request(2, history), request(3, [*history, said("d"), user("e")]), request(4, history[:1])]
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
        assert part_hashes(body, known) == part_hashes(body, {}) == {"system": part_hash(body["system"]), "tools": part_hash(MAIN_TOOLS)}
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
    return {"type": "tool_use", "id": tool_id, "name": name,
            "input": {"description": "Look around", "prompt": prompt, "subagent_type": "general-purpose"}}


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
    first = [{"type": "text", "text": REMINDER}, {"type": "text", "text": "Survey the repo.", "cache_control": {"type": "ephemeral"}}]
    apply_request(state, sub_agent(2, "a1", first), writes)
    assert spawned_by(writes) == {None: None, "a1": "toolu_1"}
    # the same sub-agent's next request extends its conversation and links nothing anew
    apply_request(state, sub_agent(3, "a1", first), writes)
    assert len(writes.conversations) == 2 and state.agent_calls == {}


def test_parallel_sub_agents_each_find_their_call() -> None:
    state, writes = SessionState("s"), Writes()
    apply_request(state, main_turn(1, [user("look around")]), writes)
    apply_reply(state, delegated(1, agent_use("toolu_1", "Read the docs."), agent_use("toolu_2", "Read the tests.", name="Task")), writes)
    apply_request(state, sub_agent(2, "a2", "Read the tests."), writes)  # a plain string content
    apply_request(state, sub_agent(3, "a1", [{"type": "text", "text": "Read the docs.\n"}]), writes)
    assert spawned_by(writes) == {None: None, "a2": "toolu_2", "a1": "toolu_1"}


def test_a_repeated_prompt_links_each_call_once_first_come_first_served() -> None:
    state, writes = SessionState("s"), Writes()
    history = [user("check")]
    apply_request(state, main_turn(1, history), writes)
    apply_reply(state, delegated(1, agent_use("toolu_1", "Run the tests."), agent_use("toolu_2", "Run the tests.")), writes)
    history += [{"role": "assistant", "content": [agent_use("toolu_1", "Run the tests."), agent_use("toolu_2", "Run the tests.")]},
                user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"},
                      {"type": "tool_result", "tool_use_id": "toolu_2", "content": "ok"}])]
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
    apply_reply(state, delegated(5, {**agent_use("toolu_3", "Not an agent."), "name": "Bash"},
                                 {**agent_use("toolu_4", ""), "input": {"description": "no prompt"}}), writes)
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
    history = [user("check"), {"role": "assistant", "content": [agent_use("toolu_1", "Run the tests."), agent_use("toolu_2", "Lint.")]}]
    before = [
        main_turn(1, history[:1]), delegated(1, *history[1]["content"]),
        sub_agent(2, "a0", "Lint."),
        main_turn(3, [*history, user("more")]), delegated(3, agent_use("toolu_3", "Run the tests.")),
        main_turn(4, [*history, user("Your task is to create a detailed summary of the conversation so far.")]),
        main_turn(5, [user("and")]), delegated(5, agent_use("toolu_4", "Cut short."), partial=True),
    ]
    after = [sub_agent(6, "a2", "Run the tests."), sub_agent(7, "a1", [{"type": "text", "text": "Run the tests."}]),
             sub_agent(8, "a3", "Cut short."), sub_agent(9, "a4", "Lint."), sub_agent(10, "a5", "Run the tests.")]
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
    (one session, no early replies); the queries themselves run on PostgreSQL in test_conversations."""
    conversations = sorted(writes.conversations.values(), key=lambda c: c.ordinal)
    kinds = {c.id: c.kind for c in conversations}
    messages: dict[tuple[Any, int], Any] = {}
    for m in writes.messages:  # upsert_message: only a partial reply gives way, to a complete one
        old = messages.get((m.conversation_id, m.position))
        if old is None or (old.partial and old.source == m.source == "response" and not m.partial):
            messages[(m.conversation_id, m.position)] = m
    uses = {(u.conversation_id, u.tool_use_id): u for u in reversed(writes.tool_uses)}  # the first use of each stays
    return (
        [{"session_key": c.session_key, "id": c.id, "kind": c.kind, "agent_id": c.agent_id,
          "summarises_conversation_id": c.summarises_conversation_id, "spawned_by_tool_use_id": c.spawned_by_tool_use_id}
         for c in conversations],
        [{"conversation_id": m.conversation_id, "role": m.role, "content_hash": m.content_hash,
          "from_response": m.source == "response", "partial": m.partial}
         for m in sorted(messages.values(), key=lambda m: m.position)],
        [{"session_key": "s", "exchange_id": x.exchange_id, "conversation_id": x.conversation_id, "reply_position": x.reply_position,
          "retry_of": x.retry_of, "request_hash": x.request_hash, "kind": kinds[x.conversation_id]} for x in writes.exchanges],
        [],
        [{"session_key": "s", "tool_use_id": u.tool_use_id, "prompt": orjson.loads(u.input)["prompt"], "used_at": u.at,
          "use_position": u.position}
         for u in uses.values() if u.name in AGENT_TOOLS and _holds(messages[(u.conversation_id, u.position)], u.tool_use_id)],
    )


def _holds(message: Any, tool_use_id: str) -> bool:
    return not message.partial and any(b.get("id") == tool_use_id for b in orjson.loads(message.content))
