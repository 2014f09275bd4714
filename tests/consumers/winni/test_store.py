"""The pure half of the winni store: events to row parameters."""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

import orjson
import pytest
import simdjson

from consumers.errors import InvalidEvent
from consumers.source import Envelope, EventRecord
from consumers.winni import mcp, thread_rules
from consumers.winni.bodies import SentKey, jsonb_safe, part_hash, part_json, read_body
from consumers.winni.consumer import by_session
from consumers.winni.store import (
    SHARED_COLUMNS,
    DeadLetterRow,
    RequestRow,
    ResponseRow,
    body_columns,
    check,
    headers_json,
    paired,
    queries,
    request_row,
    response_row,
    split_body,
    timestamp,
    usage_numbers,
    without_nul,
)
from tests.consumers.factories import exchange, request_event
from tests.consumers.query_columns import parameter_columns


def test_text_bodies_go_to_postgresql_as_text_and_others_as_bytes() -> None:
    assert body_columns(b'{"a": "\xc3\xa9"}') == ('{"a": "é"}', None)
    assert body_columns(b"") == ("", None)
    assert body_columns(b"a\x00b") == (None, b"a\x00b")
    assert body_columns(b"\xff\xfe") == (None, b"\xff\xfe")


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        (r'{"t": "a\u0000b"}', r'{"t": "a\ufffdb"}'),
        (r'{"t": "a\\u0000b"}', r'{"t": "a\\u0000b"}'),  # an escaped backslash, then text
        (r'{"t": "a\\\u0000b"}', r'{"t": "a\\\ufffdb"}'),  # an escaped backslash, then the escape
        (r'{"t": "\u0000\u0000"}', r'{"t": "\ufffd\ufffd"}'),
        ('{"t": "plain"}', '{"t": "plain"}'),
        (None, None),
    ],
)
def test_nul_escapes_jsonb_refuses_are_replaced(raw: str | None, safe: str | None) -> None:
    assert jsonb_safe(raw) == safe


def test_headers_become_one_object_with_repeats_joined() -> None:
    headers = [{"name": "Accept", "value": "a"}, {"name": "X-Thing", "value": "1"}, {"name": "x-thing", "value": "2"}]
    assert headers_json(headers) == '{"accept":"a","x-thing":"1, 2"}'


def test_usage_numbers_tolerate_anything() -> None:
    full = '{"input_tokens": 3, "output_tokens": 12, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 0}'
    assert usage_numbers(full) == (3, 12, 5, 0)
    assert usage_numbers('{"input_tokens": 3, "output_tokens": "many", "cache_read_input_tokens": true}') == (3, None, None, None)
    assert usage_numbers('{"input_tokens": 99999999999999999999999}') == (None, None, None, None)
    assert usage_numbers("not json") == (None,) * 4
    assert usage_numbers("[1, 2]") == (None,) * 4
    assert usage_numbers(None) == (None,) * 4


def test_timestamps_keep_every_microsecond() -> None:
    at = timestamp(1_795_468_531_933_027)
    assert at is not None and at.isoformat() == "2026-11-23T21:15:31.933027+00:00"
    assert timestamp(None) is None


def test_contract_breakers_are_refused() -> None:
    check(request_event())
    with pytest.raises(InvalidEvent, match="has no request"):
        check(request_event(request=None))
    with pytest.raises(InvalidEvent, match="event_id 'e-1' is not a UUID"):
        check(request_event(event_id="e-1"))


def parameters(sql: str) -> int:
    return max(int(n) for n in re.findall(r"\$(\d+)", sql))


def test_rows_match_the_query_parameters() -> None:
    request, response = exchange()
    assert len(request_row(request)) == parameters(queries().upsert_request) == 29
    assert len(response_row(response)) == parameters(queries().upsert_response) == 31
    (row,) = paired([request_row(request)], [response_row(response)]).values()
    assert len(row) == parameters(queries().insert_exchange) == 29 + 31 - 7


@pytest.mark.parametrize(
    ("row", "query"),
    [
        (RequestRow, "upsert_request"),
        (ResponseRow, "upsert_response"),
        (DeadLetterRow, "insert_dead_letter"),
        (thread_rules.SessionRow, "upsert_session"),
        (thread_rules.TitleRow, "set_title"),
        (thread_rules.ConversationRow, "upsert_conversation"),
        (thread_rules.MessageRow, "upsert_message"),
        (thread_rules.ToolUseRow, "upsert_tool_use"),
        (thread_rules.ToolResultRow, "upsert_tool_result"),
        (mcp.McpSessionRow, "upsert_mcp_session"),
        (mcp.McpMessageRow, "insert_mcp_message"),
        (mcp.McpCallRow, "insert_mcp_call"),
        (mcp.McpAnswerRow, "answer_mcp_call"),
        (mcp.McpNoteRow, "note_mcp_call"),
        (mcp.McpHttpRow, "insert_mcp_http_request"),
    ],
)
def test_each_row_names_in_order_the_columns_its_query_writes(row: type[tuple[Any, ...]], query: str) -> None:
    assert row._fields == parameter_columns(queries()[query])  # type: ignore[attr-defined]


