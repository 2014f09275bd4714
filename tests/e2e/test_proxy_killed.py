"""A stream cut by a proxy killed mid-answer ends as an unanswered row, not a request-only row forever.

Issue 13, item 9. The real `kgb proxy` process relays a paced stream; once
winni holds the request half, the proxy gets SIGKILL, so the response event is
never published. winni runs with a short KGB_WINNI_UNANSWERED_AFTER and the
test waits (polling) for the mark.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg

from tests import services
from tests.e2e.conftest import DEADLINE, POLL, running_winni, winni_settings
from tests.fakes.anthropic import FakeAnthropic, text_stream
from tests.proxy.test_app import HEADERS, body
from tests.test_cli import start_proxy, wait_healthy

ROW = "SELECT request_event_id, response_event_id, unanswered_at FROM kgb.exchanges"


async def rows(database: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database)
    try:
        return await conn.fetch(ROW)
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def wait_rows(database: str, done: Callable[[list[asyncpg.Record]], bool]) -> list[asyncpg.Record]:
    async with asyncio.timeout(DEADLINE):
        while not done(found := await rows(database)):
            await asyncio.sleep(POLL)
    return found


async def test_a_stream_cut_by_killing_the_proxy_is_marked_unanswered(
    kafka: services.KafkaBroker, topic: str, database: str, tmp_path: Path
) -> None:
    port = services.free_port()
    env = {
        **os.environ,
        "KGB_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "KGB_TOPIC": topic,
        "KGB_SPOOL_DIR": str(tmp_path / "spool"),
        "KGB_FINGERPRINT_KEY": "e2e-fingerprint-key",
    }
    settings = dataclasses.replace(winni_settings(kafka.bootstrap, topic, database), unanswered_after=0.5)
    async with FakeAnthropic() as fake, running_winni(settings):
        fake.enqueue(text_stream(deltas=200, pace=0.1))
        proxy = await start_proxy(
            env, port, services.free_port(), fake.url, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            await asyncio.wait_for(wait_healthy(url, proxy), 60)
            async with aiohttp.ClientSession() as session:
                async with session.post(url + "/v1/messages", data=body(), headers=HEADERS) as response:
                    assert b"message_start" in await response.content.readany()
                    await wait_rows(database, lambda found: len(found) == 1)
                    proxy.kill()
                    await proxy.wait()
        finally:
            if proxy.returncode is None:
                proxy.kill()
                await proxy.wait()
        (row,) = await wait_rows(database, lambda found: len(found) == 1 and found[0]["unanswered_at"] is not None)
    assert row["request_event_id"] is not None and row["response_event_id"] is None
