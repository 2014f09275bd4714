"""Search vectors for the messages winni stores, built behind its writes (migration 010).

Winni stores a message without its tsvector (``search`` NULL), so its batches
pay nothing for search. The indexer, a task beside the consumer with a
connection of its own, gives the next batch of messages without a vector
theirs (``index_messages``, in key order, the function migration 006 defined),
batch after batch until fewer than a batch are left, then looks again every
`IDLE_SECONDS`. It gives way to winni's batches: while they keep coming
(`Activity`), it pauses after each batch of messages so that indexing takes
only ``KGB_WINNI_SEARCH_INDEX_SHARE`` of its time (`give_way`). On a machine
whose cores winni and PostgreSQL already fill, search then lags behind a
sustained burst and catches up once it is over; the PostgreSQL time a vector
costs (~0.5-1.3 ms a message) is spent either way, but no longer inside, or
in competition with, the batches.

Each batch of messages is one statement, its own transaction: one cut short (a PostgreSQL restart, winni stopping) is rolled back whole and taken
again, one done is never undone, and the NULLs are the only bookkeeping, so
indexing is idempotent and nothing is indexed twice. Failures the database is
to blame for are retried with winni's backoff, as its batches are
(`consumers.errors.is_transient`, `consumers.source.retrying`).

A batch PostgreSQL refuses on its data (no content is known to: the text is
cut to stay below tsvector's limit) is indexed again one message at a time;
a message that still fails gets an empty vector and is named in the log: it
stays stored and readable, search does not find it, and the messages after
it are not held up behind it.

Each winni process runs an indexer; SKIP LOCKED hands them different rows.
`kgb replay` indexes its rebuilt schema with `index_all`, on as many
connections as it has processes or writers, without pausing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from functools import partial

import asyncpg

from consumers.source import Backoff, Batch, Handler, retrying, wait_or_stop
from consumers.winni.store import queries
from schemas.errors import clip

log = logging.getLogger(__name__)

IDLE_SECONDS = 1.0  # between looks for new messages once the indexer has caught up
BUSY_SECONDS = 2.0  # winni is busy while it stored a batch this recently
WHAT = "indexing messages for search"
# What a message's content can make PostgreSQL refuse: a data exception (class 22), a
# program limit (54: a tsvector over 1 MB). Anything else (a function missing) is not
# the message's fault and stops the indexer loudly rather than leave every message out.
_REFUSED_CLASSES = ("22", "54")


def refused(exc: Exception) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "")[:2] in _REFUSED_CLASSES


async def index_batch(conn: asyncpg.Connection, size: int) -> int:
    """Up to ``size`` messages indexed in one statement; how many."""
    status = await conn.execute(queries().index_messages, size)
    return int(status.split()[-1])


async def index_singly(conn: asyncpg.Connection, size: int) -> int:
    """The next ``size`` messages one by one, each refused one left out of search; how many."""
    q = queries()
    keys = await conn.fetch(q.unindexed_messages, size)
    for conversation_id, position in keys:
        try:
            await conn.execute(q.index_message, conversation_id, position)
        except Exception as exc:
            if not refused(exc):
                raise
            log.warning("message %s at %d left out of search: %s", conversation_id, position, clip(str(exc)))
            await conn.execute(q.leave_unindexed, conversation_id, position)
    return len(keys)


async def index_next(pool: asyncpg.Pool, size: int) -> int:
    """One batch; fewer than ``size`` indexed means none is waiting (or another indexer holds it)."""
    async with pool.acquire() as conn:
        try:
            return await index_batch(conn, size)
        except Exception as exc:
            if not refused(exc):
                raise
            log.warning("a batch of messages refused for search (%s); indexing them one by one", clip(str(exc)))
            return await index_singly(conn, size)


async def index_waiting(pool: asyncpg.Pool, size: int, stop: asyncio.Event, backoff: Backoff) -> int:
    """Batches until fewer than ``size`` were waiting, or until stopped; the messages indexed."""
    total = 0
    while not stop.is_set():
        indexed = await retrying(partial(index_next, pool, size), WHAT, stop, backoff)
        total += indexed or 0
        if indexed is None or indexed < size:
            break
    return total


class Activity:
    """When winni last stored a batch, so its indexer can tell a busy consumer from an idle one."""

    def __init__(self) -> None:
        self.last = -math.inf

    def tracking(self, handler: Handler) -> Handler:
        """``handler``, marking the time of every batch it stores."""

        async def handle(batch: Batch) -> None:
            await handler(batch)
            self.last = time.monotonic()

        return handle

    def busy(self) -> bool:
        return time.monotonic() - self.last < BUSY_SECONDS


def give_way(took: float, share: float) -> float:
    """The pause after a batch of messages that took ``took`` seconds, so that indexing takes
    ``share`` of the indexer's time while winni is busy (1: no pause)."""
    return took * (1 / share - 1)


async def keep_indexed(
    pool: asyncpg.Pool, size: int, stop: asyncio.Event, backoff: Backoff, share: float, activity: Activity
) -> None:
    """Index what waits until stopped: batch after batch while winni is idle, a `give_way` pause
    after each while it is busy, and a look every `IDLE_SECONDS` once none waits."""
    while not stop.is_set():
        started = time.monotonic()
        indexed = await retrying(partial(index_next, pool, size), WHAT, stop, backoff)
        if indexed is None:
            return
        if indexed < size:
            await wait_or_stop(stop, IDLE_SECONDS)
        elif activity.busy():
            await wait_or_stop(stop, give_way(time.monotonic() - started, share))


async def index_all(pool: asyncpg.Pool, size: int, stop: asyncio.Event, backoff: Backoff, workers: int = 1) -> int:
    """Every message of the pool's schema without a vector indexed, on ``workers`` connections at once."""
    return sum(await asyncio.gather(*(index_waiting(pool, size, stop, backoff) for _ in range(workers))))


@contextlib.asynccontextmanager
async def indexing(
    pool: asyncpg.Pool, size: int, stop: asyncio.Event, backoff: Backoff, share: float, activity: Activity
) -> AsyncIterator[None]:
    """`keep_indexed` running for the block's duration.

    An indexer that fails for good sets ``stop``, so the consumer ends too, and
    its error is raised here; a block that fails cancels the indexer.
    """
    task = asyncio.create_task(keep_indexed(pool, size, stop, backoff, share, activity))
    task.add_done_callback(lambda _: stop.set())
    try:
        yield
    except BaseException:
        task.cancel()
        await asyncio.wait([task])
        raise
    await task
