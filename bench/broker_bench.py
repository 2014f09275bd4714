"""The fixture Kafka broker's CPU per exchange, under variants of its JVM, its properties and the producer, in one run.

    .venv/bin/python -m bench.broker_bench [--rounds 3] [--only fixture --only "linger 20 ms"] [--scale 0.5] [--jfr DIR]

Why: on the 2-core box the broker scripts/kafka.py starts (the tests' and the benches' broker) shares
the cores with what is measured, and in proxy_bench's "500KB c=16" row it spends about a third of the
CPU. Each variant gets a fresh broker; kgb's own producer (`KafkaLink`, so `CaptureSettings` decides
acks, idempotence, compression, batch size and linger) publishes exchanges shaped like the worker's:
a request event holding the 500 KB body bench/loadgen.py sends (or its small one) and a response event
holding the fake upstream's answer, all under one session key, at a steady rate with every send in
flight as the worker keeps them. The broker's CPU (user + system, psutil) is read around each workload,
and around an idle spell, so what it spends per exchange can be told from what it spends per second
doing nothing; this process's own CPU around each workload is the producer's (compression, batching), so
a variant that spares the broker can be weighed against what it costs the worker. Rounds run the variants
in alternating order so neither end of a round is favoured. The JVM and server.properties variants tune
the fixture only (a deployment's broker is not ours to configure); the producer ones are kgb's own.
`--jfr DIR` records each broker with Java Flight Recorder (settings=profile) into DIR, start-up included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/broker_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench.loadgen import Spec, request_body
from common.config import KafkaSettings
from proxy.kafkalink import KafkaLink
from proxy.settings import MiB, CaptureSettings
from schemas.codec import EXCHANGE
from scripts import kafka
from tests.fakes.anthropic import json_message, text_stream
from tests.schemas.factories import request_event, response_event
from tests.services import SCRIPTS, dismiss, remove_after_exit

IDLE_S = 3.0
SETTLE_S = 0.5  # after the last acknowledgement, so what the broker does with the last batches is counted
DELTAS = 45  # proxy_bench's streams: 50 events
WARMUP = 0.5  # of each workload's exchanges, before the counting: a fresh broker's JIT compiles for a minute


@dataclass(frozen=True)
class Variant:
    """One broker and producer configuration; `extra` is server.properties lines, `capture` CaptureSettings fields."""

    name: str
    jvm: tuple[str, ...] = kafka.JVM_OPTIONS
    extra: str = ""
    capture: dict[str, Any] = field(default_factory=dict)


def jvm_with(*flags: str, gc: str = "-XX:+UseG1GC") -> tuple[str, ...]:
    return (*(flag for flag in kafka.JVM_OPTIONS if flag != "-XX:+UseG1GC"), gc, *flags)


VARIANTS = (
    Variant("fixture"),  # the baseline: scripts/kafka.py and KafkaLink as they are
    Variant("SerialGC", jvm_with(gc="-XX:+UseSerialGC")),
    Variant("ParallelGC", jvm_with(gc="-XX:+UseParallelGC")),
    Variant("C1 only", jvm_with("-XX:TieredStopAtLevel=1")),
    Variant("1 processor", jvm_with("-XX:ActiveProcessorCount=1")),
    Variant("heap 512m fixed", ("-Xms512m", "-Xmx512m", "-XX:+UseG1GC")),
    Variant("threads 1+2", extra="num.network.threads=1\nnum.io.threads=2\nbackground.threads=2\n"),
    Variant("1 MiB, 5 ms", capture={"batch_bytes": MiB, "linger_ms": 5}),  # the producer before issue 10
    Variant("linger 5 ms", capture={"linger_ms": 5}),
    Variant("batch 1 MiB", capture={"batch_bytes": MiB}),
    Variant("lz4", capture={"compression": "lz4"}),
    Variant("no compression", capture={"compression": "none"}),
)


@dataclass(frozen=True)
class Workload:
    """Exchanges like one proxy_bench row's: its request body, its answer, about its rate through kgb."""

    name: str
    body_bytes: int
    stream: bool
    exchanges: int
    rate: float  # exchanges a second


