"""`kgb replay`: the winni tables rebuilt from the whole topic into a fresh schema, then swapped in.

The steps of `replay`:

1. Migrate a fresh schema (``<live>_replay_<time>``, or the one given as
   ``--into``) and read both topics (KGB_TOPIC, and KGB_MCP_TOPIC when it
   exists) from their oldest offsets with a reader (no
   group, every partition assigned: the live consumer's group and offsets are
   untouched). Every batch goes through the live consumer's own handler and
   stages (`consumers.winni.consumer.make_handler`, `default_stages`), into the
   fresh schema, so the rebuilt rows are the ones the live consumer writes.
2. Read up to the end offsets seen at the start; with ``--into`` that is all.
   With ``KGB_WINNI_PROCESSES`` above 1 this first read, nearly all of a
   replay's work, is shared out: each worker process reads its own
   partitions with its own reader and writes into the same fresh schema
   (`consumers.processes`; a session's events sit in one partition, and its
   revision row serialises writers anyway), then this process reads on from
   where they ended.
3. To swap, catch up with the end offsets until less than a batch is left, then,
   in one transaction on a connection of its own: lock every table of the live
   schema (EXCLUSIVE: readers go on, writers wait), read the end offsets once
   more and replay up to them, raise the rebuilt schema's session revisions
   above the live ones, rename live to ``<live>_old_<time>`` and the rebuilt
   schema to the live name, commit. Then drop the old schema, unless kept.

The live consumer's stages store messages without their search vectors
(migration 010), so after step 2 replay builds them all (`build_index`,
winni's own indexer, on a connection per process), and once more after the
swap for the few the final catch-up brought (a live winni's indexer would
find them too; replay does not leave them to it).

Why no event is lost across the swap: every batch the live consumer wrote into
the old schema committed before the lock was granted (the lock waits for its
transactions), and came from offsets below the end offsets of that moment; the
final catch-up reads up to end offsets taken after the lock is held, so the
rebuilt schema holds every event the old one holds. Live batches that start
meanwhile wait on the lock; once it is released, the live name means the
rebuilt schema (PostgreSQL looks a name up again after waiting for its lock,
and renaming a schema drops every cached plan), so they write there. The live
consumer's offsets never moved: it goes on from where it was, and the events it
handles that replay already wrote are redeliveries, which change nothing.

What the live consumer sees: its connections keep ``search_path`` set to the
live name, which from the commit on names the rebuilt tables. The conversation
stage trusts its cached session state only while the session's revision is the
one it last wrote; the swap raises every revision above any the old schema
held, so the first batch that touches a session after the swap reads its state
back from the rebuilt tables. A live consumer older than the replaying code
goes on writing by its own rules: restart it after a swap that brings new
migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from typing import Any, TextIO, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.errors import ConsumerError
from consumers.processes import start, supervise
from consumers.replay.progress import Progress
from consumers.source import (
    Batch,
    Handler,
    consume,
    end_offsets,
    make_reader,
    read_from_start,
    retrying,
)
from consumers.sql import Queries, load_queries
from consumers.service import apply_migrations, connecting, connection, open_decoders, open_pool
from consumers.winni import search_index
from consumers.winni.consumer import default_stages, make_handler, migrations
from consumers.winni.settings import WinniSettings
from common.config import SettingsError, identifier
from common.outages import KAFKA_WATCH, watching
from common.running import run_until_signal

log = logging.getLogger(__name__)

# Catch-ups before the locked final one; each reads what arrived during the one before.
CATCH_UP_ROUNDS = 5

Reader = Callable[[dict[TopicPartition, int]], Awaitable[None]]
T = TypeVar("T")


class Stopped(Exception):
    """Asked to stop while waiting for the database, or during the locked final catch-up (rolled back)."""


@dataclass(frozen=True)
class Outcome:
    """What a replay did. ``complete`` is False when it was stopped first; then nothing was swapped."""

    schema: str  # where the rebuilt tables are now
    events: int
    seconds: float
    complete: bool
    old_schema: str | None = None  # the previous live tables, when kept

    def __str__(self) -> str:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        kept = f"; previous tables kept in {self.old_schema}" if self.old_schema else ""
        state = "" if self.complete else "; stopped before the end, nothing swapped"
        return (
            f"{self.events:,} events in {self.seconds:.1f}s ({rate:,.0f} events/s), tables in schema {self.schema}{kept}{state}"
        )


@cache
def queries() -> Queries:
    return load_queries("consumers.replay")


def stamp(at: datetime) -> str:
    return at.strftime("%Y%m%d%H%M%S")


def schema_names(live: str, into: str | None, at: datetime) -> tuple[str, str]:
    """(where to build, what the live schema becomes), both plain identifiers."""
    if into == live:
        raise SettingsError(f"--into {into} is the live schema; name another, or leave --into out to swap")
    return (
        identifier("kgb replay --into", into) if into else identifier("KGB_DB_SCHEMA", f"{live}_replay_{stamp(at)}"),
        identifier("KGB_DB_SCHEMA", f"{live}_old_{stamp(at)}"),
    )


def trimmed(begins: dict[TopicPartition, int]) -> list[str]:
    """Partitions whose oldest events retention has deleted: the topic no longer tells the whole story."""
    return [f"{tp.topic}[{tp.partition}] starts at {offset}" for tp, offset in sorted(begins.items()) if offset > 0]


def remaining(begins: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> int:
    return sum(ends.values()) - sum(begins.values())


def counting(handler: Handler, advance: Callable[[int], None]) -> Handler:
    """The handler, calling ``advance`` with a batch's events once it is stored (a retried batch counts once)."""

    async def handle(batch: Batch) -> None:
        await handler(batch)
        advance(len(batch.records) + len(batch.rejects))

    return handle


