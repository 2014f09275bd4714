"""A ``tools/call`` direct vs through KGB's MCP capture, in one run: Streamable HTTP (JSON and SSE answers) and stdio.

    .venv/bin/python -m bench.mcp_bench [--calls 3000] [--baseline TREE] [--json results.json] [--keep]

Targets, each its own process so its CPU seconds are its own:

- http-json / http-sse direct: the client POSTs to `bench.mcp_servers http` (aiohttp, answering one JSON
  object, or an SSE stream of one event), and through `kgb proxy`'s MCP relay (/mcp/NAME), capture and
  publishing on, to a real Kafka broker;
- stdio direct: the client runs `bench.mcp_servers stdio` and writes a line, reads a line; through the
  shim: the same server under `kgb mcp stdio NAME --`, publishing to the same broker.

One client, one call at a time (c=1), each call timed from its write to its answer's last byte; the
direct and relayed runs take turns in rounds so the machine's noise falls on both. CPU per call is the
relay's (or shim's) own CPU time over the calls it relayed, settle time included, so the events it
built and published after each answer count too; for the HTTP relay, whose capture worker (a child
process) builds and publishes the events, the worker's CPU per call is its own column, and so for the
shim, whose worker is a child process of its own too. Targets (issue 8): added p50 <= 0.5 ms over loopback
HTTP, <= 0.2 ms through the shim.

`--baseline TREE`: a second `kgb proxy` run from another source tree (a checkout of another commit)
relays the same calls in the same rounds (rows marked `base`), so a change is measured against its
parent under the same load, not against figures of another hour.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/mcp_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import orjson
import psutil

from bench.report import emit
from bench.targets import ROOT, Measured, _spawn, _stop, free_port, kgb_command, wait_http, workdir
from common.running import new_loop
from tests.services import create_topic, kafka_broker

ROUNDS = 8
SETTLE_S = 0.5
TARGETS_MS = {"http-json": 0.5, "http-sse": 0.5, "stdio": 0.2}


def tools_call(ident: int) -> bytes:
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": ident,
            "method": "tools/call",
            "params": {"name": "lookup", "arguments": {"query": "kgb", "limit": 5}},
        }
    )


@dataclass
class Samples:
    latencies: list[float]
    cpu_s: float
    calls: int
    worker_cpu_s: float = 0.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_of(pids: tuple[int, ...]) -> float:
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


async def timed(
    calls: int, call: Callable[[int], Awaitable[None]], measured: tuple[int, ...], workers: tuple[int, ...] = ()
) -> Samples:
    before, workers_before = cpu_of(measured) if measured else 0.0, cpu_of(workers)
    latencies = []
    for ident in range(calls):
        start = time.perf_counter()
        await call(ident)
        latencies.append((time.perf_counter() - start) * 1000)
    await asyncio.sleep(SETTLE_S)
    return Samples(latencies, (cpu_of(measured) - before) if measured else 0.0, calls, cpu_of(workers) - workers_before)


def http_caller(session: aiohttp.ClientSession, url: str) -> Callable[[int], Awaitable[None]]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "lookup",
    }

    async def call(ident: int) -> None:
        async with session.post(url, data=tools_call(ident), headers=headers) as response:
            body = await response.read()
            assert response.status == 200 and b'"result"' in body, body[:200]

    return call


@dataclass
class Stdio:
    process: asyncio.subprocess.Process

    async def call(self, ident: int) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(tools_call(ident) + b"\n")
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        assert b'"result"' in line, line[:200]

    def measured(self) -> tuple[int, ...]:
        return (self.process.pid,)

    def workers(self) -> tuple[int, ...]:
        """The shim's capture worker, a child process of its own (none before it had one, or for the server alone)."""
        children = psutil.Process(self.process.pid).children()
        return tuple(child.pid for child in children if "capture-worker" in child.cmdline())

    async def worker_started(self, slots: Path) -> None:
        """Until the shim's worker has started (its figures, in its spool slot, carry its pid), so that its
        start-up (Python and its imports) is neither timed nor counted as CPU per call."""
        from proxy import workerstats

        for _ in range(int(30 / 0.01)):
            workers, found = self.workers(), (workerstats.read(slot) for slot in slots.glob("*"))
            if workers and any(figures is not None and figures.pid in workers for figures in found):
                return
            await asyncio.sleep(0.01)
        raise RuntimeError("the shim's capture worker did not start within 30 s")

    async def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        await self.process.wait()


