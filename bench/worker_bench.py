"""The capture worker alone, end to end: its CPU per exchange from the capture log to Kafka's acks.

    .venv/bin/python -m bench.worker_bench [--exchanges 1000] [--warmup 32] [--baseline TREE] [--rounds 2] [--profile DIR]

`bench/build_bench.py` times the worker's read, assemble and encode path offline;
this runs the real `kgb capture-worker` process, publishing to a real broker
(`tests.services.kafka_broker()`, as bench/proxy_bench.py starts it), so what the
offline bench leaves out counts too: aiokafka's batching, compression and sends,
the event loop, checkpoint saves and segment deletion.

A spool of `--warmup` then `--exchanges` exchanges of proxy_bench's 500KB c=16
scenario is written once with the relay's own writer (`build_bench.write_spool`:
the load generator's 500 KB bodies, 16 exchanges interleaved, 64 MiB segments;
the warm-up's in segments of their own). Each run copies it, starts a worker
(the tree's code: its cwd, first on its path) on an empty log directory and a
topic of its own, waits for it to be connected, links the warm-up's segments
into its directory (the inotify it waits on sees them appear) and waits until
they are published; then links the rest and waits until every event is
acknowledged and the checkpoint has reached the log's end. A run's figures, of
that second part alone: the worker process's CPU time (utime + stime of every
thread, robust to other load) per exchange, and events acknowledged per second
of wall time (to its last ack). Start-up and first-use costs (imports, the
redaction automaton, Kafka's connection, the first batches) are not counted.
Rounds alternate between this tree and `--baseline TREE` (which goes first, too), so both see the same
machine load; the ratio is of the medians. `--profile DIR` records each of this
tree's runs with py-spy (raw format) into DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/worker_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.build_bench import Scenario, write_spool
from bench.proxy_bench import create_bench_topic
from bench.report import emit
from bench.targets import ROOT, BenchError, workdir
from bench.worker_idle_bench import cpu_seconds
from proxy import workerstats
from proxy.logwriter import segments
from tests.services import kafka_broker

BODY_BYTES = 500 * 1024
CONCURRENCY = 16
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 300.0
POLL_S = 0.05


def start_worker(tree: Path, spool: Path, bootstrap: str, topic: str, log: Path) -> subprocess.Popen[bytes]:
    """`python -m kgb capture-worker --supervised` of `tree`, its stdin a pipe whose end stops it."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "KGB_KAFKA_BOOTSTRAP": bootstrap,
        "KGB_TOPIC": topic,
        "KGB_MCP_TOPIC": topic + "-mcp",
        "KGB_SPOOL_DIR": str(spool),
    }
    command = [sys.executable, "-m", "kgb", "--log-level", "WARNING", "capture-worker", "--supervised"]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=out, stderr=out)


def wait_figures(
    spool: Path, process: subprocess.Popen[bytes], done: Callable[[workerstats.WorkerFigures], bool], timeout: float, what: str
) -> workerstats.WorkerFigures:
    """Poll the worker's figures file until `done(figures)`; a worker that exits meanwhile is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the capture worker exited with {process.returncode} before {what}")
        figures = workerstats.read(spool)
        if figures is not None and figures.pid == process.pid and done(figures):
            return figures
        time.sleep(POLL_S)
    raise BenchError(f"the capture worker did not get {what} within {timeout:.0f} s")


def link_segments(paths: list[Path], spool: Path) -> None:
    """Move segments into the worker's log oldest first, as links (inotify reports a link, not a rename),
    leaving each the only name of its file, so the worker's deleting it costs what it costs in the proxy."""
    for path in paths:
        os.link(path, spool / path.name)
        path.unlink()


def write_spools(directory: Path, warmup: int, exchanges: int) -> int:
    """The warm-up's exchanges, then the measured ones in later segments (a second writer starts a new one);
    how many segments the warm-up's are."""
    write_spool(directory, Scenario("500KB c=16", True, CONCURRENCY, warmup, body_bytes=BODY_BYTES))
    first = len(segments(directory))
    write_spool(directory, Scenario("500KB c=16", True, CONCURRENCY, exchanges, body_bytes=BODY_BYTES))
    return first


def drained(events: int) -> Callable[[workerstats.WorkerFigures], bool]:
    """Every event acknowledged and the checkpoint at the log's end."""
    return lambda f: f.events_published >= events and f.checkpoint_lag_bytes == 0 and f.checkpoint_lag_segments <= 1