WORKLOADS = (
    Workload("500KB", 500 * 1024, True, 600, 150.0),
    Workload("json", 0, False, 2000, 500.0),
)


def events(workload: Workload, link: KafkaLink) -> tuple[bytes, bytes]:
    """One exchange's two encoded events; every exchange of a workload sends the same pair, as loadgen's
    requests are all the same body."""
    spec = Spec(url="", concurrency=1, requests=1, warmup=0, stream=workload.stream, body_bytes=workload.body_bytes)
    body = request_body(spec)
    request = request_event(body_size=0)
    request["request"] = {**request["request"], "body": body, "body_size": len(body), "stream": workload.stream}
    answer = text_stream(deltas=DELTAS) if workload.stream else json_message()
    response = response_event(is_sse=workload.stream)
    response["response"] = {**response["response"], "body": answer.payload}
    encoder = link.encoders[EXCHANGE]
    return encoder.encode(request), encoder.encode(response)


async def publish(link: KafkaLink, key: bytes, pair: tuple[bytes, bytes], count: int, rate: float) -> None:
    """`count` exchanges at `rate` a second, every send left in flight until the end (the worker waits on
    Kafka only past MAX_UNACKED exchanges), then every acknowledgement awaited; a failed send raises."""
    futures: list[asyncio.Future] = []
    start = time.monotonic()
    for n in range(count):
        if (delay := start + n / rate - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        for value in pair:
            futures.append(await link.send(EXCHANGE, key, value))
    await asyncio.gather(*futures)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def jit_seconds(process: psutil.Process) -> float:
    """The CPU the JVM's compiler threads took: a fresh broker still compiles its produce path a minute
    into a bench, a cost a long-lived broker pays once, so it is shown apart. On 2 cores a tiered JVM keeps
    one C1 and one C2 thread for its whole life (CICompilerCount=2); with "C1 only" a compiler thread comes
    and goes, taking its count along, so that variant's figure reads low, even below zero."""
    threads = process.threads()
    names = {thread.id: Path(f"/proc/{process.pid}/task/{thread.id}/comm") for thread in threads}
    return sum(
        thread.user_time + thread.system_time
        for thread in threads
        if names[thread.id].read_text().startswith(("C1 CompilerThre", "C2 CompilerThre"))
    )


@contextlib.contextmanager
def broker(variant: Variant) -> Iterator[tuple[str, psutil.Process, float]]:
    """A fresh broker as `variant` configures it: its bootstrap, its process, and the CPU seconds it took to start.

    A watchdog stops it and deletes its directory if this process dies before the `finally`."""
    run_dir, port = Path(tempfile.mkdtemp(prefix="kgb-broker-bench-")), kafka.free_port()
    watchdog = remove_after_exit([sys.executable, str(SCRIPTS / "kafka.py"), "stop", str(run_dir)], run_dir)
    try:
        kafka.start(run_dir, port, jvm=variant.jvm, extra=variant.extra)
        pid = kafka.running_pid(run_dir)
        assert pid is not None
        process = psutil.Process(pid)
        yield f"127.0.0.1:{port}", process, cpu_seconds(process)
    finally:
        dismiss(watchdog)
        kafka.stop(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


async def measure_on(variant: Variant, bootstrap: str, process: psutil.Process, scale: float) -> dict[str, float]:
    """Warm the broker, read its CPU over an idle spell and then its and the producer's over each workload."""
    settings = replace(CaptureSettings(kafka=KafkaSettings(bootstrap=bootstrap)), **variant.capture)
    link = KafkaLink(settings, None)
    await link.open()
    key = request_event()["session_key"].encode()
    producer = psutil.Process()
    figures: dict[str, float] = {}
    try:
        for workload in WORKLOADS:  # the JIT's first compilations, off the books
            await publish(link, key, events(workload, link), round(workload.exchanges * WARMUP), workload.rate)
        await asyncio.sleep(SETTLE_S)
        before = cpu_seconds(process)
        await asyncio.sleep(IDLE_S)
        figures["idle ms/s"] = 1e3 * (cpu_seconds(process) - before) / IDLE_S
        for workload in WORKLOADS:
            count = max(50, round(workload.exchanges * scale))
            pair = events(workload, link)
            before, jit, ours = cpu_seconds(process), jit_seconds(process), cpu_seconds(producer)
            await publish(link, key, pair, count, workload.rate)
            await asyncio.sleep(SETTLE_S)
            figures[f"{workload.name} ms/exch"] = 1e3 * (cpu_seconds(process) - before) / count
            figures[f"{workload.name} jit"] = 1e3 * (jit_seconds(process) - jit) / count
            figures[f"{workload.name} producer"] = 1e3 * (cpu_seconds(producer) - ours) / count
    finally:
        await link.close(10.0)
    return figures


def recording(jfr: Path | None, variant: Variant, number: int) -> tuple[str, ...]:
    """The JVM option that records this broker into `jfr`, if asked for."""
    if jfr is None:
        return ()
    jfr.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"\W+", "-", variant.name)
    return (f"-XX:StartFlightRecording=filename={jfr / f'{name}-{number}.jfr'},settings=profile",)


def measure(variant: Variant, scale: float, jfr: Path | None, number: int) -> dict[str, float]:
    started = time.monotonic()
    recorded = replace(variant, jvm=(*variant.jvm, *recording(jfr, variant, number)))
    with broker(recorded) as (bootstrap, process, start_cpu):
        figures = {"start cpu s": start_cpu, "start s": time.monotonic() - started}
        figures.update(asyncio.run(measure_on(variant, bootstrap, process, scale)))
    return figures


def run(variants: list[Variant], rounds: int, scale: float, jfr: Path | None) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {variant.name: [] for variant in variants}
    for number in range(rounds):
        order = variants if number % 2 == 0 else variants[::-1]
        for variant in order:
            figures = measure(variant, scale, jfr, number + 1)
            figures["load1"] = float(Path("/proc/loadavg").read_text().split()[0])
            results[variant.name].append(figures)
            shown = "  ".join(f"{name} {value:.2f}" for name, value in figures.items())
            print(f"round {number + 1} {variant.name:<16} {shown}", flush=True)
    return results


def report(results: dict[str, list[dict[str, float]]]) -> None:
    """Medians over the rounds, and each variant's against the first (the fixture as it is)."""
    columns = [name for name in next(iter(results.values()))[0] if name != "load1"]
    base = {name: statistics.median(r[name] for r in next(iter(results.values()))) for name in columns}
    print("\nmedians over rounds (x: against " + next(iter(results)) + ")")
    print(f"{'variant':<16}" + "".join(f"{name:>16}" for name in columns) + f"{'load1':>16}")
    for variant, rows in results.items():
        cells = []
        for name in columns:
            value = statistics.median(r[name] for r in rows)
            cells.append(f"{value:8.2f} x{value / base[name]:5.2f}" if base[name] else f"{value:8.2f}")
        loads = ",".join(f"{r['load1']:.1f}" for r in rows)
        print(f"{variant:<16}" + "".join(f"{cell:>16}" for cell in cells) + f"{loads:>16}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The fixture broker's CPU per exchange under variants (bench/README.md).")
    parser.add_argument("--rounds", type=int, default=3, help="times each variant runs, in alternating order (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply each workload's exchange count (default 1)")
    names = [variant.name for variant in VARIANTS]
    parser.add_argument(
        "--only", action="append", choices=names, help="run only these variants (repeatable); the first is the baseline"
    )
    parser.add_argument("--jfr", type=Path, help="record each broker with Java Flight Recorder into this directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    by_name = {variant.name: variant for variant in VARIANTS}
    chosen = [by_name[name] for name in args.only] if args.only else list(VARIANTS)  # the first is the baseline
    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    report(run(chosen, args.rounds, args.scale, args.jfr))
    print(f"load average at end: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
