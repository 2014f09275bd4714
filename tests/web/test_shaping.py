"""The pure functions that shape rows for pages: the session tree, a conversation's tool calls, query strings, CSV."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from web import conversation, exchange, tree, usage
from web.filters import BadRequest, Cursor, SessionFilter, usage_range


def row(kind: str, ordinal: int, **links: Any) -> dict[str, Any]:
    return {
        "id": links.pop("id", uuid.uuid4()),
        "kind": kind,
        "ordinal": ordinal,
        "parent_conversation_id": None,
        "summarises_conversation_id": None,
        "branch_of": None,
        **links,
    }


def ids(nodes: list[tree.Node]) -> list[Any]:
    return [n.id for n in nodes]


def test_a_compacted_thread_reads_as_its_parts_with_sub_agents_under_the_part_that_started_them() -> None:
    main = row("main", 0)
    sub = row("subagent", 1, parent_conversation_id=main["id"])
    nested = row("subagent", 2, parent_conversation_id=sub["id"])
    compaction = row("compaction", 3, summarises_conversation_id=main["id"])
    after = row("main", 4, summarises_conversation_id=main["id"])
    late = row("subagent", 5, parent_conversation_id=after["id"])
    title = row("title", 6)
    branch = row("main", 7, branch_of=after["id"])
    built = tree.build(
        [main, sub, nested, compaction, after, late, title, branch], {after["id"]: {"cost_usd": Decimal(1), "unpriced": 0}}
    )
    [thread] = built.threads
    assert thread.id == main["id"] and ids(thread.children) == [sub["id"]] and ids(thread.children[0].children) == [nested["id"]]
    assert ids(thread.parts) == [compaction["id"], after["id"]]
    assert ids(thread.parts[1].children) == [late["id"], branch["id"]] and thread.parts[1].cost == Decimal(1)
    assert ids(built.side) == [title["id"]] and built.unattached == []


def test_links_that_lead_nowhere_or_in_circles_still_place_everything_once() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    looped = [row("main", 0, id=a, summarises_conversation_id=b), row("main", 1, id=b, summarises_conversation_id=a)]
    orphan = row("subagent", 2, parent_conversation_id=uuid.uuid4())
    built = tree.build([*looped, orphan], {})
    placed = ids(built.threads) + ids(built.side) + ids(built.unattached)
    everything = placed + [p.id for n in built.threads + built.unattached for p in n.parts]
    assert sorted(map(str, everything)) == sorted(str(r["id"]) for r in [*looped, orphan])


def test_each_tool_call_finds_its_result_and_server_tool_errors_count_as_errors() -> None:
    messages = [
        {
            "position": 1,
            "content": [
                {"type": "tool_use", "id": "t1", "name": "Bash", "input": {}},
                {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}},
            ],
        },
        {
            "position": 2,
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "is_error": True,
                    "content": [
                        {"type": "text", "text": "boom"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/svg+xml", "data": "AA"}},
                    ],
                }
            ],
        },
        {
            "position": 3,
            "content": [
                {
                    "type": "web_search_tool_result",
                    "tool_use_id": "s1",
                    "content": {"type": "web_search_tool_result_error", "error_code": "max_uses_exceeded"},
                }
            ],
        },
    ]
    uses, results = conversation.tool_ends(messages)
    assert (uses["t1"].position, results["t1"].position, results["t1"].is_error) == (1, 2, True)
    assert [p.kind for p in results["t1"].parts] == ["text", "image", "other"] and results["t1"].text == "boom"
    assert conversation.is_error_result(messages[2]["content"][0])


def test_exchanges_hang_on_the_reply_they_produced() -> None:
    exchanges = [
        {
            "exchange_id": uuid.uuid4(),
            "reply_position": 1,
            "status": 529,
            "error_type": "overloaded_error",
            "client_disconnected": False,
            "upstream_complete": True,
        },
        {
            "exchange_id": uuid.uuid4(),
            "reply_position": 1,
            "status": 200,
            "error_type": None,
            "client_disconnected": True,
            "upstream_complete": True,
        },
        {
            "exchange_id": uuid.uuid4(),
            "reply_position": None,
            "status": 200,
            "error_type": None,
            "client_disconnected": False,
            "upstream_complete": False,
        },
    ]
    messages = [{"position": 0, "role": "user", "content": []}, {"position": 1, "role": "assistant", "content": []}]
    costs = {str(exchanges[1]["exchange_id"]): {"cost_usd": Decimal("0.5"), "unpriced": False}}
    page = conversation.build(messages, exchanges, costs, {}, {})
    unplaced, first, second = page.messages
    failed, cut = second.exchanges
    assert failed.failed and not failed.cut and cut.cut and cut.cost == Decimal("0.5")
    assert first.exchanges == [] and unplaced.position is None and [x.cut for x in unplaced.exchanges] == [True]


def test_the_sessions_cursor_round_trips_and_rejects_forgeries() -> None:
    cursor = Cursor(datetime(2026, 11, 25, 12, 0, 1, 5, tzinfo=UTC), "key:ab/c?d")
    assert Cursor.decode(cursor.encode()) == cursor
    chosen = SessionFilter.parse({"after": cursor.encode(), "model": " claude-opus-4-8 ", "from": "2026-11-01"})
    assert chosen.after == cursor and chosen.model == "claude-opus-4-8"
    assert chosen.arguments(51)[:4] == (cursor.last_seen, cursor.session_key, datetime(2026, 11, 1, tzinfo=UTC), None)
    for forged in ("!!", "bm90IGpzb24", "WzFd"):
        with pytest.raises(BadRequest):
            Cursor.decode(forged)


def test_usage_defaults_to_the_last_thirty_days() -> None:
    today = date(2026, 11, 30)
    assert usage_range({}, today) == (date(2026, 11, 1), None)
    assert usage_range({"from": ""}, today) == (None, None)
    assert usage_range({"from": "2026-01-01", "until": "2026-01-31"}, today) == (date(2026, 1, 1), date(2026, 1, 31))


def test_usage_csv_keeps_exact_costs_and_defuses_formulas() -> None:
    rows = [
        {
            "day": date(2026, 11, 1),
            "model": '=HYPERLINK("x")',
            "requests": 2,
            "errors": 0,
            "interrupted": 0,
            "input_tokens": 5,
            "output_tokens": 7,
            "cache_write_5m_tokens": 0,
            "cache_write_1h_tokens": 0,
            "cache_read_tokens": 0,
            "web_search_requests": 0,
            "cost_usd": Decimal("0.000123"),
            "unpriced_requests": 0,
        }
    ]
    [parsed] = list(csv.DictReader(io.StringIO(usage.as_csv(rows))))
    assert parsed["model"].startswith("'=") and parsed["cost_usd"] == "0.000123" and parsed["day"] == "2026-11-01"
    chart = usage.chart_data(rows)
    assert chart["days"] == ["2026-11-01"] and chart["tokens"][0]["data"] == [5]


def test_a_body_that_is_not_text_is_shown_as_hex_and_downloaded_as_bytes() -> None:
    body = exchange.stored_body(None, None, b"\x00\x01abc\xff")
    assert (
        exchange.hex_dump(body.value).startswith("00000000  00 01 61 62 63 ff")
        and body.download()[1] == "application/octet-stream"
    )
    assert exchange.stored_body({"a": 1}, None, None).download() == (b'{\n  "a": 1\n}', "application/json")
