"""`kgb usage`: the rollup tables as a terminal table or JSON.

Reads only ``usage_daily``, so it is cheap however many exchanges there are,
and shows exactly what the metrics consumer has counted. Costs stay
`Decimal` to the end: JSON carries them as strings, so a script summing
them gets the same cents the table shows. A row with unpriced requests says
so; its cost covers only the priced ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg

from consumers.metrics.settings import MetricsSettings
from consumers.metrics.store import queries
from kgb.config import SettingsError, mask_url

GROUPS = ("day", "model", "session", "kind")
_GROUP_COLUMNS = {"day": "day", "model": "model", "session": "session_key", "kind": "kind"}
COUNTS = (
    "requests", "errors", "interrupted", "input_tokens", "output_tokens", "cache_write_5m_tokens",
    "cache_write_1h_tokens", "cache_read_tokens", "web_search_requests", "unpriced_requests",
)
_HEADINGS = {
    "day": "day", "model": "model", "session_key": "session", "kind": "kind", "requests": "requests",
    "errors": "errors", "input_tokens": "input", "output_tokens": "output", "cache_write_5m_tokens": "cache_w_5m",
    "cache_write_1h_tokens": "cache_w_1h", "cache_read_tokens": "cache_read", "web_search_requests": "web_search",
    "cost_usd": "cost_usd",
}


def parse_groups(raw: str) -> tuple[str, ...]:
    """``day,model`` → ("day", "model"); unknown names refused with the allowed ones."""
    groups = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ValueError(f"--by takes a comma list of {', '.join(GROUPS)}; got {raw!r}")
    return groups


async def fetch_report(conn: asyncpg.Connection, groups: Sequence[str], since: date | None) -> list[dict[str, Any]]:
    flags = [g in groups for g in GROUPS]
    rows = await conn.fetch(queries().usage_report, since, *flags)
    keep = {_GROUP_COLUMNS[g] for g in groups}
    return [{k: v for k, v in row.items() if k in keep or k not in _GROUP_COLUMNS.values()} for row in rows]


def total(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of the rows' counts and costs (a cost of None adds nothing)."""
    costs = [row["cost_usd"] for row in rows if row["cost_usd"] is not None]
    summed: dict[str, Any] = {name: sum(row[name] for row in rows) for name in COUNTS}
    summed["cost_usd"] = sum(costs, Decimal(0)) if costs else None
    return summed


def as_json(rows: Sequence[Mapping[str, Any]], groups: Sequence[str], since: date | None) -> str:
    def plain(row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: _plain(v) for k, v in row.items()}

    report = {
        "since": since.isoformat() if since else None,
        "by": list(groups),
        "rows": [plain(row) for row in rows],
        "total": plain(total(rows)),
    }
    return json.dumps(report, indent=2)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def as_table(rows: Sequence[Mapping[str, Any]], groups: Sequence[str]) -> str:
    """Aligned columns, a TOTAL line, and a note when some usage could not be priced."""
    keys = [_GROUP_COLUMNS[g] for g in groups]
    numbers = ["requests", "errors", "input_tokens", "output_tokens", "cache_write_5m_tokens",
               "cache_write_1h_tokens", "cache_read_tokens", "web_search_requests", "cost_usd"]
    lines = [[_HEADINGS[c] for c in keys + numbers]]
    summed = total(rows)
    for row in [*rows, {**summed, **{k: None for k in keys}, keys[0]: "TOTAL"}]:
        lines.append([_cell(row, c) for c in keys] + [_cell(row, c) for c in numbers])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = "\n".join(
        "  ".join(cell.ljust(w) if i < len(keys) else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    )
    if summed["unpriced_requests"]:
        text += f"\n* {summed['unpriced_requests']} requests on models without a price; their cost is not included"
    return text


def _cell(row: Mapping[str, Any], column: str) -> str:
    value = row[column]
    if column == "cost_usd":
        shown = "-" if value is None else f"{value:.6f}"
        return shown + ("*" if row["unpriced_requests"] else "")
    if column == "model" and value == "":
        return "(none)"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


async def report(settings: MetricsSettings, groups: Sequence[str], since: date | None, json_out: bool) -> str:
    """The report as text; no tables yet (the consumer never ran) is an empty report, not an error."""
    try:
        conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.db_schema})
    except (OSError, asyncpg.PostgresError) as exc:
        raise SettingsError(f"cannot read usage from {mask_url(settings.database_url)} (KGB_DATABASE_URL): {exc}") from None
    try:
        rows = await fetch_report(conn, groups, since)
    except asyncpg.UndefinedTableError:
        rows = []
    finally:
        await conn.close()
    return as_json(rows, groups, since) if json_out else as_table(rows, groups)
