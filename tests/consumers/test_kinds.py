"""Conversation kinds: every sample Claude Code sent, and the kinds the samples lack built from them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from consumers import kinds
from consumers.kinds import KINDS, OPENING, is_continuation, kind_of, system_outline, tools_outline
from tests.claude_samples import load_sample, sample_files
from tests.consumers.sessions import COMPACTION_PROMPT, CONTINUATION

# What each sample is, from the samples README: start-up HEADs, the main thread
# (including retries, the empty stream and its non-streaming fallback), title
# generation beside it, and /context's token counts.
EXPECTED = {
    "001": "other",
    "002": "main",
    "003": "other",
    "004": "main",
    "005": "main",
    "006": "other",
    "007": "main",
    "009": "title",
    "010": "main",
    "011": "title",
    "012": "main",
    "014": "main",
    "015": "main",
    "017": "count_tokens",
    "022": "count_tokens",
    "030": "main",
    "031": "main",
    "032": "main",
    "055": "main",
    "056": "main",
    "061": "other",
    "062": "main",
    "063": "main",
    "064": "other",
    "065": "main",
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


OPENER = "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools.\n\n- Do NOT use Read, Bash or any other tool."


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": COMPACTION_PROMPT}],
        COMPACTION_PROMPT,
        [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": COMPACTION_PROMPT}],
        "Write a summary of this conversation for whoever picks it up.",
    ],
)
def test_the_summary_request_alone(content: Any) -> None:
    assert kind_of("/v1/messages", compaction_body(content), None) == "compaction"


@pytest.mark.parametrize(
    "content",
    [
        OPENER,
        [{"type": "text", "text": "\n" + OPENER.lower()}],
        [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": OPENER}],
    ],
)
def test_the_text_only_opener_alone(content: Any) -> None:
    assert "summary" not in str(content).lower()
    assert kind_of("/v1/messages", compaction_body(content), None) == "compaction"


def test_the_summariser_system_prompt_alone() -> None:
    body = compaction_body("Go on.")
    body["system"] = [{"type": "text", "text": "You are a helpful AI assistant tasked with summarizing conversations."}]
    assert kind_of("/v1/messages", body, None) == "compaction"


def test_the_opener_inside_a_text_is_no_marker() -> None:
    assert kind_of("/v1/messages", compaction_body(f"Why does your prompt say {OPENER}?"), None) == "main"


def test_a_subagent_compacts_too() -> None:
    body = compaction_body([{"type": "text", "text": COMPACTION_PROMPT}])
    assert kind_of("/v1/messages", body, "a4f1c2b3d4e5f607") == "compaction"


@pytest.mark.parametrize("marker", [COMPACTION_PROMPT, OPENER])
def test_a_marker_in_an_earlier_message_is_not_compaction(marker: str) -> None:
    body = compaction_body(marker)
    body["messages"] += [{"role": "assistant", "content": "Summary."}, {"role": "user", "content": "thanks"}]
    assert kind_of("/v1/messages", body, None) == "main"


def test_a_continuation_opens_its_first_message() -> None:
    assert is_continuation([{"role": "user", "content": CONTINUATION + "the work so far."}])
    assert is_continuation([{"role": "user", "content": [{"type": "text", "text": "  " + CONTINUATION}]}, {"role": "assistant"}])
    assert not is_continuation([{"role": "user", "content": "hello"}, {"role": "user", "content": CONTINUATION}])
    assert not is_continuation([{"role": "assistant", "content": CONTINUATION}])
    assert not is_continuation([{"role": "user", "content": "Quote: " + CONTINUATION}])
    assert not is_continuation([])
    # a continuation is the main thread's request: only winni reads the marker, to link it
    assert kind_of("/v1/messages", {**main_body(), "messages": [{"role": "user", "content": CONTINUATION}]}, None) == "main"


def test_outlines_keep_enough_of_each_text_for_every_marker() -> None:
    phrases = [v for k, v in vars(kinds).items() if k.isupper() and k.startswith("_") and isinstance(v, str)]
    assert len(phrases) >= 6 and all(len(p) < OPENING for p in phrases)


SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}


def web_search_body(choice: dict[str, Any] | None, *, request: bool = True, system: bool = False) -> dict[str, Any]:
    """Claude Code's WebSearch side request; ``request`` and ``system`` put its two prose markers in."""
    query = "kafka 4.1 release"
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5-20250929",
        "messages": [{"role": "user", "content": f"Perform a web search for the query: {query}" if request else query}],
        "tools": [SEARCH_TOOL],
        "max_tokens": 32000,
        "stream": True,
    }
    if system:
        body["system"] = [{"type": "text", "text": "You are an assistant for performing a web search tool use"}]
    if choice is not None:
        body["tool_choice"] = choice
    return body


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "web_search"}, {"type": "any"}])
def test_forced_web_search_alone(choice: dict[str, Any]) -> None:
    assert kind_of("/v1/messages", web_search_body(choice, request=False), None) == "web_search"
    assert kind_of("/v1/messages", web_search_body(choice, request=False), "a4f1c2b3d4e5f607") == "web_search"


@pytest.mark.parametrize("markers", [{"request": True}, {"request": False, "system": True}])
def test_each_prose_marker_of_a_web_search_alone(markers: dict[str, bool]) -> None:
    assert kind_of("/v1/messages", web_search_body({"type": "auto"}, **markers), None) == "web_search"


