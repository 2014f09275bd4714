"""`kgb consume dewey`: every KGB conversation and MCP session into Dewey, one Dewey conversation each.

It reads both topics (KGB_TOPIC, KGB_MCP_TOPIC) as one group, as winni does.

Its own consumer group, and its own copy of the conversation state: each
batch first goes through winni's own handler and stages (`consumers.winni`)
into this consumer's schema (``kgb_dewey``), so the same rules place each
request in its conversation and decide its new messages, and this consumer
never depends on winni being up or caught up. Those tables are the outbox:
`forward.forward_sessions` then sends each touched conversation what lies
past its last acknowledged position. The batch's offsets are committed
(`consumers.source`) only after Dewey has acknowledged everything.

When Dewey does not answer, the handler raises `DeweyUnavailable`, and the
source's loop runs the batch again after a capped, jittered exponential
backoff for as long as it takes: the lag grows, nothing is lost, and the
stages (idempotent on the event) and the forwarder (which resumes from the
recorded positions) make the repeat harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from functools import partial

import aiohttp
import asyncpg

from consumers import mcp
from consumers.dewey.client import DeweyClient
from consumers.dewey.forward import Limits, forward_sessions, queries
from consumers.dewey.settings import DeweySettings
from consumers.errors import MigrationError
from consumers.source import Batch, Handler, EventRecord, consume
from consumers.sql import Migration, load_migrations
from consumers.service import open_consumer, open_database, open_decoders
from consumers.winni.consumer import make_handler as winni_handler
from common.config import mask_url

log = logging.getLogger(__name__)


def migrations() -> list[Migration]:
    """winni's tables (the conversation state), then this consumer's, as one history in one schema."""
    both = load_migrations("consumers.winni") + load_migrations("consumers.dewey")
    versions = [m.version for m in both]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"winni and dewey migrations share a version: {sorted(versions)}")
    return both


def session_keys(records: Sequence[EventRecord]) -> list[str]:
    return sorted({r.event["session_key"] for r in records if not mcp.is_mcp(r.event)})


def mcp_sessions(records: Sequence[EventRecord]) -> list[str]:
    return sorted({mcp.session_key(r.event) for r in records if mcp.is_mcp(r.event)})


def exchange_ids(records: Sequence[EventRecord]) -> list[uuid.UUID]:
    """The batch's exchange ids that are UUIDs (winni dead-letters the others)."""
    ids = set()
    for record in records:
        if mcp.is_mcp(record.event):
            continue
        with contextlib.suppress(ValueError, TypeError):
            ids.add(uuid.UUID(record.event["exchange_id"]))
    return sorted(ids)


async def handle(pool: asyncpg.Pool, state: Handler, dewey: DeweyClient, limits: Limits, batch: Batch) -> None:
    """Conversation state first (committed), then Dewey; raises while Dewey is away."""
    await state(batch)
    await pool.execute(queries().prune_bodies, exchange_ids(batch.records))
    await forward_sessions(pool, dewey, session_keys(batch.records), limits, mcp_sessions(batch.records))


def make_handler(pool: asyncpg.Pool, dewey: DeweyClient, limits: Limits) -> Handler:
    return partial(handle, pool, winni_handler(pool), dewey, limits)


async def run(settings: DeweySettings, stop: asyncio.Event | None = None) -> None:
    """Migrate, then consume until ``stop`` is set; waits for PostgreSQL if it is not up yet.

    Dewey is not needed to start: the first batch waits for it.
    """
    stop = stop or asyncio.Event()
    log.info("dewey starting: %r", settings)
    async with contextlib.AsyncExitStack() as resources:
        pool = await open_database(
            resources,
            settings.database_url,
            settings.db_schema,
            migrations(),
            max_size=2,
            stop=stop,
            backoff=settings.backoff,
        )
        if pool is None:
            return
        decoders = await open_decoders(resources, settings.kafka)
        # No session-wide timeout: the WebSocket lives for the whole run; each call has its own.
        websockets = await resources.enter_async_context(aiohttp.ClientSession())
        dewey = DeweyClient(websockets, settings.url, settings.timeout)
        resources.push_async_callback(dewey.close)
        consumer = await open_consumer(resources, settings, stop)
        if consumer is None:
            return
        log.info("dewey sending to %s", mask_url(settings.url))
        await consume(
            consumer,
            decoders,
            make_handler(pool, dewey, Limits(settings.bulk_size, settings.bulk_bytes)),
            stop=stop,
            batch_size=settings.batch_size,
            backoff=settings.backoff,
        )
    log.info("dewey stopped")
