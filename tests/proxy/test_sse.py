import pytest

from proxy.sse import MessageAssembler, MessageStream, Reassembled, SSEEvent, SSEParser, reassemble
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
    assert result.usage == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 100,
        "output_tokens": 42,
    }
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
    assembler.feed(
        SSEEvent("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"hologram","z":1}}')
    )
    assembler.feed(
        SSEEvent("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"hologram_delta","z":2}}')
    )
    assembler.feed(SSEEvent("weird", "not json"))
    result = assembler.finish()
    assert result.message is not None
    assert result.message["content"] == [{"type": "hologram", "z": 1, "kgb_unknown_deltas": [{"type": "hologram_delta", "z": 2}]}]
    assert result.unknown_events == [{"event": "weird", "data": "not json"}]
    assert result.final_message()["kgb_unknown_events"] == [{"event": "weird", "data": "not json"}]


def test_server_tool_blocks_and_redacted_thinking() -> None:
    text = (
        sse("message_start", message_start())
        + sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "redacted_thinking", "data": "abc"}},
        )
        + sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        + sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
            },
        )
        + sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"query": "kgb"}'},
            },
        )
        + sse("content_block_stop", {"type": "content_block_stop", "index": 1})
        + sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {
                    "type": "web_search_tool_result",
                    "tool_use_id": "srvtoolu_1",
                    "content": [{"type": "web_search_result", "url": "u"}],
                },
            },
        )
        + sse("content_block_stop", {"type": "content_block_stop", "index": 2})
        + sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 3, "server_tool_use": {"web_search_requests": 1}},
            },
        )
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


def delta_event(index: int, delta: dict[str, object]) -> str:
    return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def block_start_event(index: int, block: dict[str, object]) -> str:
    return sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def test_many_small_deltas_reassemble_exactly_in_every_field() -> None:
    """Issue 13: a long answer in 20-character deltas; every character in order, in each of the three joined fields."""
    thinking = "".join(f"t{n:06d}." for n in range(20_000))
    text = "".join(f"w{n:06d}é " for n in range(20_000))
    signature = "s" * 4000
    pieces = [sse("message_start", message_start()), block_start_event(0, {"type": "thinking", "thinking": ""})]
    pieces += [delta_event(0, {"type": "thinking_delta", "thinking": thinking[i : i + 20]}) for i in range(0, len(thinking), 20)]
    pieces += [
        delta_event(0, {"type": "signature_delta", "signature": signature[i : i + 20]}) for i in range(0, len(signature), 20)
    ]
    pieces.append(block_start_event(1, {"type": "text", "text": "Start: "}))
    pieces += [delta_event(1, {"type": "text_delta", "text": text[i : i + 20]}) for i in range(0, len(text), 20)]
    pieces.append(sse("message_stop", {"type": "message_stop"}))
    result = reassemble("".join(pieces))
    assert result.message is not None
    assert result.message["content"] == [
        {"type": "thinking", "thinking": thinking, "signature": signature},
        {"type": "text", "text": "Start: " + text},
    ]


def test_a_long_line_in_many_small_chunks_is_one_event() -> None:
    """A 1 MB data line fed 10 characters at a time, then a CRLF split across two chunks."""
    data = "x" * 1_000_000
    text = f"event: big\r\ndata: {data}\r\n\r\nevent: next\r\ndata: {{}}\r\n\r\n"
    assert parse_in_pieces(text, 10) == [SSEEvent("big", data), SSEEvent("next", "{}")]


def test_a_cr_at_a_chunk_end_followed_by_chunks_without_breaks() -> None:
    """A held-back CR ends its line when the next chunk has no LF, even a chunk with no break at all."""
    parser = SSEParser()
    assert parser.feed("data: a\r") == []
    assert parser.feed("\rdata") == [SSEEvent("message", "a")]
    assert parser.feed(": b") == [] and parser.feed("c\r") == [] and parser.feed("d") == []
    assert parser.flush() == [SSEEvent("message", "bc")]


