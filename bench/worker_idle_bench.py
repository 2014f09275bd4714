"""The capture worker at rest: its CPU while nothing is captured, and the lag of an exchange after an idle spell.

    .venv/bin/python -m bench.worker_idle_bench [--idle 60] [--samples 40] [--gap 1.5]

One `kgb proxy` (this tree's code, with the capture worker it supervises) in front of a
fake upstream, publishing to a real broker. First the worker sits idle for `--idle`
seconds and its CPU time and context switches are read from /proc (every thread);
then `--samples` requests go through one at a time, `--gap` seconds apart, and each
one's lag is its response event's append time on the topic (the broker's clock)
minus the response's end at the proxy: what a worker that sleeps between polls adds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/worker_idle_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import orjson
import psutil

from bench.proxy_bench import create_bench_topic, percentile, publish_lags, uptime, wait_published
from bench.targets import ROOT, BenchError, free_port, start_fake, wait_http, workdir
from tests.services import kafka_broker

WARMUP = 5
SETTLE_S = 5.0  # after the warm-up, before idling is measured: the first publish's batch and checkpoint are done
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread, from /proc/PID/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def context_switches(pid: int) -> int:
    """Voluntary context switches over the process's threads: how often it went to sleep, so how often it woke."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def start_proxy(stack: contextlib.ExitStack, work: Path, upstream: str, bootstrap: str, topic: str) -> tuple[str, int]:
    """`python -m kgb proxy` from this tree (the venv's `kgb` script may import another checkout); its worker's pid."""
    port = free_port()
    env = {
        **os.environ,
        "KGB_KAFKA_BOOTSTRAP": bootstrap,
        "KGB_TOPIC": topic,
        "KGB_SPOOL_DIR": str(work / "spool"),
        "KGB_MCP_PORT": str(free_port()),
        "KGB_MCP_TOPIC": topic + "-mcp",
    }
    cmd = [sys.executable, "-m", "kgb", "--log-level", "WARNING", "proxy", "--port", str(port), "--upstream", upstream]
    log = work / "proxy.log"
    handle = stack.enter_context(log.open("wb"))
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=handle, stderr=handle, env=env)
    stack.callback(process.wait, 60)
    stack.callback(process.terminate)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/ready", process, log)
    children = psutil.Process(process.pid).children()
    if not children:
        raise BenchError("kgb proxy started no capture worker")
    return url, children[0].pid


async def request(session: aiohttp.ClientSession, url: str, number: int) -> None:
    body = {"model": "claude-bench", "max_tokens": 16, "messages": [{"role": "user", "content": f"idle bench {number}"}]}
    headers = {"x-api-key": "sk-ant-bench", "anthropic-version": "2023-06-01"}
    async with session.post(url + "/v1/messages", json=body, headers=headers) as response:
        await response.read()
        if response.status != 200:
            raise BenchError(f"request {number}: status {response.status}")


async def measure(url: str, worker: int, args: argparse.Namespace) -> tuple[dict[str, Any], tuple[float, float]]:
    async with aiohttp.ClientSession() as session:
        for number in range(WARMUP):
            await request(session, url, number)
        await asyncio.sleep(SETTLE_S)
        cpu, switches, started = cpu_seconds(worker), context_switches(worker), time.monotonic()
        await asyncio.sleep(args.idle)
        elapsed = time.monotonic() - started
        idle = {
            "idle_s": round(elapsed, 1),
            "worker_cpu_ms_per_s": round(1000 * (cpu_seconds(worker) - cpu) / elapsed, 3),
            "worker_wakeups_per_s": round((context_switches(worker) - switches) / elapsed, 1),
        }
        window_start = time.time()
        for number in range(WARMUP, WARMUP + args.samples):
            await asyncio.sleep(args.gap)
            await request(session, url, number)
        return idle, (window_start, time.time())


def run(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        work = workdir(stack, keep=False)
        fake, _ = start_fake(stack, work, "fake", 5, 0.0)
        broker = stack.enter_context(kafka_broker())
        topic = asyncio.run(create_bench_topic(broker.bootstrap))
        url, worker = start_proxy(stack, work, fake, broker.bootstrap, topic)
        load_before = uptime()
        idle, window = asyncio.run(measure(url, worker, args))
        published = asyncio.run(wait_published(broker.bootstrap, topic, WARMUP + args.samples))
        lags = asyncio.run(publish_lags(broker.bootstrap, topic, {"after_idle": [window]}))["after_idle"]
    return {
        **idle,
        "lag_p50_ms": percentile(lags, 50),
        "lag_p99_ms": percentile(lags, 99),
        "lag_max_ms": max(lags, default=float("nan")),
        "lag_samples": len(lags),
        "gap_s": args.gap,
        **published,
        "uptime_before": load_before,
        "uptime_after": uptime(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idling measured")
    parser.add_argument("--samples", type=int, default=40, help="requests after an idle spell each")
    parser.add_argument("--gap", type=float, default=1.5, help="seconds of idle before each request")
    print(orjson.dumps(run(parser.parse_args(argv)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
