"""The metrics tables: add a batch's halves, then count and price what it completed.

One statement per kind of write whatever the batch size (arrays through
``unnest``). The halves of one exchange may sit in the same batch, in two
batches, or come twice: the ``add_*`` statements return only the rows that
gained a half now, and a row is complete in the statement that brings its
second half, so each exchange reaches the rollups once. A Message Batches
results download adds the requests it bills (`consumers.metrics.batches`),
each once, as requests of kind ``batch``.

Side requests (title generation, token counts) name no working directory;
they take their session's, as the sessions seen so far (``usage_sessions``,
written first in the same transaction) know it when they complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any, NamedTuple

import asyncpg
import orjson

from consumers.metrics.batches import BatchItem, batch_items, is_batch_download
from consumers.metrics.billing import cost, parts_json
from consumers.metrics.prices import PriceTable
from consumers.metrics.rollup import (
    Exchange,
    Priced,
    RequestHalf,
    ResponseHalf,
    RollupKey,
    Totals,
    exchange_from_row,
    request_half,
    response_half,
    rollup,
)
from consumers.source import EventRecord
from consumers.sql import Queries, load_queries


@cache
def queries() -> Queries:
    return load_queries("consumers.metrics")


@dataclass(frozen=True, slots=True)
class Download:
    """A results file's requests, and the response half that brought them."""

    half: ResponseHalf
    items: list[BatchItem]


@dataclass
class Halves:
    requests: list[RequestHalf]
    responses: list[ResponseHalf]
    downloads: list[Download]


def halves(records: Sequence[EventRecord]) -> Halves:
    """Each exchange's first request and first response in the batch; events without their half are skipped.

    Sorted by exchange id, as the rollup rows are by key, so that two
    transactions touching the same rows (a replay group beside the live one,
    a partition moving mid-batch) lock them in the same order and never
    deadlock.
    """
    requests: dict[str, RequestHalf] = {}
    responses: dict[str, ResponseHalf] = {}
    downloads: dict[str, Download] = {}
    for record in records:
        event = record.event
        if event["kind"] == "REQUEST" and event["request"] is not None:
            requests.setdefault(event["exchange_id"], request_half(event))
        elif event["kind"] == "RESPONSE" and event["response"] is not None and event["exchange_id"] not in responses:
            half = responses[event["exchange_id"]] = response_half(event)
            if is_batch_download(event["response"]):
                downloads[half.exchange_id] = Download(half, batch_items(event["response"]["body"]))
    return Halves(
        sorted(requests.values(), key=_exchange_id),
        sorted(responses.values(), key=_exchange_id),
        [downloads[k] for k in sorted(downloads)],
    )


def _exchange_id(half: RequestHalf | ResponseHalf) -> str:
    return half.exchange_id


def columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows turned into one list per column, the shape ``unnest`` takes."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else []


# Rows of the named queries: field order is parameter order (tests/consumers/metrics/test_rollup.py checks it).


class UsageRequestRow(NamedTuple):
    exchange_id: str
    session_key: str
    agent_id: str | None
    day: date
    started_at: datetime
    model: str | None
    kind: str
    path: str
    project: str | None
    key_fingerprint: str | None


class UsageResponseRow(NamedTuple):
    exchange_id: str
    session_key: str
    agent_id: str | None
    day: date
    started_at: datetime
    status: int
    error_type: str | None
    interrupted: bool
    has_usage: bool
    input_tokens: int
    output_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cache_read_tokens: int
    web_search_requests: int
    ttfb_ms: float | None
    duration_ms: float
    thinking_tokens: int
    web_fetch_requests: int
    speed: str | None
    inference_geo: str | None
    service_tier: str | None
    stop_reason: str | None
    content_blocks: str | None
    parts: str | None
    compactions: int
    served_model: str | None
    key_fingerprint: str | None


class CostRow(NamedTuple):
    exchange_id: str
    cost_usd: Decimal | None
    unpriced_models: str
    prices_version: str
    project: str | None
    long_context: bool
    fast: bool
    us_only: bool
    batch: bool


class HourlyRow(NamedTuple):
    hour: datetime
    model: str
    session_key: str
    kind: str
    project: str
    key_fingerprint: str
    requests: int
    errors: int
    interrupted: int
    input_tokens: int
    output_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cache_read_tokens: int
    thinking_tokens: int
    web_search_requests: int
    web_fetch_requests: int
    cost_usd: Decimal | None
    unpriced_requests: int
    long_context_requests: int
    fast_requests: int
    us_only_requests: int
    batch_requests: int
    compactions: int
    ttfb_ms_sum: float
    ttfb_count: int
    duration_ms_sum: float
    duration_count: int
    first_at: datetime | None
    last_at: datetime | None


