"""KGB messages as Dewey reads them: readable text, the exact JSON kept beside it."""

from __future__ import annotations

import uuid

import orjson

from consumers.dewey.render import (
    ConversationHead,
    StoredMessage,
    begin_arguments,
    chunks,
    dewey_message,
    kgb_conversation_id,
    kgb_position,
    text_of,
)
from tests.consumers.sessions import text, tool_result, tool_use

CONVERSATION = uuid.UUID("00000000-0000-0000-0000-00000000c0de")


def stored(content: object, *, role: str = "user", position: int = 3) -> StoredMessage:
    return StoredMessage(CONVERSATION, position, role, content, "e" * 8, "request", False)


def test_text_blocks_are_joined_one_per_line() -> None:
    assert text_of([text("<system-reminder>be brief</system-reminder>"), text("list the files")]) == (
        "<system-reminder>be brief</system-reminder>\nlist the files"
    )
    assert text_of("a plain string") == "a plain string"


def test_a_tool_call_and_its_result_read_as_what_happened() -> None:
    call = [text("Let me look."), tool_use("toolu_01", "ls -la")]
    assert text_of(call) == 'Let me look.\n[tool_use Bash] {"command":"ls -la"}'
    assert text_of([tool_result("toolu_01", "README.md\nsrc")]) == "[tool_result toolu_01]\nREADME.md\nsrc"
    assert text_of([tool_result("toolu_02", "No such file", is_error=True)]) == "[tool_result toolu_02 error]\nNo such file"


def test_a_result_holding_blocks_renders_them_too() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    result = {"type": "tool_result", "tool_use_id": "toolu_03", "content": [text("a screenshot:"), image]}
    assert text_of([result]) == "[tool_result toolu_03]\na screenshot:\n[image image/png]"


def test_thinking_server_tools_and_unknown_blocks_are_labelled() -> None:
    blocks = [
        {"type": "thinking", "thinking": "the user wants files", "signature": "c2ln"},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "kafka"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "redacted_thinking", "data": "opaque"},
    ]
    assert text_of(blocks).splitlines() == [
        "[thinking] the user wants files",
        '[server_tool_use web_search] {"query":"kafka"}',
        "[web_search_tool_result srvtoolu_1]",
        "[redacted_thinking]",
    ]


def test_the_message_keeps_the_full_json_and_its_position() -> None:
    content = [text("Let me look."), tool_use("toolu_01", "ls")]
    message = dewey_message(stored(content, role="assistant", position=7))
    assert (message["role"], message["turn_number"]) == ("assistant", 7)
    assert message["content"] == 'Let me look.\n[tool_use Bash] {"command":"ls"}'
    assert message["metadata"]["content"] == content
    assert (message["metadata"]["position"], message["metadata"]["exchange_id"]) == (7, "e" * 8)
    assert kgb_position(message["metadata"]) == kgb_position(orjson.dumps(message["metadata"]).decode()) == 7


def test_a_role_dewey_does_not_know_is_sent_as_user_and_kept() -> None:
    message = dewey_message(stored([text("?")], role="unknown"))
    assert (message["role"], message["metadata"]["role"]) == ("user", "unknown")
    assert dewey_message(stored([]))["content"] == "(empty)"


def test_begin_carries_the_kgb_conversation() -> None:
    parent = uuid.uuid4()
    head = ConversationHead(CONVERSATION, "sess-1", "subagent", "a1", None, parent, "claude-opus-4-8")
    arguments = begin_arguments(head)
    assert arguments["session_id"] == "sess-1"
    assert arguments["metadata"]["parent_kgb_conversation_id"] == str(parent)
    assert (arguments["metadata"]["kind"], arguments["metadata"]["agent_id"]) == ("subagent", "a1")
    assert (
        kgb_conversation_id(arguments["metadata"])
        == kgb_conversation_id(orjson.dumps(arguments["metadata"]).decode())
        == str(CONVERSATION)
    )


def test_chunks_are_bounded_in_count_and_bytes_and_keep_order() -> None:
    messages = [dewey_message(stored([text("x" * 100)], position=n)) for n in range(25)]
    by_count = list(chunks(messages, 10, 1 << 20))
    assert [len(c) for c in by_count] == [10, 10, 5]
    size = max(len(orjson.dumps(m)) for m in messages)
    by_bytes = list(chunks(messages, 1000, size * 4 + 1))
    assert [len(c) for c in by_bytes] == [4] * 6 + [1]
    assert [m["turn_number"] for c in by_bytes for m in c] == list(range(25))
    huge = [dewey_message(stored([text("y" * 5000)], position=0))]
    assert list(chunks(huge, 1000, 10)) == [huge]
