"""The MCP side of the pipeline in one test process, on real services: the relays and winni reading both topics.

`mcp_pipeline` starts winni (its own group, both topics, the per-test
database) and the MCP app on a free port (publishing to the MCP topic,
spooling under the given directory); with ``api_upstream`` the API proxy too,
publishing to the exchange topic. Waiting for rows polls PostgreSQL until a
deadline, which only bounds a hang: no test asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from consumers.source import Backoff
from consumers.winni.settings import WinniSettings
from consumers.winni.consumer import run
from proxy.app import build_app
from proxy.mcp.app import build_mcp_app
from proxy.settings import ProxySettings
from tests.capture import capture_worker
from tests import services

DEADLINE = 90.0


def proxy_env(bootstrap: str, topic: str, mcp_topic: str, spool: Path, upstreams: Mapping[str, str]) -> dict[str, str]:
    return {
        "KGB_KAFKA_BOOTSTRAP": bootstrap,
        "KGB_TOPIC": topic,
        "KGB_MCP_TOPIC": mcp_topic,
        "KGB_SPOOL_DIR": str(spool),
        "KGB_FINGERPRINT_KEY": "mcp-test-fingerprint-key",
        "KGB_MCP_UPSTREAMS": ",".join(f"{name}={url}" for name, url in upstreams.items()),
    }


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", services.free_port())
    try:
        await site.start()
        yield site.name
    finally:
        await runner.cleanup()


@dataclasses.dataclass
class McpPipeline:
    relay: str  # http://127.0.0.1:PORT of the MCP app
    api: str | None  # the API proxy's URL, when started
    topic: str
    mcp_topic: str
    bootstrap: str
    database: str
    env: dict[str, str]
    winni: asyncio.Task[None]

    def at(self, name: str, path: str = "") -> str:
        return f"{self.relay}/mcp/{name}{path}"

    async def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        """Rows of the winni tables, jsonb as Python values."""
        conn = await asyncpg.connect(self.database, server_settings={"search_path": "kgb"})
        await conn.set_type_codec("jsonb", encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog", format="text")
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def wait_for(
        self, sql: str, done: Callable[[list[asyncpg.Record]], bool], *args: object, deadline: float = DEADLINE
    ) -> list[asyncpg.Record]:
        """The rows of ``sql`` once ``done`` says they are all there."""
        rows: list[asyncpg.Record] = []
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline
        while loop.time() < give_up:
            if self.winni.done():
                raise AssertionError(f"winni stopped early: {self.winni.exception()!r}")
            with contextlib.suppress(asyncpg.UndefinedTableError):
                rows = await self.query(sql, *args)
                if done(rows):
                    return rows
            await asyncio.sleep(0.2)
        raise AssertionError(f"after {deadline:.0f}s, {sql!r} gave {[dict(r) for r in rows]}")

    async def calls(self, count: int, method: str | None = None) -> list[dict[str, Any]]:
        """Every mcp_calls row once at least ``count`` (of ``method``, when given) are answered, oldest first."""

        def done(rows: list[asyncpg.Record]) -> bool:
            answered = [r for r in rows if r["response_event_id"] is not None and method in (None, r["method"])]
            return len(answered) >= count

        rows = await self.wait_for("SELECT * FROM mcp_calls ORDER BY requested_at, call_id", done)
        return [dict(row) for row in rows]


@contextlib.asynccontextmanager
async def mcp_pipeline(
    bootstrap: str,
    database: str,
    spool: Path,
    upstreams: Mapping[str, str],
    api_upstream: str | None = None,
    *,
    worker: bool = True,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[McpPipeline]:
    """With ``worker=False`` the test runs the capture worker itself (`kgb capture-worker` on `env`, to kill it)."""
    topic, mcp_topic = await services.create_topic(bootstrap), await services.create_topic(bootstrap)
    env = proxy_env(bootstrap, topic, mcp_topic, spool, upstreams) | dict(extra_env or {})
    settings = ProxySettings.from_env({**env, "KGB_UPSTREAM_URL": api_upstream or "http://127.0.0.1:9"})
    winni_settings = dataclasses.replace(
        WinniSettings.from_env(
            {
                **env,
                "KGB_DATABASE_URL": database,
                "KGB_WINNI_GROUP": f"kgb-mcp-{uuid.uuid4().hex[:12]}",
                "KGB_WINNI_STORE_REQUEST_BODIES": "true",
            }
        ),
        backoff=Backoff(initial=0.2, maximum=2.0),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run(winni_settings, stop), name="winni")
    try:
        async with contextlib.AsyncExitStack() as apps:
            if worker:
                await apps.enter_async_context(capture_worker(settings))
            relay = await apps.enter_async_context(serving(build_mcp_app(settings)))
            api = await apps.enter_async_context(serving(build_app(settings))) if api_upstream else None
            yield McpPipeline(relay, api, topic, mcp_topic, bootstrap, database, env, task)
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await task
