"""`kgb usage`: the rollup tables as a terminal table, JSON or CSV.

Reads only the hourly rollups, so it is cheap however many exchanges there
are, and shows exactly what the metrics consumer has counted. Days and months
are UTC; ``--by block`` is ccusage's 5-hour blocks (`consumers.metrics.blocks`).
Costs stay `Decimal` to the end: JSON carries them as strings, so a script
summing them gets the same cents the table shows.

A cost that includes usage the price table could not price is unknown, and
says so (``unknown`` in the table, ``null`` in JSON, empty in CSV) rather than
print the priced part as if it were the whole; the priced part is beside it
(``priced_cost_usd``), and the report names what had no price.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from consumers.metrics.blocks import Block, blocks, status
from consumers.metrics.settings import MetricsSettings
from consumers.metrics.store import queries
from common.config import SettingsError, mask_url

# --by names, and the column each groups by, in the order the report shows them.
GROUPS = {
    "day": "day",
    "month": "month",
    "block": "block",
    "model": "model",
    "session": "session_key",
    "kind": "kind",
    "project": "project",
    "key": "key_fingerprint",
}
_TIMES = ("day", "month", "block")
_GROUPED = {*GROUPS.values(), "hour", "first_at", "last_at"}  # the columns a report row drops unless grouped by
COUNTS = (
    "requests",
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
    "unpriced_requests",
    "long_context_requests",
    "fast_requests",
    "us_only_requests",
    "batch_requests",
    "compactions",
)
TABLE_NUMBERS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "web_search_requests",
    "cost_usd",
)
_HEADINGS = {
    "session_key": "session",
    "key_fingerprint": "key",
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_write_5m_tokens": "cache_w_5m",
    "cache_write_1h_tokens": "cache_w_1h",
    "cache_read_tokens": "cache_read",
    "web_search_requests": "web_search",
    "block": "block_start",
}
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Query:
    groups: tuple[str, ...]
    since: date | None = None
    until: date | None = None


@dataclass(frozen=True)
class Report:
    query: Query
    rows: list[dict[str, Any]]
    unpriced: list[tuple[str, int]]  # what had no price, with its requests


def parse_groups(raw: str) -> tuple[str, ...]:
    """``day,model`` → ("day", "model"); unknown names refused with the allowed ones."""
    groups = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ValueError(f"--by takes a comma list of {', '.join(GROUPS)}; got {raw!r}")
    if len([g for g in groups if g in _TIMES]) > 1:
        raise ValueError(f"--by takes one of {', '.join(_TIMES)} at a time; got {raw!r}")
    return tuple(sorted(groups, key=list(GROUPS).index))


def parse_query(by: str, since: str | None, until: str | None) -> Query:
    query = Query(parse_groups(by), _day("--since", since), _day("--until", until))
    if query.since and query.until and query.until < query.since:
        raise ValueError(f"--until {query.until} is before --since {query.since}")
    return query


def _day(option: str, raw: str | None) -> date | None:
    try:
        return date.fromisoformat(raw) if raw else None
    except ValueError:
        raise ValueError(f"{option} takes a UTC day, YYYY-MM-DD; got {raw!r}") from None


# --- reading --------------------------------------------------------------------------------


async def fetch_report(conn: asyncpg.Connection, query: Query, now: datetime | None = None) -> Report:
    q = queries()
    by_block = "block" in query.groups
    # blocks list their models and are built of hours: both are grouped by, whatever was asked
    flags = [g in query.groups or (by_block and g == "model") for g in GROUPS if g != "block"]
    rows = [dict(r) for r in await conn.fetch(q.usage_report, query.since, query.until, *flags, by_block)]
    if by_block:
        group_of = [GROUPS[g] for g in query.groups if g != "block"]
        hours = sorted(rows, key=lambda r: (*(r[g] for g in group_of), r["hour"]))
        rows = [block_row(b, group_of, now or datetime.now(UTC)) for b in blocks(hours, group_of)]
    else:
        keep = {GROUPS[g] for g in query.groups}
        rows = [cost_row({k: v for k, v in row.items() if k in keep or k not in _GROUPED}) for row in rows]
    unpriced = [(r["model"], r["requests"]) for r in await conn.fetch(q.unpriced_models, query.since, query.until)]
    return Report(query, rows, unpriced)


def cost_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its ``cost_usd``: the priced cost when all was priced, else None."""
    priced = row["priced_cost_usd"] or Decimal(0)
    return {**row, "priced_cost_usd": priced, "cost_usd": None if row["unpriced_requests"] else priced}


