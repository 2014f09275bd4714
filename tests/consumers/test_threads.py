"""The pure thread rules of `consumers.winni.threads`, request by request."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from consumers.winni.threads import (
    PARTS_REMEMBERED, Reply, Request, SessionState, Writes, apply_reply, apply_request, client_and_version,
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
