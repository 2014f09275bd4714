"""`kgb web` over a generated winni database: server time per page, p50 and p99, and the plans behind them.

    .venv/bin/python -m bench.web_bench [--exchanges 100000] [--requests 200] [--json results.json]

One run: the winni benchmark's topic (`bench.winni_bench.exchanges`: Claude Code
shaped sessions, ~80 KB system prompt and tools on every main request,
sub-agents, side requests, retries), plus one long session whose main thread
holds `LONG_MESSAGES` messages, is stored by the real `kgb consume winni` (2
processes) and `kgb consume metrics`, then `kgb web` runs as its own process
and each page is requested `--requests` times in turn. The server time is the
app's own ``Server-Timing`` (request in to response headers out: queries and
template); the client's wall time is printed beside it. The baseline, measured
in the same run, is each page's main query alone (its fetch over one
connection): the ratio says what the page adds to its SQL. Then `EXPLAIN
(ANALYZE, BUFFERS)` of each main query, and the indexes it used.

Targets (issue 9): sessions and search <= 100 ms p50, the long conversation <= 300 ms p50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer

from bench.winni_bench import PARTITIONS, kgb, prose, publish, timed
from consumers.metrics.store import queries as metrics_queries
from scripts.kafka import free_port
from tests import services
from tests.consumers.conftest import publish as publish_events
from tests.consumers.sessions import SessionBuilder, reply, text
from web.database import queries
from web.filters import USAGE_DAYS, Cursor, SearchFilter, SessionFilter
from web.render import MARK_START, MARK_STOP

ROOT = Path(__file__).resolve().parent.parent
LONG_MESSAGES = 2000
RARE_WORD = "quintessentially"
COUNTED = "SELECT count(*) FROM usage_exchanges WHERE has_request AND has_response"
TARGETS = {
    "sessions": 100.0,
    "sessions, 20 pages deep": 100.0,
    "search, a rare word": 100.0,
    "search, a common word": 100.0,
    "long conversation": 300.0,
}


def long_session(messages: int = LONG_MESSAGES, seed: int = 7) -> SessionBuilder:
    """One main thread of ``messages`` messages: tool runs with a few hundred bytes of output, and answers."""
    rng, s = random.Random(seed), SessionBuilder()
    s.title("a long session", "The long benchmark session")
    while s.positions["main"] < messages:
        if rng.random() < 0.6:
            s.tool_turn("main", prose(rng, 40), prose(rng, rng.randint(100, 400)))
        else:
            s.turn(
                "main", text(prose(rng, 80)), answer=reply(text(f"{prose(rng, 200)} {RARE_WORD if rng.random() < 0.01 else ''}"))
            )
    return s


@dataclass
class Timing:
    page: str
    path: str
    n: int
    p50_ms: float
    p99_ms: float
    cpu_p50_ms: float
    client_p50_ms: float
    query_p50_ms: float | None
    bytes: int

    @property
    def ratio(self) -> float | None:
        return self.p50_ms / self.query_p50_ms if self.query_p50_ms else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def fill(bootstrap: str, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    topic = await services.create_topic(bootstrap, PARTITIONS)
    started = time.perf_counter()
    events, _ = await publish(bootstrap, topic, args.exchanges)
    long = long_session()
    producer = await _producer(bootstrap)
    try:
        await publish_events(producer, topic, long.events)
    finally:
        await producer.stop()
    total = events // 2 + len(long.events) // 2
    print(f"topic: {total:,} exchanges published in {time.perf_counter() - started:.0f}s", flush=True)
    env = {
        "KGB_KAFKA_BOOTSTRAP": bootstrap,
        "KGB_TOPIC": topic,
        "KGB_DATABASE_URL": dsn,
        "KGB_WINNI_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "KGB_METRICS_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "KGB_WINNI_PROCESSES": "2",
        "KGB_WINNI_WRITERS": "1",
        "KGB_METRICS_PORT": str(free_port()),
    }
    metrics = subprocess.Popen(kgb("consume", "metrics"), env={**os.environ, **env}, cwd=ROOT)
    try:
        live = await timed(kgb("consume", "winni"), env, dsn, "kgb", total)
        print(f"winni: {live.exchanges_per_s:,.0f} exchanges/s (migration 006 included)", flush=True)
        await wait_for(dsn, "kgb_metrics", COUNTED, total)
    finally:
        metrics.terminate()
        metrics.wait(60)
    facts = await described(dsn)
    facts["winni_exchanges_per_s"] = live.exchanges_per_s
    return facts


async def described(dsn: str) -> dict[str, Any]:
    """The database's size, and the long session's conversation."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "kgb"})
    try:
        await conn.execute("ANALYZE")
        facts = dict(
            await conn.fetchrow(
                "SELECT (SELECT count(*) FROM exchanges) AS exchanges, (SELECT count(*) FROM messages) AS messages, "
                "(SELECT count(*) FROM sessions) AS sessions, (SELECT count(*) FROM conversations) AS conversations, "
                "pg_database_size(current_database()) AS database_bytes, pg_relation_size('messages_search_idx') AS search_index_bytes"
            )
        )
        facts["long_conversation"] = str(
            await conn.fetchval(
                "SELECT c.id FROM conversations c JOIN sessions s USING (session_key) "
                "WHERE s.title = 'The long benchmark session' AND c.kind = 'main'"
            )
        )
        facts["long_messages"] = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE conversation_id = $1::text::uuid", facts["long_conversation"]
        )
    finally:
        await conn.close()
    print(
        f"database: {facts['exchanges']:,} exchanges, {facts['messages']:,} messages, {facts['sessions']:,} sessions, "
        f"{facts['database_bytes'] / 1e9:.2f} GB (search index {facts['search_index_bytes'] / 1e6:.0f} MB); "
        f"long conversation: {facts['long_messages']:,} messages",
        flush=True,
    )
    return facts