async def start_stdio(command: list[str], env: dict[str, str], log: Path) -> Stdio:
    handle = log.open("wb")
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=handle, env=env, cwd=ROOT
    )
    stdio = Stdio(process)
    await stdio.call(-1)
    return stdio


def summarize(direct: Samples, relayed: Samples, pids_cpu: bool = True) -> dict[str, Any]:
    row = {
        "direct_p50_ms": percentile(direct.latencies, 0.5),
        "direct_p99_ms": percentile(direct.latencies, 0.99),
        "kgb_p50_ms": percentile(relayed.latencies, 0.5),
        "kgb_p99_ms": percentile(relayed.latencies, 0.99),
        "kgb_cpu_ms_per_call": relayed.cpu_s * 1000 / relayed.calls,
        "worker_cpu_ms_per_call": relayed.worker_cpu_s * 1000 / relayed.calls,
        "calls": relayed.calls,
    }
    row["added_p50_ms"] = row["kgb_p50_ms"] - row["direct_p50_ms"]
    row["added_p99_ms"] = row["kgb_p99_ms"] - row["direct_p99_ms"]
    row["p50_ratio"] = row["kgb_p50_ms"] / row["direct_p50_ms"]
    row["direct_server_cpu_ms_per_call"] = direct.cpu_s * 1000 / direct.calls
    return row


def merged(parts: list[Samples]) -> Samples:
    return Samples(
        [x for p in parts for x in p.latencies],
        sum(p.cpu_s for p in parts),
        sum(p.calls for p in parts),
        sum(p.worker_cpu_s for p in parts),
    )


@dataclass
class Relay:
    """One `kgb proxy` whose MCP relay the bench calls: its /mcp/bench URL and its processes."""

    label: str  # "" for the tree the bench runs in, " base" for the baseline's
    url: str
    measured: Measured


async def bench_http(calls: int, direct_url: str, server: Measured, relays: list[Relay]) -> dict[str, Any]:
    """Rounds of direct, then each relay, their order turned each round so no relay always follows direct."""
    results = {}
    connector = aiohttp.TCPConnector(limit=1)
    per_round = calls // ROUNDS
    async with aiohttp.ClientSession(connector=connector) as session:
        for kind, path in (("http-json", "/json"), ("http-sse", "/sse")):
            direct: list[Samples] = []
            relayed: dict[str, list[Samples]] = {relay.label: [] for relay in relays}
            for round_ in range(ROUNDS):
                direct.append(await timed(per_round, http_caller(session, direct_url + path), server.pids))
                for relay in relays[round_ % len(relays) :] + relays[: round_ % len(relays)]:
                    workers = tuple(child.pid for pid in relay.measured.pids for child in psutil.Process(pid).children())
                    caller = http_caller(session, relay.url + path)
                    relayed[relay.label].append(await timed(per_round, caller, relay.measured.pids, workers))
            for label, parts in relayed.items():
                results[kind + label] = summarize(merged(direct), merged(parts))
    return results


def start_relay(stack: contextlib.ExitStack, work: Path, env: dict[str, str], tree: Path, label: str, upstream: str) -> Relay:
    """`kgb proxy` with the MCP relay on a port of its own, run from `tree` (its cwd, so its own code is imported)."""
    mcp_port, name = free_port(), "relay" + label.replace(" ", "-")
    own = {
        **env,
        "KGB_SPOOL_DIR": str(work / f"{name}-spool"),
        "KGB_MCP_PORT": str(mcp_port),
        "KGB_MCP_UPSTREAMS": f"bench={upstream}",
    }
    log = work / f"{name}.log"
    handle = stack.enter_context(log.open("wb"))
    command = [*kgb_command(), "--log-level", "WARNING", "proxy", "--port", str(free_port())]
    process = subprocess.Popen(command, cwd=tree, stdout=subprocess.PIPE, stderr=handle, env=own)
    stack.callback(_stop, process)
    wait_http(f"http://127.0.0.1:{mcp_port}/ready", process, log)
    return Relay(label, f"http://127.0.0.1:{mcp_port}/mcp/bench", Measured((process.pid,)))