@pytest.mark.parametrize("choice", [None, {"type": "auto"}, {"type": "tool", "name": "other_tool"}])
def test_a_web_search_tool_without_a_marker_is_a_chat_that_may_search(choice: dict[str, Any] | None) -> None:
    assert kind_of("/v1/messages", web_search_body(choice, request=False), None) == "main"


def test_no_search_without_the_server_tool() -> None:
    body = {**web_search_body(None, system=True), "tools": []}
    assert kind_of("/v1/messages", body, None) == "main"


def title_body() -> dict[str, Any]:
    return copy.deepcopy(load_sample("009")["body"])


def test_the_title_schema_alone() -> None:
    body = title_body()
    body["system"] = [{"type": "text", "text": "Name this session."}]
    assert kind_of("/v1/messages", body, None) == "title"


def test_the_title_instruction_alone() -> None:
    body = title_body()
    del body["output_config"]
    body["tools"] = main_body()["tools"]
    assert kind_of("/v1/messages", body, None) == "title"


def test_a_schema_without_a_title_and_no_instruction_is_a_chat() -> None:
    body = title_body()
    body["system"] = "Answer in JSON."
    body["output_config"]["format"]["schema"]["properties"] = {"suggestion": {"type": "string"}}
    assert kind_of("/v1/messages", body, None) == "main"


def test_a_title_schema_beside_tools_and_no_instruction_is_a_chat() -> None:
    body = title_body()
    body["system"] = "Answer in JSON."
    body["tools"] = main_body()["tools"]
    assert kind_of("/v1/messages", body, None) == "main"


USER = [{"role": "user", "content": "Plan the release."}]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "claude-opus-4-8", "max_tokens": 256, "messages": USER},
        {"model": "claude-opus-4-8", "max_tokens": 256, "messages": USER, "tools": []},
        {"model": "claude-opus-4-8", "max_tokens": 256, "messages": USER, "system": "You are terse.", "stream": True},
        {
            "model": "claude-opus-4-8",
            "max_tokens": 256,
            "messages": USER,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        },
        {"model": "claude-opus-4-8", "max_tokens": 256, "messages": [], "tools": "not a list", "output_config": "odd"},
        {"messages": ["not a message"], "tools": [None, 3], "system": [None, {"type": "text"}]},
    ],
)
def test_every_other_model_call_is_main_whatever_its_tools(body: dict[str, Any]) -> None:
    assert kind_of("/v1/messages", body, None) == "main"
    assert kind_of("/v1/messages", body, "a4f1c2b3d4e5f607") == "subagent"


def test_the_instruction_marks_a_title_whatever_its_schema() -> None:
    body = title_body()
    body["output_config"]["format"]["schema"]["properties"] = {"suggestion": {"type": "string"}}
    assert kind_of("/v1/messages", body, None) == "title"  # by its instruction still


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models", None),
        ("/", None),
        ("/v1/messages", None),
        ("/v1/messages", {"model": "claude-opus-4-8"}),
        ("/v1/messages", {"model": "claude-opus-4-8", "messages": "not a list"}),
        ("/v1/messages/batches", {"requests": [{"custom_id": "1", "params": {"messages": USER}}]}),
        ("/v1/complete", {"prompt": "Human: hi Assistant:", "messages": USER}),
    ],
)
def test_what_is_no_model_call_is_other(path: str, body: dict[str, Any] | None) -> None:
    assert kind_of(path, body, None) == "other"


def test_count_tokens_whoever_asks() -> None:
    assert kind_of("/v1/messages/count_tokens", load_sample("022")["body"], "a4f1c2b3d4e5f607") == "count_tokens"


def test_kinds_are_the_listed_ones() -> None:
    assert set(EXPECTED.values()) | {"subagent", "web_search", "compaction"} == set(KINDS)


def outlined(body: dict[str, Any]) -> dict[str, Any]:
    """What winni's `kind_view` hands `kind_of`: the system and tools outlined."""
    out = {**body, "tools": tools_outline(body["tools"])} if "tools" in body else dict(body)
    if "system" in body:
        out["system"] = system_outline(body["system"])
    return out


def summariser_body() -> dict[str, Any]:
    body = compaction_body("Go on.")
    body["system"] = "\n  You are a helpful AI assistant tasked with summarizing conversations."
    return body


@pytest.mark.parametrize(
    "body",
    [
        *(load_sample(n)["body"] for n in sorted(EXPECTED) if isinstance(load_sample(n)["body"], dict)),
        *(web_search_body(choice, request=False, system=True) for choice in (None, {"type": "any"})),
        *(web_search_body(choice) for choice in (None, {"type": "any"}, {"type": "tool", "name": "web_search"})),
        summariser_body(),
        {**title_body(), "output_config": None},
        {"messages": [], "tools": "not a list"},
        {"messages": [], "tools": [None, 3]},
        {"messages": [], "tools": []},
        {"messages": [], "system": [None, 3, {"type": "text", "text": 5}]},
        {"messages": [], "system": {"text": "odd"}},
    ],
)
@pytest.mark.parametrize("agent_id", [None, "a4f1c2b3d4e5f607"])
def test_outlined_system_and_tools_decide_the_same_kind(body: dict[str, Any], agent_id: str | None) -> None:
    assert kind_of("/v1/messages", outlined(body), agent_id) == kind_of("/v1/messages", body, agent_id)