class TallyRow(NamedTuple):
    hour: datetime
    model: str
    session_key: str
    kind: str
    project: str
    key_fingerprint: str
    tally: str
    value: str
    n: int


class BatchItemRow(NamedTuple):
    item_id: str
    custom_id: str | None
    exchange_id: str
    session_key: str
    model: str | None
    counted_at: datetime
    input_tokens: int
    output_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cache_read_tokens: int
    cost_usd: Decimal | None
    unpriced_models: str
    prices_version: str


class ProjectRow(NamedTuple):
    session_key: str
    project: str
    seen_at: datetime


def request_columns(h: RequestHalf) -> UsageRequestRow:
    return UsageRequestRow(
        exchange_id=h.exchange_id,
        session_key=h.session_key,
        agent_id=h.agent_id,
        day=h.started_at.date(),
        started_at=h.started_at,
        model=h.model,
        kind=h.kind,
        path=h.path,
        project=h.project,
        key_fingerprint=h.key_fingerprint,
    )


def response_columns(h: ResponseHalf) -> UsageResponseRow:
    u = h.usage
    t = u.tokens
    return UsageResponseRow(
        exchange_id=h.exchange_id,
        session_key=h.session_key,
        agent_id=h.agent_id,
        day=h.started_at.date(),
        started_at=h.started_at,
        status=h.status,
        error_type=h.error_type,
        interrupted=h.interrupted,
        has_usage=h.has_usage,
        input_tokens=t.input,
        output_tokens=t.output,
        cache_write_5m_tokens=t.cache_write_5m,
        cache_write_1h_tokens=t.cache_write_1h,
        cache_read_tokens=t.cache_read,
        web_search_requests=u.web_search_requests,
        ttfb_ms=h.ttfb_ms,
        duration_ms=h.duration_ms,
        thinking_tokens=u.thinking,
        web_fetch_requests=u.web_fetch_requests,
        speed=u.speed,
        inference_geo=u.inference_geo,
        service_tier=u.service_tier,
        stop_reason=h.stop_reason,
        content_blocks=orjson.dumps(dict(h.blocks)).decode() if h.blocks else None,
        parts=parts_json(u),
        compactions=u.compactions,
        served_model=u.served_by,
        key_fingerprint=h.key_fingerprint,
    )


def cost_columns(p: Priced) -> CostRow:
    c = p.cost
    return CostRow(
        exchange_id=p.exchange.exchange_id,
        cost_usd=c.usd,
        unpriced_models=orjson.dumps(c.unpriced).decode(),
        prices_version=c.version,
        project=p.exchange.project or None,
        long_context=c.long_context,
        fast=c.fast,
        us_only=c.us_only,
        batch=c.batch,
    )


def hourly_columns(key: RollupKey, t: Totals) -> HourlyRow:
    return HourlyRow(
        **key._asdict(),
        requests=t.requests,
        errors=t.errors,
        interrupted=t.interrupted,
        input_tokens=t.input,
        output_tokens=t.output,
        cache_write_5m_tokens=t.cache_write_5m,
        cache_write_1h_tokens=t.cache_write_1h,
        cache_read_tokens=t.cache_read,
        thinking_tokens=t.thinking,
        web_search_requests=t.web_search_requests,
        web_fetch_requests=t.web_fetch_requests,
        cost_usd=t.cost,
        unpriced_requests=t.unpriced_requests,
        long_context_requests=t.long_context_requests,
        fast_requests=t.fast_requests,
        us_only_requests=t.us_only_requests,
        batch_requests=t.batch_requests,
        compactions=t.compactions,
        ttfb_ms_sum=t.ttfb_ms_sum,
        ttfb_count=t.ttfb_count,
        duration_ms_sum=t.duration_ms_sum,
        duration_count=t.duration_count,
        first_at=t.first_at,
        last_at=t.last_at,
    )


def tally_rows(key: RollupKey, t: Totals) -> list[TallyRow]:
    return [TallyRow(**key._asdict(), tally=tally, value=value, n=n) for (tally, value), n in sorted(t.tallies.items())]


def batch_exchanges(download: Download, project: str) -> list[Exchange]:
    """A download's requests as exchanges of kind ``batch``, at the download's time, session, project and key."""
    h = download.half
    return [
        Exchange(
            exchange_id=item.item_id,
            session_key=h.session_key,
            started_at=h.started_at,
            model=item.model,
            kind="batch",
            project=project,
            key_fingerprint=h.key_fingerprint or "",
            status=200,
            error_type=None,
            interrupted=False,
            has_usage=True,
            usage=item.usage,
            stop_reason=item.stop_reason,
            blocks=item.blocks,
            ttfb_ms=None,
            duration_ms=None,
        )
        for item in download.items
    ]


