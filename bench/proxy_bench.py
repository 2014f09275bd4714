"""Direct vs nginx vs `kgb proxy` (capture and publishing on, real Kafka), in one run.

    .venv/bin/python -m bench.proxy_bench [--json results.json] [--scale 0.5] [--keep]

Why one run: the three targets take turns inside each scenario on the same machine,
upstream and load generator, so the ratios between them mean something even on a
noisy 2-core box. Every process is separate (fake upstreams, nginx, each kgb proxy,
the load generator, the Kafka broker), so each proxy's CPU seconds and peak RSS are
its own. See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/proxy_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.peers import LITELLM, MITMPROXY, start_peers, version
from bench.report import emit
from bench.targets import ROOT, BenchError, Measured, Target, start_fake, start_kgb, start_nginx, workdir
from schemas.codec import EXCHANGE, make_decoder
from tests.services import MAX_MESSAGE_BYTES, kafka_broker

EVENTS_PER_STREAM = 50
DELTAS = EVENTS_PER_STREAM - 5  # message_start, block start, deltas, block stop, message_delta, message_stop
PACE_S = 0.020
SETTLE_S = 0.5  # after a run, so CPU spent flushing what the run produced is counted in it
PUBLISH_WAIT_S = 60.0
QUIET_CPU_PCT = 15.0  # of all CPUs
QUIET_WAIT_S = 10.0


@dataclass(frozen=True)
class Scenario:
    name: str
    route: str  # "fast" or "paced": which fake upstream answers
    stream: bool
    concurrency: int
    requests: int
    body_bytes: int = 0
    stagger_s: float = 0.0  # see bench/loadgen.py run()

    def warmup(self) -> int:
        """Enough to open every pooled connection twice over and warm each process's caches."""
        return max(2 * self.concurrency, 20)


SCENARIOS = (
    Scenario("json c=1", "fast", False, 1, 2000),
    Scenario("json c=64", "fast", False, 64, 6000),
    Scenario("sse50 c=1", "fast", True, 1, 1000),
    Scenario("sse50 c=64", "fast", True, 64, 3000),
    Scenario("paced c=16", "paced", True, 16, 300, stagger_s=EVENTS_PER_STREAM * PACE_S / 16),
    Scenario("500KB c=16", "fast", True, 16, 600, body_bytes=500 * 1024),
)


def percentile(samples: list[float], q: float) -> float:
    """Nearest rank: a real sample, never an interpolation between two."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


# --- Running one scenario against one target --------------------------------------


def loadgen_spec(scenario: Scenario, url: str) -> str:
    spec = {
        "url": url + "/v1/messages",
        "concurrency": scenario.concurrency,
        "requests": scenario.requests,
        "warmup": scenario.warmup(),
        "stream": scenario.stream,
        "body_bytes": scenario.body_bytes,
        "stagger_s": scenario.stagger_s,
    }
    return orjson.dumps(spec).decode()


def expect_line(process: subprocess.Popen[str], what: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise BenchError(f"load generator exited ({process.returncode}) before {what}; its stderr is above")
    return line


def wait_quiet(longest: float) -> float:
    """Wait (up to `longest` seconds) until the machine is nearly idle; returns the last CPU use seen, in percent.

    Why: the Kafka broker's start-up and kgb's publishing after a run load the
    same two cores; without this the next run, often direct's, would pay for them.
    """
    deadline, busy = time.monotonic() + longest, psutil.cpu_percent(interval=0.5)
    while time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=0.5)
        if busy < QUIET_CPU_PCT:
            break
    return busy


@dataclass(frozen=True)
class Watch:
    """The bench's own long-lived processes (this one, fakes, nginx, kgb, the broker), to tell their CPU from other work."""

    ours: tuple[Measured, ...]
    broker: Measured

    def snapshot(self, target: Measured | None) -> dict[str, float]:
        return {
            "target": target.cpu_seconds() if target else 0.0,
            "ours": sum(measured.cpu_seconds() for measured in self.ours),
            "broker": self.broker.cpu_seconds(),
            "busy": system_busy_seconds(),
            "clock": time.monotonic(),
        }


