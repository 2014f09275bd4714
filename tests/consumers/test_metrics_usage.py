"""`kgb usage` without a database: its options, ccusage's 5-hour blocks, and the table, JSON and CSV it prints."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from consumers.metrics.blocks import blocks, status
from consumers.metrics.usage import Query, Report, as_csv, as_json, as_table, block_row, cost_row, parse_groups, parse_query


def t(moment: str) -> datetime:
    return datetime.fromisoformat(moment).replace(tzinfo=UTC)


def hour(
    first: str, last: str | None = None, model: str = "claude-opus-5-5", requests: int = 1, cost: str = "0.01", **group: Any
) -> dict[str, Any]:
    """An hourly rollup row as the report query gives it for blocks."""
    start = t(first).replace(minute=0, second=0)
    return {
        "hour": start,
        "first_at": t(first),
        "last_at": t(last or first),
        "model": model,
        "requests": requests,
        "errors": 0,
        "input_tokens": 10 * requests,
        "output_tokens": requests,
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 0,
        "cache_read_tokens": 0,
        "unpriced_requests": 0,
        "priced_cost_usd": Decimal(cost),
        **group,
    }


def test_blocks_start_on_the_hour_last_five_hours_and_show_gaps() -> None:
    hours = [
        hour("2026-11-03T09:20", "2026-11-03T09:59"),
        hour("2026-11-03T13:10", model="claude-haiku-5-5"),  # 13:10 is inside 09:00-14:00
        hour("2026-11-03T14:00:00"),  # 14:00 is not: the next block
        hour("2026-11-03T18:30"),  # 4h30m after 14:00: same block
        hour("2026-11-04T03:05"),  # more than 5h after 18:30: a gap, then a block
    ]
    found = blocks(hours, [])
    assert [(b.start, b.gap, b.sums["requests"]) for b in found] == [
        (t("2026-11-03T09:00"), False, 2),
        (t("2026-11-03T14:00"), False, 2),
        (t("2026-11-03T23:30"), True, 0),
        (t("2026-11-04T03:00"), False, 1),
    ]
    first, second, gap, _last = found
    assert first.models == ["claude-opus-5-5", "claude-haiku-5-5"] and first.end == t("2026-11-03T14:00")
    assert first.priced_cost == Decimal("0.02") and second.last_at == t("2026-11-03T18:30")
    assert (gap.start, gap.end) == (t("2026-11-03T23:30"), t("2026-11-04T03:05"))
    now = t("2026-11-04T05:00")
    assert [status(b, now) for b in found] == ["done", "done", "gap 3h 35m", "active, 3h 00m left"]


def test_a_block_whose_last_request_is_five_hours_old_is_done() -> None:
    (b,) = blocks([hour("2026-11-04T03:05")], [])
    assert b.active(t("2026-11-04T07:59")) and not b.active(t("2026-11-04T08:00"))
    assert not b.active(t("2026-11-04T08:06"))


def test_blocks_are_per_group() -> None:
    hours = sorted(
        [
            hour("2026-11-03T09:20", key_fingerprint="k1"),
            hour("2026-11-03T10:10", key_fingerprint="k2"),
            hour("2026-11-03T12:00", key_fingerprint="k1"),
        ],
        key=lambda h: (h["key_fingerprint"], h["hour"]),
    )
    found = blocks(hours, ["key_fingerprint"])
    assert [(b.group, b.start, b.sums["requests"]) for b in found] == [
        (("k1",), t("2026-11-03T09:00"), 2),
        (("k2",), t("2026-11-03T10:00"), 1),
    ]


@pytest.mark.parametrize(
    ("raw", "groups"),
    [
        ("day,model", ("day", "model")),
        ("model , day", ("day", "model")),
        ("project,key,month", ("month", "project", "key")),
        ("key,block", ("block", "key")),
    ],
)
def test_groups_in_report_order(raw: str, groups: tuple[str, ...]) -> None:
    assert parse_groups(raw) == groups


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("week", "--by takes a comma list of day, month, block, model, session, kind, project, key"),
        ("", "--by takes a comma list"),
        ("day,month", "--by takes one of day, month, block at a time"),
        ("block,day", "--by takes one of day, month, block at a time"),
    ],
)
def test_bad_groups_are_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_groups(raw)


def test_since_and_until_are_days_in_order() -> None:
    q = parse_query("day", "2026-11-01", "2026-11-30")
    assert (q.since.isoformat(), q.until.isoformat()) == ("2026-11-01", "2026-11-30")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="--until 2026-10-01 is before --since 2026-11-01"):
        parse_query("day", "2026-11-01", "2026-10-01")
    with pytest.raises(ValueError, match="--since takes a UTC day, YYYY-MM-DD; got 'yesterday'"):
        parse_query("day", "yesterday", None)


def report_row(model: str, requests: int, priced: str | None, unpriced: int = 0) -> dict[str, Any]:
    counts = dict.fromkeys(
        (
            "errors",
            "interrupted",
            "input_tokens",
            "output_tokens",
            "cache_write_5m_tokens",
            "cache_write_1h_tokens",
            "cache_read_tokens",
            "thinking_tokens",
            "web_search_requests",
            "web_fetch_requests",
            "long_context_requests",
            "fast_requests",
            "us_only_requests",
            "batch_requests",
            "compactions",
        ),
        0,
    )
    return cost_row(
        {
            "model": model,
            "requests": requests,
            **counts,
            "priced_cost_usd": priced and Decimal(priced),
            "unpriced_requests": unpriced,
        }
    )


UNPRICED = Report(
    Query(("model",)),
    [report_row("claude-imaginary-9", 2, None, 2), report_row("claude-opus-5-5", 3, "0.123456789")],
    [("claude-imaginary-9", 2)],
)


def test_a_total_with_unpriced_usage_says_unknown_and_names_what_had_no_price() -> None:
    lines = as_table(UNPRICED).splitlines()
    assert lines[0].split() == [
        "model",
        "requests",
        "errors",
        "input",
        "output",
        "cache_w_5m",
        "cache_w_1h",
        "cache_read",
        "web_search",
        "cost_usd",
    ]
    assert lines[1].split()[0] == "claude-imaginary-9" and lines[1].split()[-1] == "unknown"
    assert lines[2].split()[-1] == "0.123457"
    assert lines[3].split()[0] == "TOTAL" and lines[3].split()[1] == "5" and lines[3].split()[-1] == "unknown"
    assert lines[4:] == [
        "unknown: 2 requests with usage the price table has no price for:",
        "  claude-imaginary-9: 2 requests",
        "The priced requests cost 0.123457 USD. Price what is missing in a KGB_PRICES file and rebuild the tables "
        "(README, Token usage and cost).",
    ]
    assert not any("0.000000" in line for line in lines)


def test_json_and_csv_carry_the_unknown_cost_and_the_priced_part_exactly() -> None:
    document = json.loads(as_json(UNPRICED))
    assert document["total"]["cost_usd"] is None and document["total"]["priced_cost_usd"] == "0.123456789"
    assert document["unpriced"] == [{"model": "claude-imaginary-9", "requests": 2}]
    rows = list(csv.DictReader(io.StringIO(as_csv(UNPRICED))))
    assert [(r["model"], r["cost_usd"], r["priced_cost_usd"]) for r in rows] == [
        ("claude-imaginary-9", "", "0"),
        ("claude-opus-5-5", "0.123456789", "0.123456789"),
    ]


def test_a_fully_priced_report_prints_its_total_and_no_note() -> None:
    report = Report(Query(("model",)), [report_row("claude-opus-5-5", 3, "0.5")], [])
    lines = as_table(report).splitlines()
    assert lines[-1].split()[0] == "TOTAL" and lines[-1].split()[-1] == "0.500000"
    assert as_csv(Report(Query(("model",)), [], [])) == "" and json.loads(as_json(report))["total"]["cost_usd"] == "0.5"


def test_block_rows_in_the_table() -> None:
    now = t("2026-11-03T10:00")
    rows = [block_row(b, [], now) for b in blocks([hour("2026-11-03T09:20")], [])]
    lines = as_table(Report(Query(("block",)), rows, [])).splitlines()
    assert lines[0].split()[:3] == ["block_start", "status", "models"]
    assert lines[1].startswith("2026-11-03 09:00  active, 4h 00m left  claude-opus-5-5")
    assert rows[0]["end"] == rows[0]["block"] + timedelta(hours=5)
