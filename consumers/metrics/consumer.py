"""`kgb consume metrics`: token usage and cost into rollup tables and onto ``/metrics``.

Its own consumer group on the exchange and MCP topics, so it can be down or
behind without touching winni; MCP calls are counted in the same transaction
(`consumers.metrics.mcp`). Each batch is one transaction (`store.write_usage`);
Prometheus sees the exchanges it completed only once that transaction has
committed, and the offsets are committed after that (`consumers.source`), so
a crash anywhere means redelivery, which the store recognises and ignores.

Messages that do not decode are logged and counted
(``kgb_metrics_rejected_total``); winni keeps them as dead letters, so this
consumer does not keep a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial

import asyncpg
from aiohttp import web

from consumers.mcp import is_mcp
from consumers.metrics import store
from consumers.metrics.mcp import write_mcp_usage
from consumers.metrics.exporter import UsageMetrics, metrics_app
from consumers.metrics.prices import PriceTable, load_prices
from consumers.metrics.settings import MetricsSettings
from consumers.source import Batch, Handler, consume
from consumers.sql import load_migrations
from consumers.service import open_consumer, open_database, open_decoders
from common.config import SettingsError

log = logging.getLogger(__name__)


async def handle(pool: asyncpg.Pool, prices: PriceTable, metrics: UsageMetrics, batch: Batch) -> None:
    exchanges = [r for r in batch.records if not is_mcp(r.event)]
    async with pool.acquire() as conn:
        async with conn.transaction():
            priced = await store.write_usage(conn, exchanges, prices)
            calls = await write_mcp_usage(conn, batch.records)
        metrics.observe(priced)
        metrics.observe_mcp(calls)
    for reject in batch.rejects:
        log.warning("not decoded at %s: %s: %s", reject.envelope, reject.error_class, reject.reason)
        metrics.rejected.labels(reject.error_class).inc()


def make_handler(pool: asyncpg.Pool, prices: PriceTable, metrics: UsageMetrics) -> Handler:
    return partial(handle, pool, prices, metrics)


async def serve_metrics(resources: contextlib.AsyncExitStack, metrics: UsageMetrics, settings: MetricsSettings) -> None:
    """``/metrics`` on host:port until ``resources`` closes; a busy port is a settings error."""
    runner = web.AppRunner(metrics_app(metrics), access_log=None)
    await runner.setup()
    resources.push_async_callback(runner.cleanup)
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        raise SettingsError(f"cannot listen on {settings.host}:{settings.port} (KGB_METRICS_PORT): {exc.strerror}") from None
    log.info("metrics on http://%s:%d/metrics", settings.host, settings.port)


async def run(settings: MetricsSettings, stop: asyncio.Event | None = None, metrics: UsageMetrics | None = None) -> None:
    """Serve ``/metrics``, migrate, then consume until ``stop`` is set; waits for PostgreSQL if it is not up yet."""
    stop = stop or asyncio.Event()
    prices = load_prices(settings.prices)
    metrics = metrics or UsageMetrics(prices.version)
    log.info(
        "metrics starting: %r; prices %s (%d editions, %d models)",
        settings,
        prices.version,
        len(prices.editions),
        len(prices.models),
    )
    async with contextlib.AsyncExitStack() as resources:
        await serve_metrics(resources, metrics, settings)
        pool = await open_database(
            resources,
            settings.database_url,
            settings.db_schema,
            load_migrations("consumers.metrics"),
            max_size=1,
            stop=stop,
            backoff=settings.backoff,  # one connection: one transaction per batch
        )
        if pool is None:
            return
        decoders = await open_decoders(resources, settings.kafka)
        consumer = await open_consumer(resources, settings, stop)
        if consumer is None:
            return
        await consume(
            consumer,
            decoders,
            make_handler(pool, prices, metrics),
            stop=stop,
            batch_size=settings.batch_size,
            backoff=settings.backoff,
        )
    log.info("metrics stopped")