def system_busy_seconds() -> float:
    """All CPUs' non-idle time (guest time is already inside user, so it is not added again)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def drive(scenario: Scenario, url: str, target: Measured | None, watch: Watch) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the load generator; counters are read just around the measured part, after the warm-up.

    The target's CPU is read per process of its tree, so a worker `kgb proxy`
    starts is reported apart from the relay; `window` is the measured part's
    wall-clock span, to find its events on the topic afterwards.
    """
    cmd = [sys.executable, "-m", "bench.loadgen", loadgen_spec(scenario, url)]
    with subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as process:
        expect_line(process, "warming up")
        if target:
            target.reset_peak_rss()
        before = watch.snapshot(target)
        per_process = target.cpu_by_pid() if target else {}
        started = time.time()
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        result = orjson.loads(expect_line(process, "reporting"))
        ended = time.time()
    time.sleep(SETTLE_S)
    delta = {key: value - before[key] for key, value in watch.snapshot(target).items()}
    other = delta["busy"] - delta["ours"] - result["cpu"]
    usage: dict[str, Any] = {"other_cpu_pct": max(0.0, 100 * other / delta["clock"]), "window": (started, ended)}
    if target:
        usage |= {
            "cpu_s": delta["target"],
            "peak_rss_mb": target.peak_rss_mb(),
            "broker_cpu_s": delta["broker"],
            "cpu_s_by_process": cpu_by_role(per_process, target.cpu_by_pid()),
            "peak_rss_mb_by_process": target.peak_rss_by_process(),
        }
    return result, usage


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds between two readings, summed per role; a process born in between counts from zero."""
    spent: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        spent[role] = spent.get(role, 0.0) + cpu - before.get(pid, (role, 0.0))[1]
    return spent


def summarize(result: dict[str, Any], usage: dict[str, float]) -> dict[str, Any]:
    """Milliseconds and rates from the raw samples."""
    ttfb, total, done = result["ttfb"], result["total"], len(result["total"])
    if not done:
        raise BenchError(f"every request failed: {result['first_error']}")
    row: dict[str, Any] = {
        "requests": done,
        "errors": result["errors"],
        "first_error": result["first_error"],
        "ttfb_p50_ms": percentile(ttfb, 50) * 1e3,
        "ttfb_p99_ms": percentile(ttfb, 99) * 1e3,
        "total_p50_ms": percentile(total, 50) * 1e3,
        "total_p99_ms": percentile(total, 99) * 1e3,
        "rps": done / result["wall"],
        "loadgen_cpu_pct": 100 * result["cpu"] / result["wall"],
        "sent": result["sent"],
    }
    row |= usage
    if "cpu_s" in usage:
        row["cpu_ms_per_request"] = 1e3 * usage["cpu_s"] / done
        by_process = usage["cpu_s_by_process"]
        row["cpu_ms_per_request_by_process"] = {role: 1e3 * cpu / done for role, cpu in by_process.items()}
        row["relay_cpu_ms_per_request"] = 1e3 * by_process.get("relay", 0.0) / done
        if "broker_cpu_s" in usage:  # the broker shares the machine: what publishing costs it is part of capture's cost
            row["broker_cpu_ms_per_request"] = 1e3 * usage["broker_cpu_s"] / done
        rss = usage["peak_rss_mb_by_process"]
        row["relay_peak_rss_mb"] = rss.get("relay", 0.0)
        if len(by_process) > 1:  # the relay's helpers: nginx's master, kgb's capture worker
            row["helpers_cpu_ms_per_request"] = 1e3 * (sum(by_process.values()) - by_process.get("relay", 0.0)) / done
            row["helpers_peak_rss_mb"] = max(mb for role, mb in rss.items() if role != "relay")
    return row


def with_ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each proxy against direct and against nginx: added p50 milliseconds and throughput ratios."""
    for name, row in rows.items():
        for base in ("direct", "nginx"):
            if name != base and base in rows:
                row[f"added_total_p50_ms_vs_{base}"] = row["total_p50_ms"] - rows[base]["total_p50_ms"]
                row[f"added_ttfb_p50_ms_vs_{base}"] = row["ttfb_p50_ms"] - rows[base]["ttfb_p50_ms"]
                row[f"added_ttfb_p99_ms_vs_{base}"] = row["ttfb_p99_ms"] - rows[base]["ttfb_p99_ms"]
                row[f"rps_x_{base}"] = row["rps"] / rows[base]["rps"]
    return rows