def one_run(
    tree: Path, spool_copy: Path, warm_segments: int, work: Path, bootstrap: str, args: argparse.Namespace, profile: Path | None
) -> dict[str, Any]:
    spool = work / "spool"
    spool.mkdir(mode=0o700)
    topic = asyncio.run(create_bench_topic(bootstrap))
    process = start_worker(tree, spool, bootstrap, topic, work / "worker.log")
    recorder = None
    paths = [path for _, path in segments(spool_copy)]
    try:
        wait_figures(spool, process, lambda f: f.kafka_up, START_TIMEOUT_S, "connected to Kafka")
        link_segments(paths[:warm_segments], spool)
        wait_figures(spool, process, drained(2 * args.warmup), DRAIN_TIMEOUT_S, "the warm-up published")
        if profile is not None:
            py_spy = str(Path(sys.executable).with_name("py-spy"))
            command = [py_spy, "record", "-p", str(process.pid), "-r", "200", "-f", "raw", "-o", str(profile)]
            recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaching
        started_cpu, started_at = cpu_seconds(process.pid), time.time()
        link_segments(paths[warm_segments:], spool)
        total = 2 * (args.warmup + args.exchanges)
        figures = wait_figures(spool, process, drained(total), DRAIN_TIMEOUT_S, f"{total} events published")
        cpu = cpu_seconds(process.pid) - started_cpu
    finally:
        if recorder is not None:
            recorder.send_signal(2)  # SIGINT: py-spy writes what it recorded
            recorder.wait(30)
        assert process.stdin is not None
        process.stdin.close()
        process.wait(60)
    return {
        "cpu_s": cpu,
        "ms_per_exchange": 1000 * cpu / args.exchanges,
        "events": figures.events_published - 2 * args.warmup,
        "events_per_s": 2 * args.exchanges / max(figures.last_publish - started_at, 1e-9),
        "dropped": sum(figures.dropped.values()),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    trees = [("this", ROOT)] + ([("base", args.baseline.resolve())] if args.baseline else [])
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        work = workdir(stack, keep=False)
        written = work / "written"
        warm_segments = write_spools(written, args.warmup, args.exchanges)
        broker = stack.enter_context(kafka_broker())
        for number in range(args.rounds):
            for label, tree in trees if number % 2 == 0 else trees[::-1]:  # neither always first
                here = work / f"{label}-{number}"
                here.mkdir()
                shutil.copytree(written, here / "copy", ignore=shutil.ignore_patterns("worker.lock"))
                profile = args.profile / f"{label}-{number}.raw" if args.profile and label == "this" else None
                runs[label].append(one_run(tree, here / "copy", warm_segments, here, broker.bootstrap, args, profile))
                shutil.rmtree(here)
    summary: dict[str, Any] = {"exchanges": args.exchanges, "runs": runs}
    for label, done in runs.items():
        summary[label] = {
            "ms_per_exchange": statistics.median(r["ms_per_exchange"] for r in done),
            "events_per_s": statistics.median(r["events_per_s"] for r in done),
        }
    if "base" in summary:
        summary["ratio"] = summary["this"]["ms_per_exchange"] / summary["base"]["ms_per_exchange"]
    return summary


def render(summary: dict[str, Any]) -> str:
    lines = [f"{'tree':<5} {'run':>3} {'cpu ms/exch':>11} {'events/s':>9} {'events':>6} {'dropped':>7}  loadavg"]
    for label, done in summary["runs"].items():
        for number, r in enumerate(done):
            lines.append(
                f"{label:<5} {number:>3} {r['ms_per_exchange']:11.3f} {r['events_per_s']:9.1f} {r['events']:6d}"
                f" {r['dropped']:7d}  {' '.join(r['loadavg'])}"
            )
        median = summary[label]
        lines.append(f"{label:<5} med {median['ms_per_exchange']:11.3f} {median['events_per_s']:9.1f}")
    if "ratio" in summary:
        lines.append(f"ratio this/base, CPU per exchange: {summary['ratio']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchanges", type=int, default=1000, help="500 KB exchanges in the spool")
    parser.add_argument("--warmup", type=int, default=32, help="exchanges published first, not measured")
    parser.add_argument("--baseline", type=Path, help="also run the worker of this source tree (rows marked base)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per tree, alternating between trees")
    parser.add_argument("--profile", type=Path, help="record this tree's runs with py-spy (raw) into this directory")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    summary = run(args)
    emit(summary, render(summary), args.json)


if __name__ == "__main__":
    main()
