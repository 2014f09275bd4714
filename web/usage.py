"""The usage page's numbers: the metrics rollups per day and model, as charts, a table and CSV.

The rows are `kgb usage --by day,model`'s (`consumers.metrics.usage`), so
the page, the CSV and the command line always agree. The charts get plain
numbers (cost as a float of dollars: a chart has no use for exact cents);
the table and the CSV keep the exact decimals.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from consumers.metrics.usage import total

COLUMNS = (
    "day",
    "model",
    "requests",
    "errors",
    "interrupted",
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "web_search_requests",
    "cost_usd",
    "unpriced_requests",
)
TOKEN_SERIES = (
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_write_5m_tokens", "cache write 5m"),
    ("cache_write_1h_tokens", "cache write 1h"),
    ("cache_read_tokens", "cache read"),
)


def by_model(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per model over the whole range, the costliest first."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["model"]].append(row)
    summed = [{"model": model, **total(group)} for model, group in groups.items()]
    return sorted(summed, key=lambda r: (-r["priced_cost_usd"], r["model"] or ""))


def chart_data(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Days, tokens per day by kind, and cost per day by model, for the page's script to draw."""
    days = sorted({row["day"] for row in rows})
    index = {d: i for i, d in enumerate(days)}
    tokens = {name: [0] * len(days) for name, _ in TOKEN_SERIES}
    costs: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(days))
    for row in rows:
        i = index[row["day"]]
        for name, _ in TOKEN_SERIES:
            tokens[name][i] += row[name]
        costs[row["model"] or "(none)"][i] += float(row["cost_usd"] or 0)
    return {
        "days": [d.isoformat() for d in days],
        "tokens": [{"label": label, "data": tokens[name]} for name, label in TOKEN_SERIES],
        "cost": [{"label": model, "data": values} for model, values in sorted(costs.items())],
    }


def as_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as CSV: one line per day and model, costs as exact decimals, empty when unpriced."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in COLUMNS])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value  # a spreadsheet must not take a captured model name for a formula
    return str(value)
