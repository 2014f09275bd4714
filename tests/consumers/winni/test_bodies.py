"""Request bodies read by simdjson give what orjson gives, whatever the bytes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import simdjson

from consumers.winni.bodies import Body, Sent, as_body, read_body
from common.documents import parse_json

BODY = {
    "model": "m",
    "messages": [
        {"role": "user", "content": "hi \u00e9 \U0001f600"},
        {"role": "assistant", "content": [{"type": "text", "text": "x"}]},
    ],
    "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
    "tools": [{"name": "T", "input_schema": {"a": 1.5e3, "b": -0.0}}],
    "metadata": {"user_id": "u"},
    "max_tokens": 100,
    "stream": True,
}


def seen(body: Any) -> Any:
    """A read body as values only, so bodies read by either parser compare."""
    if not isinstance(body, Body):
        return body
    messages = None if body.messages is None else [m.value() for m in body.messages]
    return body.fields, list(body.fields), messages, {name: part.value() for name, part in body.parts.items()}


@pytest.mark.parametrize(
    "raw",
    [
        orjson.dumps(BODY),
        orjson.dumps(BODY, option=orjson.OPT_INDENT_2),
        b'{"messages":"not a list","a":[1e5,-0.0,18446744073709551615]}',
        b'{"model":"m"}',
        b'{"messages":[1,"x",null,[{"a":1,"a":2}]]}',  # a message naming a key twice: the last value, as orjson
        b'{"messages":[],"model":"a","model":"b"}',  # a field named twice
        b'{"messages":[],"n":18446744073709551616}',  # beyond 64 bits: simdjson refuses it
        b'\xef\xbb\xbf{"messages":[]}',  # a byte order mark: orjson refuses it
        b'{"messages":[{"content":"\\u0000"}]}',
        b'[1,{"a":2}]',
        b'"text"',
        b"12",
        b"",
        b"not json",
        b'{"a":"\xff"}',
        b'{"a":1,}',
        b'{"a":"\\ud800"}',
    ],
)
def test_simdjson_reads_what_orjson_reads(raw: bytes) -> None:
    assert repr(seen(read_body(raw, simdjson.Parser()))) == repr(seen(as_body(parse_json(raw))))


def test_a_message_resent_has_the_same_key_and_another_does_not() -> None:
    parser = simdjson.Parser()
    first = read_body(orjson.dumps(BODY), parser)
    again = read_body(orjson.dumps({**BODY, "messages": [*BODY["messages"], {"role": "user", "content": "more"}]}), parser)
    assert [m.key for m in again.messages[:2]] == [m.key for m in first.messages]
    assert again.messages[2].key not in {m.key for m in first.messages}


def test_a_part_is_kept_as_sent_and_made_python_on_demand() -> None:
    part = read_body(orjson.dumps(BODY), simdjson.Parser()).parts["tools"]
    assert part == Sent.of(part.data) and part.value() == BODY["tools"]
