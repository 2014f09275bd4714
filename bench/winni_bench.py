"""`kgb consume winni` (and `kgb replay`) against the rate a bare consumer fetches and decodes the same topic.

    .venv/bin/python -m bench.winni_bench [--exchanges 100000] [--json results.json]

One run: it generates a topic of Claude Code shaped sessions (`tests.consumers.sessions`:
the samples' ~75 KB system prompt and tools on every main request, a history that
grows with tool results of a few KB, sub-agents, title and count_tokens side
requests, retries), interleaved like concurrent users and keyed by session. Then,
on that same topic:

(a) the ceiling: one bare aiokafka consumer fetching every message and decoding it
    (`schemas.codec`), nothing else;
(b) live: `kgb consume winni` as its own process on a fresh database, timed until
    every exchange is stored with both halves, with its peak RSS and CPU, then
    until every message is searchable (its search indexer caught up); with
    ``--without-search``, first (b0) the same with KGB_WINNI_SEARCH_INDEX=false,
    the baseline for what search costs it;
(c) replay: `kgb replay --into kgb_replay` the same way, on another fresh database.

Services are the tests' (`tests.services`): KGB_TEST_KAFKA_BOOTSTRAP and
KGB_TEST_DATABASE_URL name running ones, else a broker and a server are started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.source import FETCH_MAX_BYTES, MAX_PARTITION_FETCH_BYTES
from schemas.codec import make_decoder
from tests import services
from tests.claude_samples import load_samples
from tests.consumers.factories import encode, request_body
from tests.consumers.sessions import SessionBuilder, reply, text

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 6
CONCURRENT_SESSIONS = 24
POLL_SECONDS = 1.0
INDEX_POLL_SECONDS = 0.2
COMPLETE = "SELECT count(*) FROM exchanges WHERE request_event_id IS NOT NULL AND response_event_id IS NOT NULL"
MESSAGES = "SELECT count(*) FROM messages"
# Messages waiting for winni's search indexer (migration 010); always 0 under 006's generated column.
UNINDEXED = "SELECT count(*) FROM messages WHERE search IS NULL"
REPLAY_SCHEMA = "kgb_replay"


# --- the topic -----------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What Claude Code sends beside the history, as bytes to splice into the generators' bodies."""

    small: bytes  # the factories' own system and tools, as serialised in every generated body
    main_tools: bytes
    agent_tools: bytes
    system: list[dict[str, Any]]

    @classmethod
    def from_samples(cls) -> Shape:
        """The largest main-thread sample: its system prompt and tools (~80 KB); sub-agents get half the tools."""
        body = max(
            (s["body"] for s in load_samples() if s["path"] == "/v1/messages" and s["body"] and s["body"].get("tools")),
            key=lambda b: len(orjson.dumps(b)),
        )
        generated = orjson.loads(request_body("x"))
        return cls(
            small=b'"system":' + orjson.dumps(generated["system"]) + b',"tools":' + orjson.dumps(generated["tools"]),
            main_tools=orjson.dumps(body["tools"]),
            agent_tools=orjson.dumps(body["tools"][: len(body["tools"]) // 2]),
            system=body["system"],
        )

    def splice(self, event: dict[str, Any], cwd: str) -> dict[str, Any]:
        """A main or sub-agent request gets the real system (its working directory per session) and tools."""
        r = event["request"]
        if r is None or self.small not in r["body"]:
            return event  # a response; title and count_tokens bodies carry their own
        system = [*self.system[:-1], {**self.system[-1], "text": self.system[-1]["text"] + f"\nWorking directory: {cwd}"}]
        tools = self.agent_tools if event["agent_id"] else self.main_tools
        r["body"] = r["body"].replace(self.small, b'"system":' + orjson.dumps(system) + b',"tools":' + tools, 1)
        r["body_size"] = len(r["body"])
        return event


def prose(rng: random.Random, size: int) -> str:
    words = ("build", "test", "error", "line", "file", "module", "function", "value", "return", "import", "config", "path")
    return " ".join(rng.choice(words) + str(rng.randrange(1000)) for _ in range(size // 8))


def session(rng: random.Random) -> SessionBuilder:
    """20-60 main turns, most running a tool with a few KB of output; a sub-agent every 12th turn."""
    s = SessionBuilder()
    s.title(prose(rng, 200), "Benchmark session")
    for n in range(rng.randint(20, 60)):
        if n % 12 == 11:
            agent = f"a{rng.getrandbits(64):016x}"
            s.turn(agent, text(prose(rng, 400)), answer=reply(text(prose(rng, 200))), agent_id=agent)
            for _ in range(rng.randint(2, 5)):
                s.tool_turn(agent, prose(rng, 40), prose(rng, rng.randint(500, 4000)), agent_id=agent)
        if n % 15 == 14:
            s.count_tokens(prose(rng, 100))
        if rng.random() < 0.6:
            s.tool_turn("main", prose(rng, 60), prose(rng, rng.randint(500, 4000)))
        else:
            s.turn("main", text(prose(rng, 200)), answer=reply(text(prose(rng, 600))), retries=int(rng.random() < 0.05))
    return s


def exchanges(count: int, seed: int = 1) -> Iterator[list[dict[str, Any]]]:
    """Pairs of events from CONCURRENT_SESSIONS sessions at a time, round robin, until ``count`` exchanges."""
    rng, shape = random.Random(seed), Shape.from_samples()
    active: list[tuple[str, Iterator[list[dict[str, Any]]]]] = []
    made = 0
    while made < count:
        while len(active) < CONCURRENT_SESSIONS:
            events = session(rng).events
            active.append(
                (f"/home/dev/project-{rng.randrange(10**6)}", iter([events[i : i + 2] for i in range(0, len(events), 2)]))
            )
        cwd, pairs = active[made % len(active)]
        pair = next(pairs, None)
        if pair is None:
            active.remove((cwd, pairs))
            continue
        made += 1
        yield [shape.splice(event, cwd) for event in pair]


async def publish(bootstrap: str, topic: str, count: int) -> tuple[int, int]:
    """Every event on the topic, as the proxy sends them; returns (events, encoded bytes)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        compression_type="zstd",
        max_request_size=16 * 1024 * 1024,
        max_batch_size=1024 * 1024,
        linger_ms=20,
    )
    await producer.start()
    sent, events, size = [], 0, 0
    try:
        for pair in exchanges(count):
            for event in pair:
                data = encode(event)
                events, size = events + 1, size + len(data)
                sent.append(await producer.send(topic, data, key=event["session_key"].encode()))
            if len(sent) > 2000:
                await asyncio.gather(*sent)
                sent.clear()
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return events, size


# --- (a) the ceiling -------------------------------------------------------------------


async def fetch_and_decode(bootstrap: str, topic: str, events: int) -> float:
    """Seconds a bare consumer takes to fetch and decode every event of the topic, with winni's fetch sizes."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        fetch_max_bytes=FETCH_MAX_BYTES,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        decoder, seen = make_decoder(None), 0
        started = time.perf_counter()
        while seen < events:
            for messages in (await consumer.getmany(timeout_ms=500, max_records=500)).values():
                for message in messages:
                    await decoder.decode(message.value)
                seen += len(messages)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


# --- (b) live, (c) replay -------------------------------------------------------------


@dataclass
class Run:
    seconds: float  # from the process start to the last exchange stored
    steady_seconds: float  # from the first exchange stored to the last
    exchanges_per_s: float
    steady_exchanges_per_s: float
    peak_rss_mb: float  # of the consumer's processes together
    cpu_seconds: float  # of the consumer's processes (PostgreSQL's own is not in it)
    indexed_after_seconds: float  # from the last exchange stored until no message waits for its search vector


async def stored(dsn: str, schema: str, query: str = COMPLETE) -> int:
    """What ``query`` counts in ``schema``; 0 before winni has made its tables."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        return await conn.fetchval(query)
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return 0
    finally:
        await conn.close()


async def timed(
    command: list[str],
    env: dict[str, str],
    dsn: str,
    schema: str,
    exchanges: int,
    profile: Path | None = None,
    searchable: bool = True,
) -> Run:
    """Start ``command`` and wait until ``schema`` holds every exchange, and (``searchable``) until no
    message waits for its search vector; peak RSS and CPU from /proc while it runs.

    With ``profile``, py-spy samples the process meanwhile and writes collapsed stacks there.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT)
    if profile:
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--subprocesses",
                "--nonblocking",
                "--format",
                "raw",
                "-o",
                str(profile),
                "-p",
                str(process.pid),
            ],
            stdout=subprocess.DEVNULL,
        )
    watched, peak, cpu, first = psutil.Process(process.pid), 0, 0.0, None
    try:
        while (done := await stored(dsn, schema)) < exchanges:
            if process.poll() is not None and await stored(dsn, schema) < exchanges:
                raise RuntimeError(f"{command} exited with {process.returncode} after {done} exchanges")
            rss, cpu = usage(watched)
            peak = max(peak, rss)
            if done and first is None:
                first = (time.perf_counter(), done)
            await asyncio.sleep(POLL_SECONDS)
        finished = time.perf_counter()
        while searchable and await stored(dsn, schema, UNINDEXED):
            if process.poll() is not None and await stored(dsn, schema, UNINDEXED):
                raise RuntimeError(f"{command} exited with {process.returncode} before indexing every message")
            await asyncio.sleep(INDEX_POLL_SECONDS)
        indexed = time.perf_counter()
    finally:
        if profile:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        process.terminate()
        process.wait(60)
    first = first or (started, 0)
    return Run(
        finished - started,
        finished - first[0],
        exchanges / (finished - started),
        (exchanges - first[1]) / (finished - first[0]),
        peak / 2**20,
        cpu,
        indexed - finished,
    )


def usage(process: psutil.Process) -> tuple[int, float]:
    """RSS and CPU seconds of ``process`` and its workers (`KGB_WINNI_PROCESSES`), summed."""
    total_rss, total_cpu = 0, 0.0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            total_rss += member.memory_info().rss
            total_cpu += times.user + times.system
    return total_rss, total_cpu


def kgb(*args: str) -> list[str]:
    return [sys.executable, "-c", "from kgb.cli import main; main()", *args]


def replay_landed() -> bool:
    return (ROOT / "consumers" / "replay").exists()


# --- the run ----------------------------------------------------------------------------


async def measure(bootstrap: str, admin_dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    topic = await services.create_topic(bootstrap, PARTITIONS)
    t0 = time.perf_counter()
    events, size = await publish(bootstrap, topic, args.exchanges)
    exchanges_ = events // 2
    print(
        f"topic: {exchanges_} exchanges, {events} events, {size / 1e9:.2f} GB encoded "
        f"({size / events / 1024:.0f} KB per event), generated and published in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    results: dict[str, Any] = {"exchanges": exchanges_, "events": events, "encoded_bytes": size}

    ceiling = exchanges_ / await fetch_and_decode(bootstrap, topic, events)
    results["ceiling_exchanges_per_s"] = ceiling
    print(f"(a) bare fetch and decode: {ceiling:,.0f} exchanges/s ({ceiling * size / events * 2 / 1e6:,.0f} MB/s)", flush=True)

    env = {
        "KGB_KAFKA_BOOTSTRAP": bootstrap,
        "KGB_TOPIC": topic,
        "KGB_WINNI_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "KGB_WINNI_BATCH_SIZE": str(args.batch_size),
        "KGB_WINNI_WRITERS": str(args.writers),
        "KGB_WINNI_PROCESSES": str(args.processes),
    }
    if args.without_search:
        dsn = await services.create_database(admin_dsn)
        bare = await timed(
            kgb("consume", "winni"),
            {
                **env,
                "KGB_DATABASE_URL": dsn,
                "KGB_WINNI_SEARCH_INDEX": "false",
                "KGB_WINNI_GROUP": f"{env['KGB_WINNI_GROUP']}-bare",
            },
            dsn,
            "kgb",
            exchanges_,
            searchable=False,
        )
        results["live_without_search"] = asdict(bare)
        print(
            f"(b0) kgb consume winni, KGB_WINNI_SEARCH_INDEX=false (no search work at all, the baseline): "
            f"{bare.steady_exchanges_per_s:,.0f} exchanges/s steady, CPU {bare.cpu_seconds:,.0f}s in {bare.seconds:,.0f}s",
            flush=True,
        )
        await services.drop_database(admin_dsn, dsn)
    dsn = await services.create_database(admin_dsn)
    live = await timed(kgb("consume", "winni"), {**env, "KGB_DATABASE_URL": dsn}, dsn, "kgb", exchanges_, args.profile)
    results["live"] = asdict(live)
    print(
        f"(b) kgb consume winni: {live.exchanges_per_s:,.0f} exchanges/s from start, {live.steady_exchanges_per_s:,.0f} steady "
        f"= {live.steady_exchanges_per_s / ceiling:.2f} of the ceiling; peak RSS {live.peak_rss_mb:,.0f} MB, "
        f"CPU {live.cpu_seconds:,.0f}s in {live.seconds:,.0f}s",
        flush=True,
    )
    results["messages"] = await stored(dsn, "kgb", MESSAGES)
    results["live_steady_messages_per_s"] = results["messages"] / exchanges_ * live.steady_exchanges_per_s
    searchable = results["messages"] / (live.steady_seconds + live.indexed_after_seconds)
    print(
        f"    {results['messages']:,} messages: {results['live_steady_messages_per_s']:,.0f} messages/s steady; "
        f"all searchable {live.indexed_after_seconds:.1f}s after the last exchange ({searchable:,.0f} messages/s)",
        flush=True,
    )
    if args.without_search:
        print(
            f"    with search / without: {live.steady_exchanges_per_s / bare.steady_exchanges_per_s:.2f} of the exchanges/s",
            flush=True,
        )
    results["database_bytes"] = await database_size(dsn)
    print(f"    database size after: {results['database_bytes'] / 1e9:.2f} GB", flush=True)
    await services.drop_database(admin_dsn, dsn)

    if replay_landed():
        dsn = await services.create_database(admin_dsn)
        replay = await timed(
            kgb("replay", "--into", REPLAY_SCHEMA), {**env, "KGB_DATABASE_URL": dsn}, dsn, REPLAY_SCHEMA, exchanges_
        )
        results["replay"] = asdict(replay)
        print(
            f"(c) kgb replay: {replay.steady_exchanges_per_s:,.0f} exchanges/s steady "
            f"= {replay.steady_exchanges_per_s / ceiling:.2f} of the ceiling; peak RSS {replay.peak_rss_mb:,.0f} MB; "
            f"search index built {replay.indexed_after_seconds:.1f}s after the last exchange",
            flush=True,
        )
        await services.drop_database(admin_dsn, dsn)
    else:
        results["replay"] = None
        print("(c) kgb replay: not measured, consumers/replay has not landed", flush=True)
    return results


async def database_size(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchanges", type=int, default=100_000, help="exchanges on the generated topic")
    parser.add_argument("--batch-size", type=int, default=500, help="KGB_WINNI_BATCH_SIZE")
    parser.add_argument("--writers", type=int, default=1, help="KGB_WINNI_WRITERS (1 per process was fastest with 2 processes)")
    parser.add_argument("--processes", type=int, default=2, help="KGB_WINNI_PROCESSES")
    parser.add_argument(
        "--without-search",
        action="store_true",
        help="first run winni with KGB_WINNI_SEARCH_INDEX=false too: the baseline for what search costs it",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path, help="py-spy's collapsed stacks of the live consumer, written here")
    args = parser.parse_args()
    with services.kafka_broker() as kafka, services.postgres_server() as postgres, contextlib.suppress(KeyboardInterrupt):
        results = asyncio.run(measure(kafka.bootstrap, postgres.admin_dsn, args))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
