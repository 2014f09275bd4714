"""What every consumer does before its first batch, in one place.

PostgreSQL (waited for, its schema migrated), the decoder (with the schema
registry when one is configured) and the Kafka consumer are opened here and
registered on the caller's exit stack, so each consumer owns its resources at
the edge of its run and the stages that use them never close them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Protocol

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer

from consumers.source import Backoff, make_consumer, retrying
from consumers.sql import Migration, migrate
from common.config import KafkaSettings, mask_url
from common.outages import HEALTH, KAFKA_WATCH, POSTGRES_WATCH, watching
from common.topics import TopicSettings, ensure_topics
from schemas.codec import MCP, Decoder, make_decoder
from schemas.registry import Registry

log = logging.getLogger(__name__)

REGISTRY_TIMEOUT = aiohttp.ClientTimeout(total=10)
CLOSE_TIMEOUT = 5.0  # seconds a connection's goodbye may take before it is cut


async def open_pool(url: str, schema: str, max_size: int) -> asyncpg.Pool:
    """Connections whose search_path is `schema`, so the named queries stay unqualified."""
    return await asyncpg.create_pool(url, min_size=1, max_size=max_size, server_settings={"search_path": schema})


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own for the block. One the server dropped meanwhile cannot say goodbye;
    asyncpg then aborts it, and the block's own error is the one that propagates."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        try:
            await conn.close(timeout=CLOSE_TIMEOUT)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("a connection closed without its goodbye (%s: %s)", type(exc).__name__, exc)


def connecting(url: str) -> str:
    """The step's name in its outage lines: where it connects and the setting that says so, since a
    command run in a shell without KGB_DATABASE_URL waits on the default's port."""
    return f"connecting to PostgreSQL at {mask_url(url)} (KGB_DATABASE_URL)"


async def apply_migrations(pool: asyncpg.Pool, migrations: Sequence[Migration], schema: str) -> list[int]:
    async with pool.acquire() as conn:
        applied = await migrate(conn, migrations, schema)
    log.info("schema %s: %s", schema, f"applied migrations {applied}" if applied else "up to date")
    return applied


async def open_database(
    resources: contextlib.AsyncExitStack,
    url: str,
    schema: str,
    migrations: Sequence[Migration],
    *,
    max_size: int,
    stop: asyncio.Event,
    backoff: Backoff,
) -> asyncpg.Pool | None:
    """A migrated pool, waiting out a database that is not up yet; None when stopped first.

    A consumer's first step: it is not ready (``/ready``) until `open_consumer` has joined its group.
    """
    HEALTH.wait("start", "starting: migrating PostgreSQL, then joining the Kafka group")
    await resources.enter_async_context(watching(POSTGRES_WATCH, url))
    pool = await retrying(partial(open_pool, url, schema, max_size), connecting(url), stop, backoff)
    if pool is None:
        return None
    resources.push_async_callback(pool.close)
    applied = await retrying(partial(apply_migrations, pool, migrations, schema), "migrating", stop, backoff)
    return None if applied is None else pool


async def open_decoders(resources: contextlib.AsyncExitStack, kafka: KafkaSettings) -> dict[str, Decoder]:
    """One decoder per topic, each reading its own schema, sharing one registry client."""
    if not kafka.schema_registry_url:
        return {kafka.topic: make_decoder(None), kafka.mcp_topic: make_decoder(None, MCP)}
    session = await resources.enter_async_context(aiohttp.ClientSession(timeout=REGISTRY_TIMEOUT))
    registry = Registry(kafka.schema_registry_url, session)
    return {kafka.topic: make_decoder(registry), kafka.mcp_topic: make_decoder(registry, MCP)}


def both_topics(kafka: KafkaSettings) -> tuple[str, str]:
    return kafka.topic, kafka.mcp_topic


class ConsumerSettings(Protocol):
    """What a consumer group's settings (winni's, metrics', dewey's) give `open_consumer`."""

    @property
    def kafka(self) -> KafkaSettings: ...
    @property
    def topics(self) -> TopicSettings: ...
    @property
    def group(self) -> str: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def backoff(self) -> Backoff: ...


async def open_consumer(
    resources: contextlib.AsyncExitStack, settings: ConsumerSettings, stop: asyncio.Event
) -> AIOKafkaConsumer | None:
    """Subscribed to both topics, started, stopped with ``resources``; None when stopped first.

    The topics are created first when missing (`common.topics`), so a consumer
    that starts before the proxy does not leave them to the broker's defaults;
    a broker that is not up yet is waited for, as the database is.
    """
    await resources.enter_async_context(watching(KAFKA_WATCH, settings.kafka.bootstrap))
    topics = both_topics(settings.kafka)
    create = partial(ensure_topics, settings.kafka.bootstrap, topics, settings.topics)
    where = f"{settings.kafka.bootstrap} (KGB_KAFKA_BOOTSTRAP)"
    if await retrying(create, f"creating the topics on {where}", stop, settings.backoff) is None:
        return None
    consumer = await retrying(
        partial(started_consumer, settings, topics), f"connecting to Kafka at {where}", stop, settings.backoff
    )
    if consumer is None:
        return None
    resources.push_async_callback(stop_consumer, consumer)
    log.info("consuming %s as group %s", ", ".join(topics), settings.group)
    HEALTH.done("start")
    return consumer


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``. With the broker gone, aiokafka's stop cancels its fetch task and then raises
    that task's CancelledError as its own; only a cancellation of this task is passed on."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("the consumer stopped with the broker away (aiokafka's fetch task was cancelled)")


async def started_consumer(settings: ConsumerSettings, topics: Sequence[str]) -> AIOKafkaConsumer:
    """A fresh consumer per attempt: one whose start failed is closed, not started again."""
    consumer = make_consumer(settings.kafka, settings.group, settings.batch_size, topics)
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    return consumer
