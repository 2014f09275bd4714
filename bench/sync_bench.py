"""The capture log's interval fsync, at proxy_bench's 500 KB rate: the relay's CPU and what reaches the disk.

    .venv/bin/python -m bench.sync_bench [--seconds 8] [--rate 600] [--baseline TREE] [--rounds 2] [--json out.json]

Each run is a process of its own importing one tree's `proxy.logwriter`: a
`LogWriter` with the default settings (64 MiB segments, `interval` fsync every
second, on a thread as the relay's `keep_synced` does) takes `--rate` appends of
a 500 KB body a second, while a thread standing in for the worker deletes every
segment but the newest `--publish-lag-ms` after it appears, as the worker does
once a segment's events are acknowledged. A run's figures: the process's CPU
time (every thread: the appends' writes and the fsyncs) per append, and the
bytes written to the log's disk (its /proc/diskstats row, so the whole device:
run it on an idle machine) per MB appended. Rounds alternate between this tree
and `--baseline TREE` (which goes first); the ratios are of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/sync_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import cpu_seconds
from bench.report import emit
from bench.targets import ROOT

BODY_BYTES = 500 * 1024


def sectors_written(directory: Path) -> int:
    """Sectors (512 bytes, whatever the device's own size) the device holding `directory` has written since boot."""
    device = os.stat(directory).st_dev
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if (int(fields[0]), int(fields[1])) == (os.major(device), os.minor(device)):
            return int(fields[9])
    raise RuntimeError(f"no /proc/diskstats row for the device of {directory}")


def one_run(tree: Path, seconds: float, rate: float, publish_lag: float, directory: Path) -> dict[str, float]:
    """In a process of its own (`main`'s `--one`), which has imported no `proxy` yet: `tree`'s is the one imported."""
    sys.path.insert(0, str(tree))
    from proxy.logformat import Kind
    from proxy.logwriter import LogSettings, LogWriter, segments

    writer = LogWriter(LogSettings(directory / "log", max_bytes=1 << 40))
    stop = threading.Event()

    def sync() -> None:
        while not stop.wait(writer.settings.fsync_interval):
            writer.sync()

    def publish() -> None:
        seen: dict[Path, float] = {}
        while not stop.wait(0.005):
            now = time.monotonic()
            for _, path in segments(writer.settings.directory)[:-1]:
                if now - seen.setdefault(path, now) >= publish_lag:
                    path.unlink()
                    del seen[path]

    threads = [threading.Thread(target=sync), threading.Thread(target=publish)]
    for thread in threads:
        thread.start()
    body, exchange = os.urandom(BODY_BYTES), bytes(16)
    sectors, cpu, started = sectors_written(directory), cpu_seconds(), time.monotonic()
    appends = 0
    while (elapsed := time.monotonic() - started) < seconds:
        if appends < elapsed * rate:
            writer.append(Kind.REQUEST_BODY, exchange, body)
            appends += 1
        else:
            time.sleep(1 / rate)
    stop.set()
    for thread in threads:
        thread.join()
    cpu, written = cpu_seconds() - cpu, (sectors_written(directory) - sectors) * 512
    writer.close()
    return {"appends": appends, "cpu_ms_per_append": cpu / appends * 1e3, "disk_mb_per_mb": written / (appends * BODY_BYTES)}


def run_tree(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kgb-sync-", dir=args.directory) as directory:
        command = [sys.executable, str(ROOT / "bench" / "sync_bench.py"), "--one", directory, "--tree", str(tree)]
        command += ["--seconds", str(args.seconds), "--rate", str(args.rate), "--publish-lag-ms", str(args.publish_lag_ms)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        return json.loads(done.stdout.splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    trees = ([("base", args.baseline.resolve())] if args.baseline else []) + [("this", ROOT)]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    for number in range(args.rounds):
        for name, tree in trees:
            runs[name].append(figures := run_tree(tree, args))
            print(
                f"  round {number + 1} {name:<4} {figures['cpu_ms_per_append']:.4f} ms/append, "
                f"{figures['disk_mb_per_mb']:.3f} disk MB per MB",
                flush=True,
            )
    medians = {
        name: {key: statistics.median(run[key] for run in tree_runs) for key in ("cpu_ms_per_append", "disk_mb_per_mb")}
        for name, tree_runs in runs.items()
    }
    summary: dict[str, Any] = {"seconds": args.seconds, "rate": args.rate, "runs": runs, "medians": medians}
    if args.baseline:
        summary["ratio"] = {key: medians["this"][key] / medians["base"][key] for key in medians["this"]}
    return summary


def render(summary: dict[str, Any]) -> str:
    lines = ["tree  cpu ms/append  disk MB per MB appended"]
    lines += [f"{name:<5} {m['cpu_ms_per_append']:13.4f}  {m['disk_mb_per_mb']:8.3f}" for name, m in summary["medians"].items()]
    if "ratio" in summary:
        lines.append(f"ratio {summary['ratio']['cpu_ms_per_append']:13.3f}  {summary['ratio']['disk_mb_per_mb']:8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The capture log's interval fsync at 500 KB appends (see bench/README.md).")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of appends per run")
    parser.add_argument("--rate", type=float, default=600.0, help="500 KB appends per second (proxy_bench's 500KB c=16 rate)")
    parser.add_argument("--publish-lag-ms", type=float, default=20.0, help="how long a left segment stays before it is deleted")
    parser.add_argument("--baseline", type=Path, help="also run this source tree's log writer (rows marked base)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per tree, alternating between trees")
    parser.add_argument("--directory", type=Path, default=Path(tempfile.gettempdir()), help="where the logs go: a real disk")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # one run, in this process, into this directory
    parser.add_argument("--tree", type=Path, default=ROOT, help=argparse.SUPPRESS)  # whose log writer --one runs
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(args.tree, args.seconds, args.rate, args.publish_lag_ms / 1e3, args.one)))
        return
    summary = run(args)
    emit(summary, render(summary), args.json)


if __name__ == "__main__":
    main()
