"""The metrics tables: add a batch's halves, then count and price the exchanges it completed.

One statement per kind of write whatever the batch size (arrays through
``unnest``), so a batch of 500 events costs five round trips. The halves of
one exchange may sit in the same batch, in two batches, or come twice: the
``add_*`` statements return only the rows that gained a half now, and a row
is complete in the statement that brings its second half, so each exchange
reaches the rollups once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import asyncpg

from consumers.metrics.prices import PriceTable
from consumers.metrics.rollup import (
    Priced, RequestHalf, ResponseHalf, Totals, exchange_from_row, price, request_half, response_half, rollup,
)
from consumers.source import Record
from consumers.sql import Queries, load_queries


@cache
def queries() -> Queries:
    return load_queries("consumers.metrics")


def halves(records: Sequence[Record]) -> tuple[list[RequestHalf], list[ResponseHalf]]:
    """Each exchange's first request and first response in the batch; events without their half are skipped.

    Sorted by exchange id, as the rollup rows are by key, so that two
    transactions touching the same rows (a replay group beside the live one,
    a partition moving mid-batch) lock them in the same order and never
    deadlock.
    """
    requests: dict[str, RequestHalf] = {}
    responses: dict[str, ResponseHalf] = {}
    for record in records:
        event = record.event
        if event["kind"] == "REQUEST" and event["request"] is not None:
            requests.setdefault(event["exchange_id"], request_half(event))
        elif event["kind"] == "RESPONSE" and event["response"] is not None:
            responses.setdefault(event["exchange_id"], response_half(event))
    return sorted(requests.values(), key=_exchange_id), sorted(responses.values(), key=_exchange_id)


def _exchange_id(half: RequestHalf | ResponseHalf) -> str:
    return half.exchange_id


def columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows turned into one list per column, the shape ``unnest`` takes."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else []


def request_columns(h: RequestHalf) -> tuple[Any, ...]:
    return (h.exchange_id, h.session_key, h.agent_id, h.day, h.started_at, h.model, h.kind, h.path)


def response_columns(h: ResponseHalf) -> tuple[Any, ...]:
    t = h.tokens
    return (
        h.exchange_id, h.session_key, h.agent_id, h.day, h.started_at, h.status, h.error_type, h.interrupted,
        h.has_usage, t.input, t.output, t.cache_write_5m, t.cache_write_1h, t.cache_read, t.web_search_requests,
        h.ttfb_ms, h.duration_ms,
    )


def daily_columns(key: tuple[Any, ...], t: Totals) -> tuple[Any, ...]:
    return (
        *key, t.requests, t.errors, t.interrupted, t.input, t.output, t.cache_write_5m, t.cache_write_1h,
        t.cache_read, t.web_search_requests, t.cost, t.unpriced_requests, t.ttfb_ms_sum, t.ttfb_count,
        t.duration_ms_sum,
    )


async def add_halves(conn: asyncpg.Connection, sql: str, rows: list[tuple[Any, ...]]) -> list[asyncpg.Record]:
    """The rows this statement completed (both halves now present)."""
    if not rows:
        return []
    returned = await conn.fetch(sql, *columns(rows))
    return [row for row in returned if row["has_request"] and row["has_response"]]


async def write_usage(conn: asyncpg.Connection, records: Sequence[Record], prices: PriceTable) -> list[Priced]:
    """Store the batch's halves and roll up what they completed; returns those exchanges, priced.

    Call inside a transaction: the caller publishes the returned exchanges to
    Prometheus only once it has committed.
    """
    q = queries()
    requests, responses = halves(records)
    completed = await add_halves(conn, q.add_requests, [request_columns(h) for h in requests])
    completed += await add_halves(conn, q.add_responses, [response_columns(h) for h in responses])
    priced = [price(exchange_from_row(row), prices) for row in completed]
    if not priced:
        return []
    await conn.execute(
        q.set_costs, [p.exchange.exchange_id for p in priced], [p.cost for p in priced],
        [p.unpriced for p in priced], prices.version,
    )
    totals = rollup(priced)
    ordered = sorted(totals.items())
    await conn.execute(q.add_daily, *columns([daily_columns(key, t) for key, t in ordered]))
    errors = [(*key, error_type, n) for key, t in ordered for error_type, n in sorted(t.errors_by_type.items())]
    if errors:
        await conn.execute(q.add_daily_errors, *columns(errors))
    return priced