def test_the_rows_of_both_halves_share_their_first_columns_and_make_the_whole_exchange() -> None:
    assert RequestRow._fields[: len(SHARED_COLUMNS)] == ResponseRow._fields[: len(SHARED_COLUMNS)] == SHARED_COLUMNS
    whole = RequestRow._fields + ResponseRow._fields[len(SHARED_COLUMNS) :]
    assert whole == parameter_columns(queries().insert_exchange)
    assert thread_rules.ExchangeLink._fields == ("exchange_id", *RequestRow._fields[-4:])


def test_the_columns_of_a_query_are_read_from_its_sql() -> None:
    assert parameter_columns("INSERT INTO t (a, b, c) VALUES ($2, f($1, 'x'), $3::int) ON CONFLICT DO NOTHING") == ("b", "a", "c")
    assert parameter_columns("INSERT INTO t (a, b, c, d) SELECT $1, j.json, j.text, f.* FROM g($2) AS j, h() AS f") == ("a", "b")
    assert parameter_columns("UPDATE t SET b = b || $2::jsonb, c = c OR $3 WHERE a = $1") == ("a", "b", "c")
    assert parameter_columns("INSERT INTO t SELECT * FROM unnest($2::text[], $1::int[]) AS u (a, b)") == ("b", "a")
    with pytest.raises(AssertionError, match=r"no column takes parameters \[2\]"):
        parameter_columns("INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO UPDATE SET a = $2")


def test_only_exchanges_with_one_request_and_one_response_are_written_whole() -> None:
    (q1, r1), (q2, r2), (q3, _) = exchange(), exchange(), exchange()
    impostor = {**q2, "event_id": r2["event_id"]}
    rows = paired([request_row(e) for e in (q1, q2, impostor, q3)], [response_row(e) for e in (r1, r2)])
    assert list(rows) == [q1["exchange_id"]], "the second has two request rows, the third no response"
    assert rows[q1["exchange_id"]] == request_row(q1) + response_row(r1)[7:]


def test_batches_split_by_session_keep_sessions_whole_and_in_order() -> None:
    sessions = [f"session-{n}" for n in range(8)]
    records = [
        EventRecord(Envelope("t", 0, offset, None, None), request_event(session_id=sessions[offset % 8])) for offset in range(40)
    ]
    parts = by_session(records, 3)
    assert 1 < len(parts) <= 3
    assert sorted(r.envelope.offset for part in parts for r in part) == list(range(40))
    for part in parts:
        assert [r.envelope.offset for r in part] == sorted(r.envelope.offset for r in part)
    owners = {r.event["session_key"]: i for i, part in enumerate(parts) for r in part}
    assert all(owners[r.event["session_key"]] == i for i, part in enumerate(parts) for r in part)
    assert by_session([], 2) == [[]]
    assert by_session(records, 1) == [records]


def test_a_split_body_names_its_parts_by_the_hash_of_their_sorted_json() -> None:
    body = {"model": "m", "system": [{"type": "text", "text": "hi"}], "tools": [{"name": "T", "a": 1}], "messages": [{}]}
    raw = orjson.dumps(body)
    sorted_tools = b'[{"a":1,"name":"T"}]'
    assert part_hash(body["tools"]) == hashlib.blake2b(sorted_tools, digest_size=16).digest()
    split = split_body(raw, body)
    assert split is not None and split.rest == '{"model":"m"}' and split.messages == 1
    assert split.parts["tools"].hash == part_hash(body["tools"]) and part_json(split.parts["tools"].value) == sorted_tools
    given = {"system": b"s" * 16, "tools": b"t" * 16}
    assert {n: p.hash for n, p in split_body(raw, body, given).parts.items()} == given
    assert split_body(raw, {"model": "m"}) is None


@pytest.mark.parametrize("where", ["messages", "system", "rest"])
def test_a_body_holding_a_nul_escape_stays_whole_and_its_clean_values_are_remembered(where: str) -> None:
    parser = simdjson.Parser()
    clean: set[SentKey] = set()
    plain_body = b'{"model":"m","system":"s","messages":[{"role":"user","content":"hi"}]}'
    assert split_body(plain_body, read_body(plain_body, parser), clean=clean) is not None
    assert len(clean) == 2, "the message and the system prompt, each scanned once"
    dirty = {
        "messages": b'{"model":"m","system":"s","messages":[{"role":"user","content":"hi"},{"role":"user","content":"a\\u0000"}]}',
        "system": b'{"model":"m","system":"s\\u0000","messages":[{"role":"user","content":"hi"}]}',
        "rest": b'{"model":"m\\u0000","system":"s","messages":[{"role":"user","content":"hi"}]}',
    }[where]
    assert split_body(dirty, read_body(dirty, parser), clean=clean) is None
    assert split_body(dirty, read_body(dirty, parser)) is None, "scanning the raw body agrees"
    assert split_body(plain_body, read_body(plain_body, parser), clean=clean) is not None


def test_without_nul_marks_nul_in_strings_and_leaves_bytes_and_clean_rows_alone() -> None:
    class Row(NamedTuple):
        name: str
        body: bytes
        count: int

    dirty, clean = Row("a\x00b", b"\x00", 1), ("ok", None, 2)
    assert without_nul([dirty, clean]) == [Row("a\ufffdb", b"\x00", 1), clean]
    assert without_nul([clean])[0] is clean