def test_a_non_string_delta_is_kept_not_joined() -> None:
    text = "".join(
        [
            sse("message_start", message_start()),
            block_start_event(0, {"type": "text", "text": ""}),
            delta_event(0, {"type": "text_delta", "text": "ok"}),
            delta_event(0, {"type": "text_delta", "text": 5}),
            block_start_event(1, {"type": "thinking", "thinking": None}),
            delta_event(1, {"type": "thinking_delta", "thinking": "x"}),
        ]
    )
    result = reassemble(text)
    assert result.message is not None
    assert result.message["content"] == [
        {"type": "text", "text": "ok", "kgb_unknown_deltas": [{"type": "text_delta", "text": 5}]},
        {"type": "thinking", "thinking": None, "kgb_unknown_deltas": [{"type": "thinking_delta", "thinking": "x"}]},
    ]


def test_a_restarted_block_drops_its_predecessors_text() -> None:
    text = "".join(
        [
            sse("message_start", message_start()),
            block_start_event(0, {"type": "text", "text": ""}),
            delta_event(0, {"type": "text_delta", "text": "old"}),
            block_start_event(0, {"type": "text", "text": ""}),
            delta_event(0, {"type": "text_delta", "text": "new"}),
        ]
    )
    result = reassemble(text)
    assert result.message is not None
    assert result.message["content"] == [{"type": "text", "text": "new"}]


def general(text: str) -> Reassembled:
    """The reference: every event through the parser and the assembler, no fast lane."""
    parser, assembler = SSEParser(), MessageAssembler()
    for event in parser.feed(text) + parser.flush():
        assembler.feed(event)
    return assembler.finish()


def streamed(text: str, size: int) -> Reassembled:
    stream = MessageStream()
    for start in range(0, len(text), size):
        stream.feed(text[start : start + size])
    return stream.finish()


def raw_delta(data: str, newline: str = "\n") -> str:
    return f"event: content_block_delta{newline}data: {data}{newline}{newline}"


def canonical(text_json: str, index: int = 0, kind: str = "text") -> str:
    """A delta framed byte for byte as Anthropic does; `text_json` is the string's JSON body, escapes and all."""
    return raw_delta(f'{{"type":"content_block_delta","index":{index},"delta":{{"type":"{kind}_delta","{kind}":"{text_json}"}}}}')


TRICKY_STREAM = "".join(
    [
        sse("message_start", message_start()),
        block_start_event(0, {"type": "thinking", "thinking": ""}),
        canonical("plain ", kind="thinking"),
        canonical(r"line\nbreak \"quoted\" back\\slash \u00e9 \ud83d\ude00", kind="thinking"),
        canonical("ends in a backslash\\", kind="thinking"),
        canonical('unescaped "quote', kind="thinking"),
        canonical("raw\ttab", kind="thinking"),
        canonical("raw \u2028 separator and \x7f", kind="thinking"),
        canonical(r"bad escape \q", kind="thinking"),
        canonical(r"lone \ud800 surrogate", kind="thinking"),
        raw_delta('{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","thinking":"wrong key"}}'),
        block_start_event(1, {"type": "text", "text": None}),
        canonical("into a non-string", index=1),
        block_start_event(2, {"type": "text", "text": ""}),
        canonical("a", index=2),
        raw_delta('{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"b","extra":1}}'),
        raw_delta('{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"c"},"x":"y"}'),
        raw_delta('{"type":"content_block_delta","index":02,"delta":{"type":"text_delta","text":"leading zero"}}'),
        raw_delta('{"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "spaced"}}'),
        canonical("then", index=2),
        sse("ping", {"type": "ping"}),
        canonical(" ping", index=2),
        ": a comment\n",
        canonical(" comment", index=2),
        "id: 7\n",
        canonical(" with id", index=2),
        canonical(" crlf", index=2).replace("\n", "\r\n"),
        canonical(" cr", index=2).replace("\n", "\r"),
        canonical(" lf", index=2),
        canonical(" other block", index=3),
        canonical(" back", index=2),
        "event: content_block_delta\ndata: " + "x" * 5000 + "\n\n",
        canonical(" long " + "y" * 5000, index=2),
        sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
        sse("message_stop", {"type": "message_stop"}),
    ]
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 150, 4097, len(TRICKY_STREAM)])
def test_the_fast_lane_gives_what_the_general_path_gives(size: int) -> None:
    """Every shape near the canonical one, however the chunks fall: the same message, the same unknown events."""
    expected = general(TRICKY_STREAM)
    assert streamed(TRICKY_STREAM, size) == expected
    assert expected.message is not None
    assert expected.message["content"][2]["text"].startswith("abcspacedthen ping comment with id crlf cr lf back long yyy")