async def lag(reader: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> int:
    """Events between the reader's positions and ``ends``."""
    left = 0
    for tp, end in ends.items():
        left += max(0, end - await reader.position(tp))
    return left


async def replay(
    settings: WinniSettings,
    *,
    into: str | None = None,
    keep_old: bool = False,
    stop: asyncio.Event | None = None,
    stream: TextIO = sys.stderr,
) -> Outcome:
    """Rebuild ``settings.db_schema``'s tables from the topic, then swap them in, or fill ``into``.

    Every step that touches the database waits out a database that is away or
    restarting (`patiently`), as the batches do.
    """
    stop = stop or asyncio.Event()
    at = datetime.now(UTC)
    target, old = schema_names(settings.db_schema, into, at)
    progress = Progress(stream)
    try:
        swapped, live_exists = await rebuild(settings, target, old, into, progress, stop)
    except Stopped:
        swapped, live_exists = False, False
    if not swapped:
        return Outcome(target, progress.done, progress.seconds, complete=not stop.is_set())
    await build_index(settings, settings.db_schema, stop)
    kept = old if live_exists and keep_old else None
    if live_exists and not keep_old:
        try:
            await patiently(partial(drop, settings.database_url, old), f"dropping {old}", settings, stop)
        except Stopped:
            kept = old
    return Outcome(settings.db_schema, progress.done, progress.seconds, complete=True, old_schema=kept)


async def rebuild(
    settings: WinniSettings, target: str, old: str, into: str | None, progress: Progress, stop: asyncio.Event
) -> tuple[bool, bool]:
    """`replay`'s steps 1-3: (whether it swapped, whether there was a live schema to swap out)."""
    q = queries()
    async with contextlib.AsyncExitStack() as resources:
        pool = await patiently(
            partial(open_pool, settings.database_url, target, settings.writers), connecting(settings.database_url), settings, stop
        )
        resources.push_async_callback(pool.close)
        if into is None and await patiently(partial(pool.fetchval, q.schema_exists, target), "checking", settings, stop):
            raise SettingsError(f"schema {target} already exists; drop it or replay --into it")
        await patiently(partial(apply_migrations, pool, migrations(), target), "migrating", settings, stop)
        await resources.enter_async_context(watching(KAFKA_WATCH, settings.kafka.bootstrap))
        reader = make_reader(settings.kafka, settings.batch_size)
        resources.push_async_callback(reader.stop)  # before start: one that fails to start is closed too
        await reader.start()
        begins = await read_from_start(reader, settings.kafka, optional=(settings.kafka.mcp_topic,))
        check_whole(begins, swapping=into is None)
        decoder = await open_decoders(resources, settings.kafka)
        handler = counting(make_handler(pool, default_stages(settings.store_request_bodies), settings.writers), progress.advance)

        async def read(ends: dict[TopicPartition, int]) -> None:
            progress.total = remaining(begins, ends)
            await consume(
                reader,
                decoder,
                handler,
                stop=stop,
                batch_size=settings.batch_size,
                backoff=settings.backoff,
                until=ends,
            )

        log.info("replay: %s into schema %s", settings.kafka.topic, target)
        ends = await end_offsets(reader)
        if settings.processes > 1:
            progress.total = remaining(begins, ends)
            await read_in_processes(settings, target, ends, progress, stop)
            for tp, end in ends.items():
                reader.seek(tp, end)
        else:
            await read(ends)
        await build_index(settings, target, stop)
        live_exists = bool(
            await patiently(partial(pool.fetchval, q.schema_exists, settings.db_schema), "checking", settings, stop)
        )
        swapped = into is None and not stop.is_set() and await swap(settings, reader, read, target, old, live_exists, stop)
        progress.finish()
    return swapped, live_exists


async def patiently(attempt: Callable[[], Awaitable[T]], what: str, settings: WinniSettings, stop: asyncio.Event) -> T:
    """`retrying` for replay's own steps, raising `Stopped` when stopped first."""
    result = await retrying(attempt, f"replay: {what}", stop, settings.backoff)
    if result is None and stop.is_set():
        raise Stopped
    return result  # type: ignore[return-value]


async def build_index(settings: WinniSettings, schema: str, stop: asyncio.Event) -> None:
    """The search vectors of the messages ``schema`` holds without one (winni's indexer, `index_all`),
    on as many connections as replay reads with; nothing when KGB_WINNI_SEARCH_INDEX is off."""
    if not settings.search_index or stop.is_set():
        return
    workers = max(settings.processes, settings.writers)
    started = time.monotonic()
    pool = await patiently(
        partial(open_pool, settings.database_url, schema, workers), connecting(settings.database_url), settings, stop
    )
    try:
        indexed = await search_index.index_all(pool, settings.search_index_batch, stop, settings.backoff, workers)
    finally:
        await pool.close()
    log.info("replay: %s messages indexed for search in schema %s in %.1fs", f"{indexed:,}", schema, time.monotonic() - started)


def shares(ends: dict[TopicPartition, int], workers: int) -> list[dict[TopicPartition, int]]:
    """The partitions dealt out to at most ``workers`` readers, round robin, each with its end offset."""
    ordered = sorted(ends)
    dealt = [{tp: ends[tp] for tp in ordered[i::workers]} for i in range(workers)]
    return [share for share in dealt if share]


async def read_in_processes(
    settings: WinniSettings, target: str, ends: dict[TopicPartition, int], progress: Progress, stop: asyncio.Event
) -> None:
    """Every partition read from its start up to ``ends`` into ``target``, by worker processes (`read_share`).

    The workers count what they store in one shared counter, which ``progress`` follows.
    """
    stored = multiprocessing.get_context("spawn").Value("q", 0)
    workers = start(read_share, [(settings, target, share, stored) for share in shares(ends, settings.processes)], "replay")

    def follow() -> None:
        if stored.value > progress.done:
            progress.advance(stored.value - progress.done)

    await supervise(workers, stop, follow)


def read_share(settings: WinniSettings, target: str, ends: dict[TopicPartition, int], stored: Any) -> None:
    """A `read_in_processes` worker: its partitions, from their oldest offsets up to ``ends``, into ``target``."""

    def count(events: int) -> None:
        with stored.get_lock():
            stored.value += events

    async def read(stop: asyncio.Event) -> None:
        async with contextlib.AsyncExitStack() as resources:
            pool = await retrying(
                partial(open_pool, settings.database_url, target, settings.writers), "replay: connecting", stop, settings.backoff
            )
            if pool is None:
                return
            resources.push_async_callback(pool.close)
            reader = make_reader(settings.kafka, settings.batch_size)
            await reader.start()
            resources.push_async_callback(reader.stop)
            reader.assign(list(ends))
            await reader.seek_to_beginning(*ends)
            decoder = await open_decoders(resources, settings.kafka)
            handler = counting(make_handler(pool, default_stages(settings.store_request_bodies), settings.writers), count)
            await consume(
                reader, decoder, handler, stop=stop, batch_size=settings.batch_size, backoff=settings.backoff, until=ends
            )

    run_until_signal(read)


def check_whole(begins: dict[TopicPartition, int], swapping: bool) -> None:
    """Refuse to swap in tables rebuilt from a topic that has lost its first events; warn otherwise."""
    lost = trimmed(begins)
    if lost and swapping:
        raise ConsumerError(f"not swapping: the topic has lost its oldest events ({', '.join(lost)}); replay --into instead")
    if lost:
        log.warning("replay: the topic has lost its oldest events (%s); the rebuilt tables will lack them", ", ".join(lost))


def check_complete(rebuilt: int, live: int) -> None:
    """Refuse to swap in fewer exchanges than the live tables hold: the topic is not the one they came from."""
    if rebuilt < live:
        raise ConsumerError(
            f"not swapping: the rebuilt tables hold {rebuilt:,} exchanges, the live ones {live:,}; "
            "is KGB_TOPIC the topic the live consumer reads?"
        )


async def swap(
    settings: WinniSettings,
    reader: AIOKafkaConsumer,
    read: Reader,
    target: str,
    old: str,
    live_exists: bool,
    stop: asyncio.Event,
) -> bool:
    """Catch up, then swap in one locked transaction; False when stopped first.

    A deadlock with a live batch (or any transient failure: a database restart)
    rolls the swap back and runs it again, on a new connection; the live
    consumer retries its own batch the same way.
    """
    for _ in range(CATCH_UP_ROUNDS):
        ends = await end_offsets(reader)
        if stop.is_set() or await lag(reader, ends) <= settings.batch_size:
            break
        await read(ends)

    async def final_catch_up() -> None:
        await read(await end_offsets(reader))

    async def attempt() -> bool:
        async with connection(settings.database_url) as conn:
            return await swap_once(conn, settings.db_schema, target, old if live_exists else None, final_catch_up, stop)

    try:
        return bool(await retrying(attempt, "swapping schemas", stop, settings.backoff))
    except Stopped:
        return False


async def swap_once(
    conn: asyncpg.Connection,
    live: str,
    target: str,
    old: str | None,
    catch_up: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
) -> bool:
    """The locked final catch-up and the renames, in one transaction; ``old`` None when there is no live schema yet.

    An attempt whose commit went through but whose answer was lost (the
    connection dropped) finds ``target`` gone, renamed: it is done.
    """
    q = queries()
    if not await conn.fetchval(q.schema_exists, target):
        log.info("replay: schema %s is already %s", target, live)
        return True
    async with conn.transaction():
        if old:
            await conn.execute(await conn.fetchval(q.lock_tables, live))
        await catch_up()
        if stop.is_set():
            raise Stopped
        if old:
            check_complete(*await conn.fetchrow(await conn.fetchval(q.exchange_counts, target, live)))
            await conn.execute(await conn.fetchval(q.outrank_revisions, target, live))
            await conn.execute(await conn.fetchval(q.rename_schema, live, old))
        await conn.execute(await conn.fetchval(q.rename_schema, target, live))
    log.info("replay: schema %s is now %s%s", target, live, f"; the previous one is {old}" if old else "")
    return True


async def drop(database_url: str, schema: str) -> None:
    async with connection(database_url) as conn:
        await conn.execute(await conn.fetchval(queries().drop_schema, schema))
    log.info("replay: dropped %s", schema)