def block_row(block: Block, group_of: Sequence[str], now: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {
        "block": block.start,
        "end": block.end,
        "last_at": block.last_at,
        "status": status(block, now),
        "gap": block.gap,
        "active": block.active(now),
        **dict(zip(group_of, block.group, strict=True)),
        "models": ", ".join(m or "(none)" for m in block.models),
        **block.sums,
        "priced_cost_usd": block.priced_cost,
    }
    return cost_row(row)


def total(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of the rows' counts and costs; unknown when any row's is."""
    names = [name for name in COUNTS if not rows or name in rows[0]]
    summed: dict[str, Any] = {name: sum(row[name] for row in rows) for name in names}
    summed["priced_cost_usd"] = sum((row["priced_cost_usd"] for row in rows), Decimal(0))
    summed["cost_usd"] = None if any(row["cost_usd"] is None for row in rows) else summed["priced_cost_usd"]
    return summed


# --- writing --------------------------------------------------------------------------------


def as_json(report: Report) -> str:
    q = report.query
    document = {
        "since": q.since.isoformat() if q.since else None,
        "until": q.until.isoformat() if q.until else None,
        "by": list(q.groups),
        "rows": [plain(row) for row in report.rows if not row.get("gap")],
        "total": plain(total([r for r in report.rows if not r.get("gap")])),
        "unpriced": [{"model": model, "requests": n} for model, n in report.unpriced],
    }
    return json.dumps(document, indent=2)


def plain(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in row.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def as_csv(report: Report) -> str:
    """One line per row, every column, costs exact; an unknown cost is empty (its priced part is beside it)."""
    rows = [plain(row) for row in report.rows]
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue().rstrip("\n")


def as_table(report: Report) -> str:
    """Aligned columns, a TOTAL line, and what had no price, each by name."""
    keys = _table_keys(report.query)
    lines = [[_HEADINGS.get(c, c) for c in [*keys, *TABLE_NUMBERS]]]
    body = [r for r in report.rows if not r.get("gap")]
    for row in [*report.rows, {**total(body), keys[0]: "TOTAL"}]:
        lines.append([_cell(row, c) for c in [*keys, *TABLE_NUMBERS]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = "\n".join(
        "  ".join(cell.ljust(w) if i < len(keys) else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    )
    return text + "".join(f"\n{line}" for line in unpriced_lines(report, total(body)))


def _table_keys(query: Query) -> list[str]:
    if "block" in query.groups:
        return ["block", "status", *(GROUPS[g] for g in query.groups if g != "block"), "models"]
    return [GROUPS[g] for g in query.groups]


def unpriced_lines(report: Report, summed: Mapping[str, Any]) -> list[str]:
    """What the ``unknown`` costs leave out, named: printed under the table."""
    if summed["cost_usd"] is not None:
        return []
    lines = [f"{UNKNOWN}: {_requests(summed['unpriced_requests'])} with usage the price table has no price for:"]
    lines += [f"  {model}: {_requests(n)}" for model, n in report.unpriced]
    lines.append(
        f"The priced requests cost {summed['priced_cost_usd']:.6f} USD. Price what is missing in a KGB_PRICES "
        "file and rebuild the tables (README, Token usage and cost)."
    )
    return lines


def _requests(n: int) -> str:
    return f"{n:,} request" + ("" if n == 1 else "s")


def _cell(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if column == "cost_usd":
        return UNKNOWN if value is None else f"{value:.6f}"
    if column == "block" and isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if column == "model" and value == "":
        return "(none)"
    if column in ("project", "key_fingerprint") and value == "":
        return "(unknown)"
    if column == "key_fingerprint" and value:
        return value[:12]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


async def report(settings: MetricsSettings, query: Query, output: str = "table") -> str:
    """The report as text (``output``: table, json or csv); no tables yet (the consumer never ran) is an empty report."""
    try:
        conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.db_schema})
    except (OSError, asyncpg.PostgresError) as exc:
        raise SettingsError(f"cannot read usage from {mask_url(settings.database_url)} (KGB_DATABASE_URL): {exc}") from None
    try:
        result = await fetch_report(conn, query)
    except asyncpg.UndefinedTableError:
        result = Report(query, [], [])
    finally:
        await conn.close()
    return {"json": as_json, "csv": as_csv}.get(output, as_table)(result)