def test_an_unfinished_stream_keeps_its_last_partial_event_as_the_general_path_does() -> None:
    text = TRICKY_STREAM[: TRICKY_STREAM.index(" back") + 40]
    for size in (1, 5, 64, len(text)):
        assert streamed(text, size) == general(text)


def test_canonical_deltas_skip_the_general_path_however_the_chunks_fall(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the lane: a long answer's deltas never become one parsed event each."""
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(MessageAssembler, "_block_delta", lambda self, data: calls.append(data))
    words = [f"w{n:05d} \\n" for n in range(2000)]
    text = "".join([block_start_event(0, {"type": "text", "text": ""}), *(canonical(w) for w in words)])
    for size in (1, 64, 1000, len(text)):
        calls.clear()
        result = streamed(text, size)
        assert calls == []
        assert result.message is None  # no message_start: blocks only, checked below
    stream = MessageStream()
    stream.feed(sse("message_start", message_start()) + text)
    message = stream.finish().message
    assert message is not None and message["content"] == [
        {"type": "text", "text": "".join(w.replace("\\n", "\n") for w in words)}
    ]


def test_events_the_assembler_cannot_read_are_kept_not_raised() -> None:
    """The recorder's last events are assembled in `finish`, outside its guard: nothing there may raise."""
    odd = [
        raw_delta('{"type":"content_block_delta","index":"x","delta":{"type":"text_delta","text":"a"}}'),
        raw_delta('{"type":"content_block_delta","index":0,"delta":["not", "an", "object"]}'),
        'event: message_delta\ndata: {"type":"message_delta","delta":[1, 2]}\n\n',
        'event: content_block_start\ndata: {"type":"content_block_start","index":[0]}\n\n',
    ]
    text = sse("message_start", message_start()) + block_start_event(0, {"type": "text", "text": ""}) + "".join(odd)
    result = streamed(text, 7)
    assert result == general(text)
    assert [event["data"]["type"] for event in result.unknown_events] == [
        "content_block_delta",
        "content_block_delta",
        "message_delta",
        "content_block_start",
    ]


PLAIN_RUNS = "".join(
    [
        sse("message_start", message_start()),
        block_start_event(0, {"type": "text", "text": ""}),
        *(canonical(text) for text in ["one ", "two ", "raw\ttab ", "three ", "é ünï ", "", "four ", r"esc\"aped "]),
        *(canonical(text) for text in ["five ", "six ", "\u2028 "]),
        canonical("other block", index=1),
        canonical("seven"),
    ]
)


@pytest.mark.parametrize("size", [1, 5, 90, 700, len(PLAIN_RUNS)])
def test_runs_of_plain_deltas_broken_by_an_escape_or_a_raw_control_give_what_the_general_path_gives(size: int) -> None:
    """Non-ASCII, empty and escaped strings within one run of a block's deltas (a raw tab is no JSON: that
    delta is kept as an unknown event, by both paths)."""
    expected = general(PLAIN_RUNS)
    assert streamed(PLAIN_RUNS, size) == expected
    assert expected.message is not None
    assert [block["text"] for block in expected.message["content"]] == [
        'one two three é ünï four esc"aped five six \u2028 seven',
        "other block",
    ]
