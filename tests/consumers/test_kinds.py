"""Conversation kinds: every sample Claude Code sent, and the kinds the samples lack built from them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from consumers.kinds import KINDS, kind_of, tools_outline
from tests.claude_samples import load_sample, sample_files
from tests.consumers.sessions import COMPACTION_PROMPT

# What each sample is, from the samples README: start-up HEADs, the main thread
# (including retries, the empty stream and its non-streaming fallback), title
# generation beside it, and /context's token counts.
EXPECTED = {
    "001": "other", "002": "main", "003": "other", "004": "main", "005": "main", "006": "other", "007": "main",
    "009": "title", "010": "main", "011": "title", "012": "main", "014": "main", "015": "main",
    "017": "count_tokens", "022": "count_tokens",
    "030": "main", "031": "main", "032": "main", "055": "main", "056": "main",
    "061": "other", "062": "main", "063": "main", "064": "other", "065": "main",
}


def kind_of_sample(data: dict[str, Any]) -> str:
    headers = {name.lower(): value for name, value in data["headers"]}
    return kind_of(data["path"], data["body"], headers.get("x-claude-code-agent-id"))


def test_every_sample_is_listed() -> None:
    assert sorted(p.stem for p in sample_files()) == sorted(EXPECTED)


@pytest.mark.parametrize("number", sorted(EXPECTED))
def test_sample(number: str) -> None:
    assert kind_of_sample(load_sample(number)) == EXPECTED[number]


def main_body() -> dict[str, Any]:
    return copy.deepcopy(load_sample("010")["body"])


def test_agent_id_makes_a_subagent() -> None:
    assert kind_of("/v1/messages", main_body(), "a4f1c2b3d4e5f607") == "subagent"


def test_subagent_without_tools_is_still_a_subagent() -> None:
    body = {**main_body(), "tools": []}
    assert kind_of("/v1/messages", body, "a4f1c2b3d4e5f607") == "subagent"


def compaction_body(content: Any) -> dict[str, Any]:
    body = main_body()
    body["messages"].append({"role": "user", "content": content})
    return body


@pytest.mark.parametrize("content", [
    [{"type": "text", "text": COMPACTION_PROMPT}],
    COMPACTION_PROMPT,
    [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": COMPACTION_PROMPT}],
])
def test_compaction(content: Any) -> None:
    assert kind_of("/v1/messages", compaction_body(content), None) == "compaction"


def test_a_subagent_compacts_too() -> None:
    body = compaction_body([{"type": "text", "text": COMPACTION_PROMPT}])
    assert kind_of("/v1/messages", body, "a4f1c2b3d4e5f607") == "compaction"


def test_a_summary_in_an_earlier_message_is_not_compaction() -> None:
    body = compaction_body(COMPACTION_PROMPT)
    body["messages"] += [{"role": "assistant", "content": "Summary."}, {"role": "user", "content": "thanks"}]
    assert kind_of("/v1/messages", body, None) == "main"


def web_search_body(choice: dict[str, Any] | None) -> dict[str, Any]:
    body = {
        "model": "claude-sonnet-4-5-20250929",
        "messages": [{"role": "user", "content": "Perform a web search for the query: kafka 4.1 release"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 8}],
        "max_tokens": 32000,
        "stream": True,
    }
    if choice is not None:
        body["tool_choice"] = choice
    return body


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "web_search"}, {"type": "any"}])
def test_forced_web_search(choice: dict[str, Any]) -> None:
    assert kind_of("/v1/messages", web_search_body(choice), None) == "web_search"
    assert kind_of("/v1/messages", web_search_body(choice), "a4f1c2b3d4e5f607") == "web_search"


@pytest.mark.parametrize("choice", [None, {"type": "auto"}, {"type": "tool", "name": "other_tool"}])
def test_web_search_offered_but_not_forced_is_not_a_web_search(choice: dict[str, Any] | None) -> None:
    assert kind_of("/v1/messages", web_search_body(choice), None) == "other"


def test_title_needs_a_title_in_its_schema() -> None:
    body = copy.deepcopy(load_sample("009")["body"])
    body["output_config"]["format"]["schema"]["properties"] = {"suggestion": {"type": "string"}}
    assert kind_of("/v1/messages", body, None) == "other"


def test_title_needs_no_tools() -> None:
    body = copy.deepcopy(load_sample("009")["body"])
    body["tools"] = main_body()["tools"]
    assert kind_of("/v1/messages", body, None) == "main"


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/models", None),
    ("/v1/messages", None),
    ("/v1/messages", {"model": "claude-opus-4-8"}),
    ("/v1/messages", {"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages", {"messages": [], "tools": "not a list", "output_config": "odd"}),
    ("/v1/messages", {"messages": ["not a message"], "tools": [None, 3]}),
    ("/v1/messages/batches", {"requests": []}),
])
def test_what_fits_nothing_is_other(path: str, body: dict[str, Any] | None) -> None:
    assert kind_of(path, body, None) == "other"


def test_count_tokens_whoever_asks() -> None:
    assert kind_of("/v1/messages/count_tokens", load_sample("022")["body"], "a4f1c2b3d4e5f607") == "count_tokens"


def test_kinds_are_the_listed_ones() -> None:
    assert set(EXPECTED.values()) | {"subagent", "web_search", "compaction"} == set(KINDS)


def outlined(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "tools": tools_outline(body["tools"])} if "tools" in body else body


@pytest.mark.parametrize("body", [
    *(load_sample(n)["body"] for n in sorted(EXPECTED) if isinstance(load_sample(n)["body"], dict)),
    *(web_search_body(choice) for choice in (None, {"type": "any"}, {"type": "tool", "name": "web_search"})),
    {"messages": [], "tools": "not a list"}, {"messages": [], "tools": [None, 3]}, {"messages": [], "tools": []},
])
@pytest.mark.parametrize("agent_id", [None, "a4f1c2b3d4e5f607"])
def test_tools_outlined_decide_the_same_kind(body: dict[str, Any], agent_id: str | None) -> None:
    assert kind_of("/v1/messages", outlined(body), agent_id) == kind_of("/v1/messages", body, agent_id)
