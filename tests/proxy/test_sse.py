import pytest

from proxy.sse import MessageAssembler, SSEEvent, SSEParser, reassemble
from tests.proxy.streams import full_stream, message_start, sse

EXPECTED_CONTENT = [
    {"type": "thinking", "thinking": "Let me think.", "signature": "sig=="},
    {"type": "text", "text": "Héllo wörld\u2028!", "citations": [{"type": "char_location", "cited_text": "x"}]},
    {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "echo hi", "timeout": 5}},
]


def parse_in_pieces(text: str, size: int) -> list[SSEEvent]:
    parser = SSEParser()
    events = []
    for start in range(0, len(text), size):
        events.extend(parser.feed(text[start : start + size]))
    return events + parser.flush()


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_one_character_at_a_time_gives_the_same_events_as_whole(newline: str) -> None:
    text = full_stream(newline)
    assert parse_in_pieces(text, 1) == parse_in_pieces(text, len(text))
    assert len(parse_in_pieces(text, 1)) == 20


def test_every_split_point_gives_the_same_events() -> None:
    text = full_stream("\r\n")
    whole = parse_in_pieces(text, len(text))
    for cut in range(1, len(text)):
        parser = SSEParser()
        events = parser.feed(text[:cut]) + parser.feed(text[cut:]) + parser.flush()
        assert events == whole, f"split at {cut}"


def test_reassembles_thinking_text_citations_and_tool_input() -> None:
    result = reassemble(full_stream())
    assert result.complete
    assert result.stop_reason == "tool_use"
    assert result.message is not None
    assert result.message["content"] == EXPECTED_CONTENT
    assert result.usage == {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 42}
    assert result.message["usage"]["output_tokens"] == 42
    assert result.unknown_events == [{"event": "brand_new_event", "data": {"type": "brand_new_event", "payload": [1, 2]}}]


def test_comments_multiline_data_and_missing_final_blank_line() -> None:
    parser = SSEParser()
    events = parser.feed(": keep-alive\nevent: x\ndata: a\ndata:b\n\nevent: last\ndata: {}")
    assert events == [SSEEvent("x", "a\nb")]
    assert parser.flush() == [SSEEvent("last", "{}")]


def test_error_event_after_message_start_is_recorded() -> None:
    text = sse("message_start", message_start()) + sse(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    result = reassemble(text)
    assert (result.error_type, result.error_message) == ("overloaded_error", "Overloaded")
    assert not result.complete


def test_interrupted_stream_keeps_partial_text_and_raw_partial_json() -> None:
    text = full_stream()
    cut = text.rindex("event:", 0, text.index("ho hi"))
    result = reassemble(text[:cut])
    assert not result.complete
    assert result.message is not None
    blocks = result.message["content"]
    assert blocks[1]["text"] == "Héllo wörld\u2028!"
    assert blocks[2]["kgb_partial_input"] == '{"command": "ec'


def test_unknown_block_and_delta_types_are_kept_as_they_came() -> None:
    assembler = MessageAssembler()
    assembler.feed(SSEEvent("message_start", '{"type":"message_start","message":{"id":"m","content":[]}}'))
    assembler.feed(SSEEvent("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"hologram","z":1}}'))
    assembler.feed(SSEEvent("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"hologram_delta","z":2}}'))
    assembler.feed(SSEEvent("weird", "not json"))
    result = assembler.finish()
    assert result.message is not None
    assert result.message["content"] == [{"type": "hologram", "z": 1, "kgb_unknown_deltas": [{"type": "hologram_delta", "z": 2}]}]
    assert result.unknown_events == [{"event": "weird", "data": "not json"}]
    assert result.final_message()["kgb_unknown_events"] == [{"event": "weird", "data": "not json"}]


def test_server_tool_blocks_and_redacted_thinking() -> None:
    text = (
        sse("message_start", message_start())
        + sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "redacted_thinking", "data": "abc"}})
        + sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        + sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}})
        + sse("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"query": "kgb"}'}})
        + sse("content_block_stop", {"type": "content_block_stop", "index": 1})
        + sse("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [{"type": "web_search_result", "url": "u"}]}})
        + sse("content_block_stop", {"type": "content_block_stop", "index": 2})
        + sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3, "server_tool_use": {"web_search_requests": 1}}})
        + sse("message_stop", {"type": "message_stop"})
    )
    result = reassemble(text)
    assert result.message is not None
    assert result.message["content"] == [
        {"type": "redacted_thinking", "data": "abc"},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "kgb"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [{"type": "web_search_result", "url": "u"}]},
    ]
    assert result.usage is not None and result.usage["server_tool_use"] == {"web_search_requests": 1}


def test_empty_stream_has_no_message() -> None:
    result = reassemble("")
    assert result.message is None and not result.complete and result.final_message() is None
