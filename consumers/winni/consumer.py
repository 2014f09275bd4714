"""`kgb consume winni`: exchange and MCP events into PostgreSQL, one transaction per batch.

It reads both topics, KGB_TOPIC and KGB_MCP_TOPIC, as one consumer group: the
tables of both live in one schema and are linked (a Claude Code tool use to
the MCP call that served it), and `kgb replay` rebuilds that schema from both
topics before one swap, so one reader with one set of end offsets is what
makes "nothing lost across the swap" hold for both. The link is made by
whichever batch brings the second side (`mcp_links`), in whichever process.

Each batch runs a list of stages inside one transaction; by default the
conversation stage (`conversation_stage.ConversationStage`), which writes the
exchanges (`store.write_exchanges`) and then the conversation tables, the MCP
stage (`mcp`) and the link stage (`mcp_links`), so they commit or roll back
together. Messages
that did not decode, and events that break the contract, go to
``dead_letters`` in the same transaction.

With ``writers`` > 1 a batch is split by session into that many transactions on
as many connections, run at once: PostgreSQL spends about a millisecond of one
core parsing each 75 KB request body into jsonb, so one connection caps the rate
at what one core can parse. A session's events always travel together (stages
may rely on that), and offsets are committed only once every part has
committed; a part that fails leaves the others committed, which a retry or
redelivery finds already stored.

Messages are stored without their search vectors (migration 010): a search
indexer (`search_index`), a task beside the consumer on a connection of its
own, builds them behind the batches, so full-text search costs the batches
nothing (KGB_WINNI_SEARCH_INDEX turns it off).

When a batch fails on its data (a value PostgreSQL refuses), it is written
again one event at a time, and the events that still fail are dead-lettered
with the database's reason; the rest of the batch is stored. When it fails on
the database being away, the source's retry loop runs it again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import asyncpg

from consumers import mcp
from consumers.errors import InvalidEvent, is_transient
from consumers.processes import start, supervise
from consumers.service import open_consumer, open_database, open_decoders, open_pool
from consumers.source import Batch, Handler, EventRecord, Reject, consume, retrying
from consumers.sql import Migration, load_migrations
from consumers.winni import search_index, store
from consumers.winni.conversation_stage import ConversationStage
from consumers.winni.mcp import mcp_stage
from consumers.winni.mcp_links import link_stage
from consumers.winni.settings import WinniSettings
from common.outages import Outage, Reporter
from common.running import run_until_signal
from schemas.errors import clip

log = logging.getLogger(__name__)

Stage = Callable[[asyncpg.Connection, Sequence[EventRecord]], Awaitable[None]]

SWEEP_MAX_S = 60.0


def default_stages(store_request_bodies: bool = False) -> tuple[Stage, ...]:
    """A fresh set per run: the conversation stage caches each session's thread state. The MCP stage
    stores the MCP events; the link stage, last, links the tool uses and calls the batch brought."""
    return (ConversationStage(store_request_bodies), mcp_stage, link_stage)


# What a single event can do wrong on its way into the database: refused by the
# server (PostgresError) or by asyncpg's encoder (DataError).
_STORE_FAILURES = (asyncpg.PostgresError, asyncpg.DataError)


def split_valid(records: Sequence[EventRecord]) -> tuple[list[EventRecord], list[Reject]]:
    """Events the stages may store, and the contract breakers, as rejects."""
    valid: list[EventRecord] = []
    rejects: list[Reject] = []
    for record in records:
        try:
            (mcp.check if mcp.is_mcp(record.event) else store.check)(record.event)
        except InvalidEvent as exc:
            rejects.append(Reject(record.envelope, str(exc), type(exc).__name__))
        else:
            valid.append(record)
    return valid, rejects


def by_session(records: Sequence[EventRecord], parts: int) -> list[list[EventRecord]]:
    """Records split into at most ``parts`` groups, each session whole, order kept; empty groups dropped."""
    groups: list[list[EventRecord]] = [[] for _ in range(parts)]
    for record in records:
        groups[zlib.crc32(session_of(record.event).encode()) % parts].append(record)
    return [group for group in groups if group] or [[]]


def session_of(event: dict[str, Any]) -> str:
    return mcp.session_key(event) if mcp.is_mcp(event) else event["session_key"]


def rejected(record: EventRecord, exc: Exception) -> Reject:
    return Reject(record.envelope, clip(str(exc)), type(exc).__name__)


def is_data_failure(exc: Exception) -> bool:
    return isinstance(exc, _STORE_FAILURES) and not is_transient(exc)


async def write_batch(
    pool: asyncpg.Pool, stages: Sequence[Stage], records: Sequence[EventRecord], rejects: Sequence[Reject]
) -> None:
    """Every stage and the dead letters, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        for stage in stages:
            await stage(conn, records)
        await store.write_dead_letters(conn, rejects)


async def write_one_by_one(
    pool: asyncpg.Pool, stages: Sequence[Stage], records: Sequence[EventRecord], rejects: Sequence[Reject]
) -> None:
    """The slow path after a data failure: isolate the events the database refuses."""
    refused = list(rejects)
    for record in records:
        try:
            await write_batch(pool, stages, [record], [])
        except Exception as exc:
            if not is_data_failure(exc):
                raise
            log.warning("event at %s dead-lettered: %s", record.envelope, clip(str(exc)))
            refused.append(rejected(record, exc))
    await write_batch(pool, (), (), refused)


