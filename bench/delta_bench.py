"""A long streamed answer in small deltas: direct vs through `kgb proxy`, and `/health` meanwhile.

    .venv/bin/python -m bench.delta_bench [--answer-bytes 4000000] [--delta-bytes 20] [--rounds 5] [--json out.json]

Why: issue 13 found reassembly quadratic (a 2 MB answer in 20-byte deltas took
9.3 s through the proxy, 0.57 s direct, and stalled `/health` for 2.3 s). The
target is under 10% added to the direct time. Direct and kgb take turns, round
by round, against the same fake upstream (its long-answer mode), so the ratio
holds on a busy machine; kgb runs with capture and publishing on (real Kafka),
and every exchange's events are checked on the topic at the end. `/health` is
polled from a thread during every run; during a direct run the proxy is idle,
which is the baseline its latency under the long answer is set against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import math
import multiprocessing
import statistics
import sys
import time
import urllib.parse
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/delta_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.proxy_bench import PUBLISH_WAIT_S, machine, percentile, wait_published
from bench.report import emit
from bench.targets import BenchError, Measured, start_fake, start_kgb, workdir
from tests.services import create_topic, kafka_broker

HEALTH_EVERY_S = 0.010
TARGET_ADDED = 0.10
REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64000,
    "stream": True,
    "messages": [{"role": "user", "content": "write a lot"}],
}


class HealthProbe:
    """Polls `/health` on one keep-alive connection from a process of its own (not a thread: the
    client's reading would hold the GIL), so only a stalled proxy loop shows as a slow answer.
    A probe the proxy drops or refuses counts as a failure and the next one reconnects."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = multiprocessing.Event()
        self._results: multiprocessing.Queue[tuple[list[float], int]] = multiprocessing.Queue()
        self._process = multiprocessing.Process(target=poll_health, args=(url, self._stop, self._results), daemon=True)

    def __enter__(self) -> HealthProbe:
        self._process.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self.latencies, self.failures = self._results.get(timeout=60)
        self._process.join()


def poll_health(url: str, stop: EventType, results: multiprocessing.Queue[tuple[list[float], int]]) -> None:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    latencies: list[float] = []
    failures = 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            connection.request("GET", "/health")
            answer = connection.getresponse()
            answer.read()
            ok = answer.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        if ok:
            latencies.append(time.perf_counter() - started)
        else:
            failures += 1
            connection.close()
        stop.wait(HEALTH_EVERY_S)
    connection.close()
    results.put((latencies, failures))


async def events_on_topic(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


def wait_events(bootstrap: str, topic: str, count: int) -> None:
    """Until the proxy has published `count` events: building a 27 MB event keeps it busy after the answer ends,
    and a direct run measured meanwhile would pay for it."""
    deadline = time.monotonic() + PUBLISH_WAIT_S
    while asyncio.run(events_on_topic(bootstrap, topic)) < count:
        if time.monotonic() > deadline:
            raise BenchError(f"fewer than {count} events on {topic} after {PUBLISH_WAIT_S:.0f}s")
        time.sleep(0.2)


async def fetch_answer(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    """Seconds from sending the request to the answer's last byte, and the bytes received."""
    started, received = time.perf_counter(), 0
    async with session.post(url + "/v1/messages", json=REQUEST, headers={"x-api-key": "sk-ant-bench"}) as answer:
        if answer.status != 200:
            raise BenchError(f"{url} answered {answer.status}: {(await answer.read())[:300]!r}")
        async for chunk in answer.content.iter_any():
            received += len(chunk)
    return time.perf_counter() - started, received


async def fetch_once(url: str) -> tuple[float, int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        return await fetch_answer(session, url)


def one_run(url: str, health_url: str, kgb: Measured) -> dict[str, Any]:
    """One answer; the proxy's CPU seconds are read around it, /health polled during it."""
    cpu = kgb.cpu_seconds()
    with HealthProbe(health_url) as probe:
        seconds, received = asyncio.run(fetch_once(url))
    return {
        "seconds": seconds,
        "bytes": received,
        "health": probe.latencies,
        "health_failures": probe.failures,
        "kgb_cpu_s": kgb.cpu_seconds() - cpu,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    health = [latency for run in runs for latency in run["health"]] or [math.nan]  # nan: every probe failed
    return {
        "seconds_median": statistics.median(run["seconds"] for run in runs),
        "seconds_all": [run["seconds"] for run in runs],
        "bytes": runs[0]["bytes"],
        "kgb_cpu_s_median": statistics.median(run["kgb_cpu_s"] for run in runs),
        "health_probes": len(health),
        "health_failures": sum(run["health_failures"] for run in runs),
        "health_p50_ms": percentile(health, 50) * 1e3,
        "health_p99_ms": percentile(health, 99) * 1e3,
        "health_max_ms": max(health) * 1e3,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Long answer in small deltas: direct vs kgb proxy (see bench/README.md).")
    parser.add_argument("--answer-bytes", type=int, default=4_000_000, help="text bytes in the answer (default 4 MB)")
    parser.add_argument("--delta-bytes", type=int, default=20, help="text bytes per text_delta (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="answers fetched per target, alternating (default 5)")
    parser.add_argument("--json", type=Path, help="also write the full results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) for a post-mortem")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        work = workdir(stack, args.keep)
        print(f"delta bench: work directory {work}", flush=True)
        fake, _ = start_fake(
            stack, work, "fake-long", 0, 0.0, ("--answer-bytes", str(args.answer_bytes), "--delta-bytes", str(args.delta_bytes))
        )
        print("  starting Kafka ...", flush=True)
        broker = stack.enter_context(kafka_broker())
        topic = asyncio.run(create_topic(broker.bootstrap))
        kgb, measured = start_kgb(stack, work, "kgb", fake, broker.bootstrap, topic)
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "kgb": []}
        for number in range(args.rounds):
            for name, url in (("direct", fake), ("kgb", kgb)):
                runs[name].append(one_run(url, kgb, measured))
                print(f"  round {number + 1} {name:<6} {runs[name][-1]['seconds']:.3f} s", flush=True)
            wait_events(broker.bootstrap, topic, 2 * (number + 1))
        kafka = asyncio.run(wait_published(broker.bootstrap, topic, args.rounds))
    direct, through = summarize(runs["direct"]), summarize(runs["kgb"])
    if through["bytes"] != direct["bytes"]:
        raise BenchError(f"kgb delivered {through['bytes']} bytes, direct {direct['bytes']}")
    added = through["seconds_median"] / direct["seconds_median"] - 1
    return {
        "machine": machine(),
        "answer_bytes": args.answer_bytes,
        "delta_bytes": args.delta_bytes,
        "rounds": args.rounds,
        "direct": direct,
        "kgb": through,
        "added_fraction": added,
        "health_p99_x_idle": through["health_p99_ms"] / direct["health_p99_ms"],
        "met": added < TARGET_ADDED,
        "kafka": kafka,
    }


def render(report: dict[str, Any]) -> str:
    direct, kgb = report["direct"], report["kgb"]
    kafka = report["kafka"]
    return "\n".join(
        [
            f"{report['answer_bytes']} bytes of text in {report['delta_bytes']}-byte deltas "
            f"({direct['bytes']} bytes on the wire), {report['rounds']} rounds; {report['machine']['cpus']} CPUs",
            f"{'':8}{'median s':>9} {'kgb cpu s':>10} {'health p50':>11} {'p99':>8} {'max':>8} {'failed':>7}"
            "  (ms; /health of kgb, idle during direct)",
            *(
                f"{name:<8}{row['seconds_median']:9.3f} {row['kgb_cpu_s_median']:10.3f} {row['health_p50_ms']:11.2f}"
                f" {row['health_p99_ms']:8.2f} {row['health_max_ms']:8.2f} {row['health_failures']:7d}"
                for name, row in (("direct", direct), ("kgb", kgb))
            ),
            f"{'MET ' if report['met'] else 'MISS'}  kgb / direct: {1 + report['added_fraction']:.3f} "
            f"({100 * report['added_fraction']:+.1f}%, target < +{100 * TARGET_ADDED:.0f}%)",
            f"/health p99 during the long answer / idle: {report['health_p99_x_idle']:.2f}",
            f"kafka: {kafka['events_on_topic']} events on the topic for {kafka['exchanges_sent_through_kgb']} "
            f"exchanges through kgb (expected {kafka['expected_events']})",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    report = run(args)
    emit(report, "\n" + render(report), args.json)


if __name__ == "__main__":
    main()