def measure(
    scenario: Scenario, targets: list[Target], watch: Watch, quiet_wait: float, rounds: int = 1
) -> dict[str, dict[str, Any]]:
    """Every target `rounds` times, taking turns, every other round in the reverse order (so no target always
    follows the same one); each round's ratios are against that round's direct and nginx (`combined`)."""
    runs: dict[str, list[dict[str, Any]]] = {target.name: [] for target in targets}
    for number in range(rounds):
        rows = {}
        for target in targets if number % 2 == 0 else targets[::-1]:
            url = target.fast if scenario.route == "fast" else target.paced
            print(f"  {scenario.name:<11} {target.name:<7}", end="", flush=True)
            busy_before = wait_quiet(quiet_wait)
            result, usage = drive(scenario, url, target.measured.get(scenario.route), watch)
            rows[target.name] = summarize(result, usage) | {"machine_cpu_pct_before": busy_before}
            print(f" {rows[target.name]['rps']:8.0f} req/s", flush=True)
        for name, row in with_ratios(rows).items():
            runs[name].append(row)
    return {name: combined(rows) for name, rows in runs.items()}


def combined(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A target's rounds as one row: the round of median req/s (the lower of the two middle ones) stands for
    them, but for its comparisons (added latency, req/s ratios), the medians of each round's against its own
    round's direct and nginx: on this shared machine nginx's own req/s moved by up to 2x between rounds
    of one run (bench/README, stop 26), and a round's targets see the same machine. Peak memory is the worst round's,
    what was sent and when, all rounds'; `rounds` keeps each round's row."""
    row = dict(sorted(rounds, key=lambda r: r["rps"])[(len(rounds) - 1) // 2])
    for key in row.keys() & COMPARED:
        row[key] = statistics.median(r[key] for r in rounds)
    for key in row.keys() & PEAKS:
        row[key] = max(r[key] for r in rounds)
    return row | {"sent": sum(r["sent"] for r in rounds), "windows": [r["window"] for r in rounds], "rounds": rounds}


COMPARED = frozenset(
    f"{what}_vs_{base}" if what.startswith("added") else f"{what}_{base}"
    for what in ("added_total_p50_ms", "added_ttfb_p50_ms", "added_ttfb_p99_ms", "rps_x")
    for base in ("direct", "nginx")
)
PEAKS = frozenset({"peak_rss_mb", "relay_peak_rss_mb", "helpers_peak_rss_mb"})


# --- Setting up, and checking that kgb really published ---------------------------


@dataclass(frozen=True)
class Setup:
    targets: list[Target]
    bootstrap: str
    topic: str
    watch: Watch


def start_targets(stack: contextlib.ExitStack, work: Path, with_peers: bool, baseline: Path | None = None) -> Setup:
    """Two fake upstreams (unpaced, paced), nginx in front of both, the broker, one kgb proxy in front of
    each fake, (`with_peers`) mitmproxy, buffering and streaming, and LiteLLM, likewise one per fake, and
    (`baseline`) the kgb of another source tree as "kgb-base", publishing to a topic of its own."""
    fast, fast_fake = start_fake(stack, work, "fake-fast", DELTAS, 0.0)
    paced, paced_fake = start_fake(stack, work, "fake-paced", DELTAS, PACE_S)
    direct = Target("direct", fast, paced, {})
    nginx = start_nginx(stack, work, fast, paced)
    peers = start_peers(stack, work, fast, paced) if with_peers else []
    print("  starting Kafka ...", flush=True)
    broker = stack.enter_context(kafka_broker())
    topic = asyncio.run(create_bench_topic(broker.bootstrap))
    kgb_fast, fast_measured = start_kgb(stack, work, "kgb-fast", fast, broker.bootstrap, topic)
    kgb_paced, paced_measured = start_kgb(stack, work, "kgb-paced", paced, broker.bootstrap, topic)
    kgb = Target("kgb", kgb_fast, kgb_paced, {"fast": fast_measured, "paced": paced_measured})
    if baseline is not None:
        base_topic = asyncio.run(create_bench_topic(broker.bootstrap))
        base_fast, base_fast_measured = start_kgb(stack, work, "base-fast", fast, broker.bootstrap, base_topic, baseline)
        base_paced, base_paced_measured = start_kgb(stack, work, "base-paced", paced, broker.bootstrap, base_topic, baseline)
        peers.append(Target("kgb-base", base_fast, base_paced, {"fast": base_fast_measured, "paced": base_paced_measured}))
    broker_pids = broker_processes(broker)
    served = [measured for target in (nginx, kgb, *peers) for measured in {id(m): m for m in target.measured.values()}.values()]
    ours = (Measured((os.getpid(),), tree=False), fast_fake, paced_fake, *served, Measured(broker_pids))
    return Setup([direct, nginx, kgb, *peers], broker.bootstrap, topic, Watch(ours, Measured(broker_pids)))


async def create_bench_topic(bootstrap: str) -> str:
    """A topic of its own whose records carry the broker's append time: when each event reached the topic."""
    name = f"kgb-bench-{uuid.uuid4().hex[:12]}"
    configs = {"max.message.bytes": str(MAX_MESSAGE_BYTES), "message.timestamp.type": "LogAppendTime"}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, 3, 1, topic_configs=configs)])
    finally:
        await admin.close()
    if errors := [error for error in response.topic_errors if error[1]]:
        raise BenchError(f"creating topic {name} failed: {errors}")
    return name