def batch_item_columns(p: Priced, item: BatchItem, exchange_id: str) -> BatchItemRow:
    e, t = p.exchange, p.exchange.usage.tokens
    return BatchItemRow(
        item_id=item.item_id,
        custom_id=item.custom_id,
        exchange_id=exchange_id,
        session_key=e.session_key,
        model=item.model,
        counted_at=e.started_at,
        input_tokens=t.input,
        output_tokens=t.output,
        cache_write_5m_tokens=t.cache_write_5m,
        cache_write_1h_tokens=t.cache_write_1h,
        cache_read_tokens=t.cache_read,
        cost_usd=p.cost.usd,
        unpriced_models=orjson.dumps(p.cost.unpriced).decode(),
        prices_version=p.cost.version,
    )


async def add_halves(conn: asyncpg.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[asyncpg.Record]:
    """The rows this statement completed (both halves now present)."""
    if not rows:
        return []
    returned = await conn.fetch(sql, *columns(rows))
    return [row for row in returned if row["has_request"] and row["has_response"]]


async def remember_projects(conn: asyncpg.Connection, requests: Iterable[RequestHalf]) -> None:
    latest: dict[str, RequestHalf] = {}
    for h in requests:
        if h.project and (h.session_key not in latest or h.started_at >= latest[h.session_key].started_at):
            latest[h.session_key] = h
    if latest:
        rows = [
            ProjectRow(session_key=k, project=h.project, seen_at=h.started_at) for k, h in sorted(latest.items()) if h.project
        ]
        await conn.execute(queries().remember_projects, *columns(rows))


async def session_projects(conn: asyncpg.Connection, sessions: Iterable[str]) -> Mapping[str, str]:
    keys = sorted(set(sessions))
    if not keys:
        return {}
    return {r["session_key"]: r["project"] for r in await conn.fetch(queries().session_projects, keys)}


async def count_downloads(
    conn: asyncpg.Connection, downloads: Sequence[Download], projects: Mapping[str, str], prices: PriceTable
) -> list[Priced]:
    """The batch requests not counted before, priced at the batch rate."""
    priced: dict[str, tuple[Priced, BatchItem, str]] = {}
    for download in downloads:
        for exchange, item in zip(
            batch_exchanges(download, projects.get(download.half.session_key, "")), download.items, strict=False
        ):
            p = Priced(exchange, cost(exchange.usage, exchange.model, exchange.started_at, prices, batch=True))
            priced.setdefault(item.item_id, (p, item, download.half.exchange_id))
    if not priced:
        return []
    rows = [batch_item_columns(*priced[k]) for k in sorted(priced)]
    new = {r["item_id"] for r in await conn.fetch(queries().add_batch_items, *columns(rows))}
    return [priced[k][0] for k in sorted(new)]


async def write_usage(conn: asyncpg.Connection, records: Sequence[EventRecord], prices: PriceTable) -> list[Priced]:
    """Store the batch's halves and roll up what they completed; returns those exchanges, priced.

    Call inside a transaction: the caller publishes the returned exchanges to
    Prometheus only once it has committed.
    """
    q = queries()
    batch = halves(records)
    await remember_projects(conn, batch.requests)
    completed = await add_halves(conn, q.add_requests, [request_columns(h) for h in batch.requests])
    completed += await add_halves(conn, q.add_responses, [response_columns(h) for h in batch.responses])
    projects = await session_projects(
        conn, [*(r["session_key"] for r in completed if not r["project"]), *(d.half.session_key for d in batch.downloads)]
    )
    exchanges = [exchange_from_row(row, projects.get(row["session_key"])) for row in completed]
    priced = [Priced(e, cost(e.usage, e.model, e.started_at, prices)) for e in exchanges]
    if priced:
        await conn.execute(q.set_costs, *columns([cost_columns(p) for p in priced]))
    priced += await count_downloads(conn, batch.downloads, projects, prices)
    if not priced:
        return []
    ordered = sorted(rollup(priced).items())
    await conn.execute(q.add_hourly, *columns([hourly_columns(key, t) for key, t in ordered]))
    tallies = [row for key, t in ordered for row in tally_rows(key, t)]
    if tallies:
        await conn.execute(q.add_tallies, *columns(tallies))
    return priced