async def _producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        compression_type="zstd",
        max_request_size=16 * 1024 * 1024,
        max_batch_size=1024 * 1024,
        linger_ms=20,
    )
    await producer.start()
    return producer


async def wait_for(dsn: str, schema: str, query: str, count: int, timeout: float = 1800) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(asyncpg.UndefinedTableError):
                    if await conn.fetchval(query) >= count:
                        return
                await asyncio.sleep(1)
    finally:
        await conn.close()


async def plan_inputs(dsn: str, facts: dict[str, Any]) -> dict[str, Any]:
    """What each measured page asks for: a deep cursor, a common word, a typical session."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "kgb, kgb_metrics"})
    try:
        deep = await conn.fetchrow(
            "SELECT last_seen, session_key FROM sessions ORDER BY last_seen DESC, session_key DESC "
            "OFFSET least(1000, (SELECT count(*) - 1 FROM sessions)) LIMIT 1"
        )
        word = await conn.fetchval(
            "SELECT word FROM ts_stat($$SELECT search FROM messages TABLESAMPLE SYSTEM (2)$$) "
            "WHERE word ~ '^[a-z]+[0-9]+$' ORDER BY ndoc DESC LIMIT 1"
        )
        session = await conn.fetchval(
            "SELECT session_key FROM sessions s WHERE title = 'Benchmark session' ORDER BY last_seen DESC LIMIT 1"
        )
    finally:
        await conn.close()
    return {"deep": Cursor(deep["last_seen"], deep["session_key"]), "word": word, "session": session}


def pages(facts: dict[str, Any], inputs: dict[str, Any]) -> dict[str, tuple[str, str | None, tuple[Any, ...]]]:
    """Page name -> (path, its main query, the query's parameters)."""
    size = 50
    deep = SessionFilter(after=inputs["deep"])
    return {
        "health (framework floor)": ("/health", None, ()),
        "sessions": ("/", "sessions", SessionFilter().arguments(size + 1)),
        "sessions, 20 pages deep": (
            "/?" + "&".join(f"{k}={v}" for k, v in deep.query(inputs["deep"]).items()),
            "sessions",
            deep.arguments(size + 1),
        ),
        "session": (f"/session?key={inputs['session']}", "session_conversations", (inputs["session"],)),
        "long conversation": (
            f"/conversations/{facts['long_conversation']}",
            "conversation_messages",
            (uuid.UUID(facts["long_conversation"]),),
        ),
        "search, a rare word": (
            f"/search?q={RARE_WORD}",
            "search",
            SearchFilter(words=RARE_WORD).arguments(20, MARK_START, MARK_STOP),
        ),
        "search, a common word": (
            f"/search?q={inputs['word']}",
            "search",
            SearchFilter(words=inputs["word"]).arguments(20, MARK_START, MARK_STOP),
        ),
        "usage": ("/usage", "usage_report", (date.today() - timedelta(days=USAGE_DAYS - 1), True, True, False, False)),
    }


def query_text(name: str) -> str:
    return metrics_queries().usage_report if name == "usage_report" else queries()[name]


async def query_times(dsn: str, name: str, args: tuple[Any, ...], n: int) -> float:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "kgb, kgb_metrics", "plan_cache_mode": "force_custom_plan"})
    try:
        sql, times = query_text(name), []
        for _ in range(n):
            started = time.perf_counter()
            await conn.fetch(sql, *args)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        await conn.close()