def broker_processes(broker: object) -> tuple[int, ...]:
    """The JVM scripts/kafka.py detached, found by its data directory; none for Docker or an external broker."""
    run_dir = getattr(broker, "run_dir", None)
    if run_dir is None:
        return ()
    return tuple(p.pid for p in psutil.process_iter(["cmdline"]) if any(str(run_dir) in arg for arg in p.info["cmdline"] or ()))


async def wait_published(bootstrap: str, topic: str, exchanges: int) -> dict[str, Any]:
    """Events on the topic (sum of end offsets), polled until every exchange's request and response event is there.

    Publishing is off the request path, so the events may trail the last response by a moment.
    """
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()  # subscribed, so it fetches the topic's metadata
    deadline, count = time.monotonic() + PUBLISH_WAIT_S, 0
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        while True:
            count = sum((await consumer.end_offsets(partitions)).values())
            if count >= 2 * exchanges or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
    finally:
        await consumer.stop()
    return {"exchanges_sent_through_kgb": exchanges, "events_on_topic": count, "expected_events": 2 * exchanges}


async def publish_lags(bootstrap: str, topic: str, windows: dict[str, list[tuple[float, float]]]) -> dict[str, list[float]]:
    """Per scenario, milliseconds from each response's end at the proxy (its `started_at` plus `duration_ms`)
    to its event's append on the topic (the topic keeps the broker's append time): how far capture trails.

    A response belongs to the scenario in one of whose rounds' measured windows it ended (the warm-ups' fall outside).
    """
    decoder = make_decoder(None, EXCHANGE)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=128 * 1024 * 1024,
        max_partition_fetch_bytes=128 * 1024 * 1024,
    )
    await consumer.start()
    lags: dict[str, list[float]] = {name: [] for name in windows}
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        remaining = sum((await consumer.end_offsets(partitions)).values())
        async with asyncio.timeout(PUBLISH_WAIT_S):
            while remaining > 0:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    remaining -= len(records)
                    for record in records:
                        event = await decoder.decode(record.value)
                        if event["kind"] == "RESPONSE":
                            file_lag(lags, windows, event["response"], record.timestamp)
    finally:
        await consumer.stop()
    return lags


def file_lag(
    lags: dict[str, list[float]], windows: dict[str, list[tuple[float, float]]], response: dict[str, Any], appended_ms: int
) -> None:
    ended_ms = response["started_at"] / 1e3 + response["duration_ms"]
    for name, spans in windows.items():
        if any(start <= ended_ms / 1e3 <= stop for start, stop in spans):
            lags[name].append(appended_ms - ended_ms)
            return


def with_lags(results: dict[str, dict[str, dict[str, Any]]], lags: dict[str, list[float]]) -> None:
    for name, samples in lags.items():
        if samples:
            results[name]["kgb"] |= {
                "lag_p50_ms": percentile(samples, 50),
                "lag_p99_ms": percentile(samples, 99),
                "lag_samples": len(samples),
            }


# --- Verdicts and the report -------------------------------------------------------


