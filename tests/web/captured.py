"""What the viewer's tests capture: sessions with everything a page must show, stored by the real consumers.

`Captured.fill` publishes the sessions to a real Kafka topic, then runs
`kgb consume winni` and `kgb consume metrics` (their `run`) on a fresh
database until every exchange is stored and counted, and stops them.

- ``long``: `tests.consumers.sessions.long_session` (sub-agents nested two
  deep with their Agent calls, a compaction, retries, partial replies,
  title and count_tokens side requests);
- ``planted``: hostile content in every place a page shows captured text
  (title, prompt, reply Markdown, thinking, tool input and output, a web
  search result): `<script>`, `<img onerror>`, ``javascript:`` links, raw
  HTML in Markdown; each would set ``window.__pwned`` if it ever ran;
- ``searched``: a session whose tool result alone holds `SEARCH_WORD`, and
  whose tool call failed.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers.metrics.settings import MetricsSettings
from consumers.metrics.consumer import run as run_metrics
from consumers.source import Backoff
from consumers.winni.settings import WinniSettings
from consumers.winni.consumer import run as run_winni
from common.config import KafkaSettings
from scripts.kafka import free_port
from tests import services
from tests.consumers.factories import encode
from tests.consumers.sessions import SessionBuilder, long_session, reply, text, tool_result, tool_use

SEARCH_WORD = "flibbertigibbet"
FAST = Backoff(initial=0.05, maximum=0.5)
SCRIPT = '<script>window.__pwned = "script"</script>'
IMAGE = '<img src="x" onerror="window.__pwned = \'img\'">'
LINK = "[click me](javascript:window.__pwned='link')"
RAW = "<div onmouseover=\"window.__pwned = 'div'\">raw html in markdown</div>"
HOSTILE = f"{SCRIPT} {IMAGE} {LINK}\n\n{RAW}\n\n<a href=\"javascript:window.__pwned='a'\">raw link</a>"


def planted_session() -> SessionBuilder:
    s = SessionBuilder()
    s.title(HOSTILE, f"Planted {SCRIPT}")
    s.turn(
        "main",
        text(f"Please look at this: {HOSTILE}"),
        answer=reply(
            {"type": "thinking", "thinking": f"thinking about {SCRIPT}", "signature": "c2ln"},
            text(f"Here is **Markdown** with {HOSTILE} and [a fine link](https://example.com/docs)."),
        ),
    )
    s.turn("main", text("run it"), answer=reply(tool_use("toolu_planted", f"echo '{SCRIPT}'"), stop_reason="tool_use"))
    s.turn("main", tool_result("toolu_planted", f"{IMAGE}\n{SCRIPT}"), answer=reply(text(f"It printed {IMAGE}.")))
    s.web_search(f"search {SCRIPT}", [{"type": "web_search_result", "url": "javascript:window.__pwned='url'", "title": IMAGE}])
    return s


def searched_session() -> SessionBuilder:
    s = SessionBuilder()
    s.turn(
        "main",
        text("Find the odd word in the logs"),
        answer=reply(tool_use("toolu_search", "grep -r odd logs/"), stop_reason="tool_use"),
    )
    s.turn(
        "main",
        tool_result("toolu_search", f"logs/build.log: the {SEARCH_WORD} step failed", is_error=True),
        answer=reply(text("The grep found it in the build log.")),
    )
    return s


@dataclass
class Captured:
    dsn: str
    long: SessionBuilder = field(default_factory=long_session)
    planted: SessionBuilder = field(default_factory=planted_session)
    searched: SessionBuilder = field(default_factory=searched_session)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [*self.long.events, *self.planted.events, *self.searched.events]

    async def fill(self, bootstrap: str) -> None:
        topic = await services.create_topic(bootstrap)
        await publish(bootstrap, topic, self.events)
        kafka = KafkaSettings(bootstrap=bootstrap, topic=topic)
        group = uuid.uuid4().hex[:8]
        winni = WinniSettings(kafka=kafka, database_url=self.dsn, group=f"web-winni-{group}", backoff=FAST)
        metrics = MetricsSettings(
            kafka=kafka, database_url=self.dsn, group=f"web-metrics-{group}", port=free_port(), backoff=FAST
        )
        exchanges = len(self.events) // 2
        await asyncio.gather(
            consumed(run_winni, winni, self.dsn, COMPLETE_WINNI, exchanges),
            consumed(run_metrics, metrics, self.dsn, COMPLETE_METRICS, exchanges),
        )


COMPLETE_EXCHANGES = "SELECT count(*) FROM kgb.exchanges WHERE request_event_id IS NOT NULL AND response_event_id IS NOT NULL"
# Whole exchanges, counted once winni's search indexer has caught up with their messages.
COMPLETE_WINNI = f"SELECT CASE WHEN EXISTS (SELECT FROM kgb.messages WHERE search IS NULL) THEN 0 ELSE ({COMPLETE_EXCHANGES}) END"
COMPLETE_METRICS = "SELECT count(*) FROM kgb_metrics.usage_exchanges WHERE has_request AND has_response"


async def publish(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", compression_type="zstd", max_request_size=16 * 1024 * 1024
    )
    await producer.start()
    try:
        sent = [await producer.send(topic, encode(e), key=e["session_key"].encode()) for e in events]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def consumed(run: Any, settings: Any, dsn: str, query: str, exchanges: int, timeout: float = 120) -> None:
    """Run a consumer until ``query`` counts every exchange, then stop it as the CLI does."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(timeout):
            while True:
                if task.done():
                    task.result()
                    raise AssertionError(f"{run.__module__} stopped before storing {exchanges} exchanges")
                try:
                    if await conn.fetchval(query) >= exchanges:
                        break
                except asyncpg.UndefinedTableError:
                    pass
                await asyncio.sleep(0.1)
    finally:
        await conn.close()
        stop.set()
        await asyncio.wait_for(task, 60)