async def explain(dsn: str, name: str, args: tuple[Any, ...]) -> tuple[list[str], float, list[str]]:
    """The plan, its execution time, and the indexes and sequential scans in it."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "kgb, kgb_metrics", "plan_cache_mode": "force_custom_plan"})
    try:
        plan = [r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + query_text(name), *args)]
    finally:
        await conn.close()
    used = sorted(
        {
            m
            for line in plan
            for m in re.findall(r"(?:Index Only Scan|Index Scan|Bitmap Index Scan)(?: Backward)? (?:using|on) (\w+)", line)
        }
    )
    scans = sorted({m for line in plan for m in re.findall(r"Seq Scan on (\w+)", line)})
    executed = float(re.search(r"Execution Time: ([\d.]+)", plan[-1])[1])
    return plan, executed, used + [f"seq scan: {s}" for s in scans]


def server_timing(header: str) -> dict[str, float]:
    """``app;dur=1.2, cpu;dur=0.9`` -> {"app": 1.2, "cpu": 0.9}."""
    return {name.strip(): float(dur) for name, dur in (part.split(";dur=") for part in header.split(","))}


async def measure_page(session: aiohttp.ClientSession, url: str, n: int) -> tuple[list[float], list[float], list[float], int]:
    server, cpu, client, size = [], [], [], 0
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(url) as response:
            body = await response.read()
            assert response.status == 200, (url, response.status, body[:500])
        client.append((time.perf_counter() - started) * 1000)
        timing = server_timing(response.headers["Server-Timing"])
        server.append(timing["app"])
        cpu.append(timing["cpu"])
        size = len(body)
    return server, cpu, client, size


async def measure(dsn: str, facts: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    inputs = await plan_inputs(dsn, facts)
    port = free_port()
    web = subprocess.Popen(kgb("web"), env={**os.environ, "KGB_DATABASE_URL": dsn, "KGB_WEB_PORT": str(port)}, cwd=ROOT)
    results: dict[str, Any] = {"inputs": {"common_word": inputs["word"], "session": inputs["session"]}, "pages": [], "plans": {}}
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/health"):
                        break
                await asyncio.sleep(0.1)
            print(
                f"\n{'page':26} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'cpu p50':>8} {'client p50':>10} {'query p50':>9} {'x query':>7} "
                f"{'KB':>7} {'target':>7}",
                flush=True,
            )
            for name, (path, query, params) in pages(facts, inputs).items():
                await measure_page(session, base + path, 5)  # warm: plans, caches, the pool
                server, cpu, client, size = await measure_page(session, base + path, args.requests)
                query_ms = await query_times(dsn, query, params, min(args.requests, 50)) if query else None
                timing = Timing(
                    name,
                    path,
                    len(server),
                    statistics.median(server),
                    percentile(server, 0.99),
                    statistics.median(cpu),
                    statistics.median(client),
                    query_ms,
                    size,
                )
                results["pages"].append({**asdict(timing), "ratio_to_query": timing.ratio, "target_p50_ms": TARGETS.get(name)})
                target = TARGETS.get(name)
                verdict = "" if target is None else ("met" if timing.p50_ms <= target else "MISSED")
                print(
                    f"{name:26} {timing.n:>4} {timing.p50_ms:>8.1f} {timing.p99_ms:>8.1f} {timing.cpu_p50_ms:>8.1f} {timing.client_p50_ms:>10.1f} "
                    f"{query_ms or 0:>9.1f} {timing.ratio or 0:>7.1f} {size / 1024:>7.0f} {verdict:>7}",
                    flush=True,
                )
                if query:
                    plan, executed, used = await explain(dsn, query, params)
                    results["plans"][name] = {"query": query, "execution_ms": executed, "uses": used, "plan": plan}
    finally:
        web.terminate()
        web.wait(30)
    print(
        f"machine load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(above the core count, wall times include waiting for a core: compare the cpu column)"
    )
    print("\nEXPLAIN (ANALYZE, BUFFERS), the indexes each page's main query used:")
    for name, found in results["plans"].items():
        print(f"  {name:26} {found['query']:22} {found['execution_ms']:7.1f} ms  {', '.join(found['uses'])}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--exchanges", type=int, default=100_000, help="exchanges on the generated topic, besides the long session"
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per page")
    parser.add_argument("--json", type=Path, help="also write the figures and plans here")
    parser.add_argument("--plans", action="store_true", help="print every plan in full")
    parser.add_argument("--reuse", metavar="DSN", help="measure a database an earlier run filled and kept (--keep) instead")
    parser.add_argument("--keep", metavar="DSN", help="fill this (empty) database, on a server of your own, and keep it")
    args = parser.parse_args()
    with contextlib.ExitStack() as running, contextlib.suppress(KeyboardInterrupt):
        if args.reuse:
            dsn = args.reuse
            facts = asyncio.run(described(dsn))
        else:
            kafka = running.enter_context(services.kafka_broker())
            if args.keep:
                dsn = args.keep
            else:
                postgres = running.enter_context(services.postgres_server())
                dsn = asyncio.run(services.create_database(postgres.admin_dsn))
            facts = asyncio.run(fill(kafka.bootstrap, dsn, args))
        results = {"facts": facts, **asyncio.run(measure(dsn, facts, args))}
        if args.plans:
            for name, found in results["plans"].items():
                print(f"\n-- {name}\n" + "\n".join(found["plan"]))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