def verdicts(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Issue 10's targets, each checked when its scenario ran (see --only)."""
    kgb = {name: rows["kgb"] for name, rows in results.items()}

    per_scenario: list[tuple[str, str, Callable[[], float], str, float]] = [
        (
            "json c=1",
            "added p50 total latency vs direct, json c=1 (ms)",
            lambda: kgb["json c=1"]["added_total_p50_ms_vs_direct"],
            "<=",
            0.5,
        ),
        (
            "sse50 c=1",
            "added p50 total latency vs direct, sse50 c=1 (ms)",
            lambda: kgb["sse50 c=1"]["added_total_p50_ms_vs_direct"],
            "<=",
            0.5,
        ),
        (
            "paced c=16",
            "paced TTFB p50 minus direct, c=16 (ms)",
            lambda: kgb["paced c=16"]["added_ttfb_p50_ms_vs_direct"],
            "<=",
            1.0,
        ),
        (
            "paced c=16",
            "paced TTFB p99 minus direct, c=16 (ms)",
            lambda: kgb["paced c=16"]["added_ttfb_p99_ms_vs_direct"],
            "<=",
            5.0,
        ),
        ("sse50 c=64", "sse50 c=64 throughput / nginx", lambda: kgb["sse50 c=64"]["rps_x_nginx"], ">=", 0.6),
        ("500KB c=16", "500KB c=16 throughput / nginx", lambda: kgb["500KB c=16"]["rps_x_nginx"], ">=", 0.5),
    ]
    checks = [(what, value(), op, limit) for scenario, what, value, op, limit in per_scenario if scenario in kgb]
    checks.append(("relay peak RSS over all scenarios (MB)", max(row["relay_peak_rss_mb"] for row in kgb.values()), "<=", 80.0))
    workers = [row["helpers_peak_rss_mb"] for row in kgb.values() if "helpers_peak_rss_mb" in row]
    if workers:  # none before the capture worker exists
        checks.append(("worker peak RSS over all scenarios (MB)", max(workers), "<=", 150.0))
    for peer in sorted({target for rows in results.values() for target in rows} & PEERS):
        behind = [
            name
            for name, rows in results.items()
            if peer in rows and not ahead(rows["kgb"], rows[peer], name in PACED_ROUTE_SCENARIOS)
        ]
        checks.append((f"scenarios where kgb is not ahead of {peer} (p50 and req/s; paced: TTFB p50)", len(behind), "<=", 0))
    return [
        {"target": what, "value": value, "limit": f"{op} {limit}", "met": value <= limit if op == "<=" else value >= limit}
        for what, value, op, limit in checks
    ]


PEERS = frozenset({"mitm", "mitm-stream", "litellm"})


PACED_ROUTE_SCENARIOS = frozenset(scenario.name for scenario in SCENARIOS if scenario.route == "paced")


def ahead(kgb: dict[str, Any], peer: dict[str, Any], paced: bool = False) -> bool:
    """p50 and req/s; for a paced answer, its first byte's p50 alone. A paced answer's total is the fake's
    second of 20 ms sleeps, and its req/s the pace's: on 2026-12-07 the same target's total p50 moved by
    up to 16 ms between two runs, more than the targets differed. The first byte is the one event whose
    wait is the proxy's alone, and the CPU a target takes from the two cores has its own column."""
    if paced:
        return bool(kgb["ttfb_p50_ms"] <= peer["ttfb_p50_ms"])
    return bool(kgb["total_p50_ms"] <= peer["total_p50_ms"] and kgb["rps"] >= peer["rps"])


# (header, width, decimals, key); a cell a target does not have (direct has no CPU of its own) shows "-".
COLUMNS = (
    ("n", 5, 0, "requests"),
    ("err", 4, 0, "errors"),
    ("ttfb50", 7, 2, "ttfb_p50_ms"),
    ("ttfb99", 7, 2, "ttfb_p99_ms"),
    ("tot50", 7, 2, "total_p50_ms"),
    ("tot99", 7, 2, "total_p99_ms"),
    ("req/s", 7, 0, "rps"),
    ("+p50/dir", 8, 2, "added_total_p50_ms_vs_direct"),
    ("+ttfb/dir", 9, 2, "added_ttfb_p50_ms_vs_direct"),
    ("x dir", 6, 2, "rps_x_direct"),
    ("x ngx", 6, 2, "rps_x_nginx"),
    ("cpu s", 6, 2, "cpu_s"),
    ("cpu ms/r", 8, 3, "cpu_ms_per_request"),
    ("relay ms", 8, 3, "relay_cpu_ms_per_request"),
    ("wrkr ms", 7, 3, "helpers_cpu_ms_per_request"),
    ("kafka ms", 8, 3, "broker_cpu_ms_per_request"),
    ("relay MB", 8, 1, "relay_peak_rss_mb"),
    ("wrkr MB", 7, 1, "helpers_peak_rss_mb"),
    ("lag50", 6, 1, "lag_p50_ms"),
    ("lag99", 6, 1, "lag_p99_ms"),
    ("lg cpu%", 7, 0, "loadgen_cpu_pct"),
    ("other%", 6, 0, "other_cpu_pct"),
)


def render_row(target: str, row: dict[str, Any]) -> str:
    cells = [f"{row[key]:>{width}.{decimals}f}" if key in row else "-".rjust(width) for _, width, decimals, key in COLUMNS]
    return " ".join([target.ljust(11), *cells])


def render(report: dict[str, Any]) -> str:
    header = " ".join(["target".ljust(11), *(name.rjust(width) for name, width, _, _ in COLUMNS)])
    lines = [f"times in ms; {report['machine']['cpus']} CPUs, Linux {report['machine']['kernel']}", ""]
    for name, rows in report["results"].items():
        lines += [name, header, *(render_row(target, row) for target, row in rows.items())]
        if len(rows["kgb"]["rounds"]) > 1:
            lines.append("req/s by round: " + ", ".join(f"{t} {by_round(row, 'rps', 0)}" for t, row in rows.items()))
            lines.append(
                "x ngx by round: "
                + ", ".join(f"{t} {by_round(row, 'rps_x_nginx', 2)}" for t, row in rows.items() if t != "nginx")
            )
        lines.append("")
    lines += [
        f"{'MET ' if v['met'] else 'MISS'}  {v['target']}: {v['value']:.2f} (target {v['limit']})" for v in report["verdicts"]
    ]
    kafka = report["kafka"]
    lines.append(
        f"kafka: {kafka['events_on_topic']} events on the topic for {kafka['exchanges_sent_through_kgb']} "
        f"exchanges through kgb (expected {kafka['expected_events']})"
    )
    lines += [
        f"{scenario}/{target}: {row['errors']} errors, first: {row['first_error']}"
        for scenario, rows in report["results"].items()
        for target, row in rows.items()
        if row["errors"]
    ]
    return "\n".join(lines)


def by_round(row: dict[str, Any], key: str, decimals: int) -> str:
    return "/".join(f"{r[key]:.{decimals}f}" for r in row["rounds"])


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}