async def bench_stdio(calls: int, env: dict[str, str], work: Path) -> dict[str, Any]:
    server = [sys.executable, "-m", "bench.mcp_servers", "stdio"]
    direct, relayed = [], []
    for round_ in range(ROUNDS):
        plain = await start_stdio(server, env, work / f"stdio-{round_}.log")
        direct.append(await timed(calls // ROUNDS, plain.call, plain.measured()))
        await plain.close()
        shim = await start_stdio(
            [*kgb_command(), "--log-level", "WARNING", "mcp", "stdio", "bench", "--", *server], env, work / f"shim-{round_}.log"
        )
        await shim.worker_started(Path(env["KGB_SPOOL_DIR"]) / "mcp-stdio")
        relayed.append(await timed(calls // ROUNDS, shim.call, shim.measured(), shim.workers()))
        await shim.close()
    return {"stdio": summarize(merged(direct), merged(relayed))}


async def published(bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()] or [
            TopicPartition(topic, p) for p in range(3)
        ]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        work = workdir(stack, args.keep)
        broker = stack.enter_context(kafka_broker())
        topic = asyncio.run(create_topic(broker.bootstrap))
        port = free_port()
        server_log = work / "server.log"
        server = _spawn(stack, [sys.executable, "-m", "bench.mcp_servers", "http", "--port", str(port)], server_log)
        direct_url = f"http://127.0.0.1:{port}"
        wait_http(direct_url + "/health", server, server_log)
        env = {
            **os.environ,
            "KGB_KAFKA_BOOTSTRAP": broker.bootstrap,
            "KGB_MCP_TOPIC": topic,
            "KGB_TOPIC": topic + "-api",
            "KGB_SPOOL_DIR": str(work / "spool"),
        }
        trees = [(ROOT, "")] + ([(args.baseline.resolve(), " base")] if args.baseline else [])
        relays = [start_relay(stack, work, env, tree, label, direct_url) for tree, label in trees]

        async def both() -> dict[str, Any]:
            results = await bench_http(args.calls, direct_url, Measured((server.pid,)), relays)
            results |= await bench_stdio(args.calls, env, work)
            await asyncio.sleep(2)
            results["events_on_topic"] = await published(broker.bootstrap, topic)
            return results

        with asyncio.Runner(loop_factory=new_loop) as runner:
            results = runner.run(both())
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()}
    return {"machine": machine, "calls": args.calls, "baseline": str(args.baseline or ""), "results": results}


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':14} {'direct p50':>10} {'p99':>7} {'kgb p50':>8} {'p99':>7} {'added p50':>9} {'added p99':>9} "
        f"{'kgb CPU/call':>12} {'worker CPU':>10} {'p50 ratio':>9} {'target':>7}"
    ]
    for name, row in report["results"].items():
        if not isinstance(row, dict):
            continue
        target = TARGETS_MS[name.split()[0]]
        verdict = "met" if row["added_p50_ms"] <= target else "MISSED"
        lines.append(
            f"{name:14} {row['direct_p50_ms']:10.3f} {row['direct_p99_ms']:7.3f} {row['kgb_p50_ms']:8.3f} "
            f"{row['kgb_p99_ms']:7.3f} {row['added_p50_ms']:9.3f} {row['added_p99_ms']:9.3f} "
            f"{row['kgb_cpu_ms_per_call']:10.3f}ms {row['worker_cpu_ms_per_call']:8.3f}ms {row['p50_ratio']:9.2f} {verdict:>4} ≤{target}"
        )
    load = ", ".join(f"{x:.2f}" for x in report["machine"]["load"])
    lines.append(
        f"events on the MCP topic: {report['results']['events_on_topic']} (milliseconds throughout; load average {load})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="calls per target and scenario (default 3000)")
    parser.add_argument("--baseline", type=Path, help="also relay through the kgb of this source tree (rows marked base)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, spools)")
    args = parser.parse_args(argv)
    report = run(args)
    emit(report, render(report), args.json)


if __name__ == "__main__":
    main()