async def write_parts(
    pool: asyncpg.Pool, stages: Sequence[Stage], parts: list[list[EventRecord]], rejects: Sequence[Reject]
) -> None:
    """One transaction per part, at once; the dead letters ride with the first.

    Every part is let finish before a failure is raised, so the slow path or the
    retry that follows never overlaps a part still writing.
    """
    done = await asyncio.gather(
        *(write_batch(pool, stages, part, rejects if i == 0 else ()) for i, part in enumerate(parts)),
        return_exceptions=True,
    )
    failures = [result for result in done if isinstance(result, BaseException)]
    if failures:
        raise failures[0]


async def handle(pool: asyncpg.Pool, stages: Sequence[Stage], writers: int, batch: Batch) -> None:
    """The winni handler: store a batch, dead-letter what cannot be stored, raise if the database is away."""
    records, invalid = split_valid(batch.records)
    rejects = [*batch.rejects, *invalid]
    for reject in rejects:
        log.warning("dead letter at %s: %s: %s", reject.envelope, reject.error_class, reject.reason)
    try:
        await write_parts(pool, stages, by_session(records, writers), rejects)
    except Exception as exc:
        if not is_data_failure(exc):
            raise
        log.warning("batch of %d refused (%s); writing its events one by one", len(records), clip(str(exc)))
        await write_one_by_one(pool, stages, records, rejects)


def make_handler(pool: asyncpg.Pool, stages: Sequence[Stage] | None = None, writers: int = 1) -> Handler:
    return partial(handle, pool, default_stages() if stages is None else stages, writers)


def migrations() -> list[Migration]:
    return load_migrations("consumers.winni")


async def run(settings: WinniSettings, stop: asyncio.Event | None = None, stages: Sequence[Stage] | None = None) -> None:
    """Migrate, then consume until ``stop`` is set; waits for PostgreSQL if it is not up yet."""
    stop = stop or asyncio.Event()
    stages = default_stages(settings.store_request_bodies) if stages is None else stages
    log.info("winni starting: %r", settings)
    async with contextlib.AsyncExitStack() as resources:
        pool = await open_database(
            resources,
            settings.database_url,
            settings.db_schema,
            migrations(),
            max_size=settings.writers,
            stop=stop,
            backoff=settings.backoff,
        )
        if pool is None:
            return
        activity = search_index.Activity()
        indexer = await open_indexer(resources, settings, stop, activity)
        decoders = await open_decoders(resources, settings.kafka)
        consumer = await open_consumer(resources, settings, stop)
        if consumer is None:
            return
        async with indexer, asyncio.TaskGroup() as tasks:  # a sweep that fails for good stops the consumer too
            sweeper = tasks.create_task(sweep_unanswered(pool, settings.unanswered_after))
            await consume(
                consumer,
                decoders,
                activity.tracking(make_handler(pool, stages, settings.writers)),
                stop=stop,
                batch_size=settings.batch_size,
                backoff=settings.backoff,
            )
            sweeper.cancel()
    log.info("winni stopped")


async def open_indexer(
    resources: contextlib.AsyncExitStack, settings: WinniSettings, stop: asyncio.Event, activity: search_index.Activity
) -> contextlib.AbstractAsyncContextManager[None]:
    """The search indexer on a connection of its own, to run beside the consumer (giving way to its
    batches, as ``activity`` tells them); nothing when it is off."""
    if not settings.search_index:
        return contextlib.nullcontext()
    pool = await retrying(
        partial(open_pool, settings.database_url, settings.db_schema, 1), "connecting the search indexer", stop, settings.backoff
    )
    if pool is None:
        return contextlib.nullcontext()
    resources.push_async_callback(pool.close)
    return search_index.indexing(pool, settings.search_index_batch, stop, settings.backoff, settings.search_index_share, activity)


def sweep_every(unanswered_after: float) -> float:
    """Often enough that a row is marked within half the timeout again, at most once a minute."""
    return min(unanswered_after / 2, SWEEP_MAX_S)


async def sweep_unanswered(pool: asyncpg.Pool, unanswered_after: float) -> None:
    """Until cancelled: mark request-only rows whose response is overdue (migration 008).

    A database that is away only skips a sweep; the next one catches up. The
    skipped sweeps are an outage (`common.outages`): a line at the first, one when one succeeds again.
    """
    skipped = Reporter(Outage("the sweep for unanswered exchanges", gone="is skipped", back="ran again"), log)
    while True:
        await asyncio.sleep(sweep_every(unanswered_after))
        try:
            async with pool.acquire() as conn:
                marked = await store.mark_unanswered(conn, unanswered_after)
        except Exception as exc:
            if not is_transient(exc):
                raise
            skipped.failed(f"the database is away: {clip(str(exc))}")
            continue
        skipped.recovered()
        if marked:
            log.info("%d exchanges marked unanswered (no response %.0fs after their request)", marked, unanswered_after)


async def run_processes(settings: WinniSettings, stop: asyncio.Event) -> None:
    """`run` in ``settings.processes`` processes of one group (`consumers.processes`), or here when it is 1."""
    if settings.processes == 1:
        await run(settings, stop)
        return
    await supervise(start(run_worker, [(settings,)] * settings.processes, "winni"), stop)


def run_worker(settings: WinniSettings) -> None:
    """One of `run_processes`' workers: a whole consumer of its own."""
    run_until_signal(lambda stop: run(settings, stop))