def scaled(scale: float, only: list[str] | None = None) -> tuple[Scenario, ...]:
    """The scenarios to run (`only` names some, else all), their request counts multiplied by `scale`."""
    unknown = set(only or ()) - {s.name for s in SCENARIOS}
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {[s.name for s in SCENARIOS]}")
    chosen = [s for s in SCENARIOS if only is None or s.name in only]
    return tuple(replace(s, requests=max(s.concurrency, round(s.requests * scale))) for s in chosen)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark direct vs nginx vs kgb proxy (see bench/README.md).")
    parser.add_argument("--json", type=Path, help="also write the full results here")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's request count (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, nginx.conf) for a post-mortem")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=QUIET_WAIT_S,
        help=f"longest wait, in seconds, for the machine to go quiet before each run (default {QUIET_WAIT_S:.0f})",
    )
    parser.add_argument("--without-peers", action="store_true", help="leave out mitmproxy and LiteLLM (a quicker run)")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="SOURCE_TREE",
        help="also run the kgb of this source tree (e.g. a `git worktree` of the commit before) as kgb-base: before/after in one run",
    )
    parser.add_argument(
        "--only", action="append", metavar="SCENARIO", help='run only this scenario (repeatable), e.g. --only "500KB c=16"'
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of every target per scenario, taking turns; rows show medians (default 1)"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = scaled(args.scale, args.only)
    with contextlib.ExitStack() as stack:
        work = workdir(stack, args.keep)
        print(f"kgb bench: work directory {work}", flush=True)
        setup = start_targets(stack, work, not args.without_peers, args.baseline)
        results = {s.name: measure(s, setup.targets, setup.watch, args.quiet_wait, args.rounds) for s in scenarios}
        exchanges = sum(rows["kgb"]["sent"] for rows in results.values())
        kafka = asyncio.run(wait_published(setup.bootstrap, setup.topic, exchanges))
        windows = {name: rows["kgb"]["windows"] for name, rows in results.items()}
        with_lags(results, asyncio.run(publish_lags(setup.bootstrap, setup.topic, windows)))
    peers = {} if args.without_peers else {"mitmproxy": version(MITMPROXY), "litellm": version(LITELLM)}
    return {
        "machine": machine() | {"peers": peers, "uptime": uptime()},
        "scenarios": [asdict(s) for s in scenarios],
        "results": results,
        "verdicts": verdicts(results),
        "kafka": kafka,
    }


def uptime() -> str:
    """The load averages when the run ended: the figures mean little without them on a shared machine."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    report = run(args)
    emit(report, "\n" + render(report), args.json)


if __name__ == "__main__":
    main()
