"""The capture worker in the test's own event loop, beside an in-process proxy app.

`kgb proxy` runs the worker as a child process (proxy/supervisor.py); tests
that build the app in-process run `proxy.worker.run` as a task instead, on the
same settings and so the same KGB_SPOOL_DIR. Stop it after the app, so that
it publishes everything the app appended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

from aiohttp import web

from proxy import worker
from proxy.settings import ProxySettings
from tests.services import free_port

STOP_TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def capture_worker(settings: ProxySettings) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(settings, stop), name="capture-worker")
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(STOP_TIMEOUT):
            await task


@dataclasses.dataclass
class Served:
    """An app on a free port and its capture worker; `cleanup` stops the app first, so the worker publishes all it appended."""

    port: int
    runner: web.AppRunner
    worker: contextlib.AbstractAsyncContextManager[asyncio.Task[None]]

    async def cleanup(self) -> None:
        try:
            await self.runner.cleanup()
        finally:
            await self.worker.__aexit__(None, None, None)


async def serve_captured(app: web.Application, settings: ProxySettings) -> Served:
    worker = capture_worker(settings)
    await worker.__aenter__()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return Served(port, runner, worker)
