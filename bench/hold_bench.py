"""200 paced streams held open for a minute through `kgb proxy`: `/health` latency, memory, and the streams' pace.

    .venv/bin/python -m bench.hold_bench [--streams 200] [--hold 60] [--json results.json]

Issue 10 asks that 200 held streams leave the proxy's memory bounded and its
`/health` answering within 50 ms throughout. The fault test
(tests/e2e/test_capture_faults.py) checks the bound and the answers, but a
test never asserts on time, so the latency is measured here. Two phases in
one run, each with the same poller and the same streams: first the streams go
straight to the fake upstream while `/health` is polled on the idle proxy (the
baseline: the machine as loaded, the proxy relaying nothing), then the streams
go through the proxy. The gap between a stream's events is measured at the
client in both phases, so a relay that holds events back shows as a longer gap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/hold_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import orjson

from bench.delta_bench import HealthProbe
from bench.loadgen import Spec, request_body, request_headers
from bench.proxy_bench import create_bench_topic, machine, percentile, uptime, wait_published
from bench.targets import Measured, start_fake, start_kgb, workdir
from tests.services import kafka_broker

PACE_S = 0.1  # between a stream's events: 10 a second per stream, 2,000 a second through the proxy at 200
HEALTH_TARGET_MS = 50.0
RSS_TARGETS_MB = {"relay": 80.0, "worker": 150.0}


def health_summary(probe: HealthProbe) -> dict[str, Any]:
    latencies = [seconds * 1000 for seconds in probe.latencies]
    return {
        "polls": len(latencies),
        "failed_polls": probe.failures,
        "health_p50_ms": percentile(latencies, 50),
        "health_p99_ms": percentile(latencies, 99),
        "health_max_ms": max(latencies, default=float("nan")),
    }


async def hold(url: str, body: bytes, count: int) -> dict[str, Any]:
    """`count` streams at once, each read to its end; the longest gap between reads of each, in ms."""
    gaps: list[float] = []
    errors: list[str] = []

    async def one() -> None:
        try:
            async with session.post(url + "/v1/messages", data=body, headers=request_headers()) as answer:
                last = time.perf_counter()
                longest = 0.0
                seen = b""
                while chunk := await answer.content.readany():
                    now = time.perf_counter()
                    longest, last = max(longest, now - last), now
                    seen = (seen + chunk)[-64:]
                if answer.status != 200 or b"message_stop" not in seen:
                    errors.append(f"status {answer.status}, ended {seen[-40:]!r}")
                gaps.append(longest * 1000)
        except aiohttp.ClientError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await asyncio.gather(*(one() for _ in range(count)))
    return {
        "streams": count,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "longest_gap_p50_ms": percentile(gaps, 50),
        "longest_gap_p99_ms": percentile(gaps, 99),
    }


async def phase(stream_url: str, health_url: str, measured: Measured, body: bytes, count: int) -> dict[str, Any]:
    """The streams, `/health` as polled meanwhile (from a process of its own: the streams' loop cannot
    delay it), and the proxy's processes' peak RSS over the phase."""
    measured.reset_peak_rss()
    with HealthProbe(health_url) as probe:
        streams = await hold(stream_url, body, count)
    return streams | health_summary(probe) | {"peak_rss_mb": measured.peak_rss_by_process()}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Hold paced streams through kgb proxy; measure /health and memory.")
    parser.add_argument("--streams", type=int, default=200, help="streams held at once (default 200)")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds each stream lasts (default 60)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def verdicts(through: dict[str, Any]) -> list[str]:
    rss = through["peak_rss_mb"]
    lines = [
        f"/health worst {through['health_max_ms']:.1f} ms while {through['streams']} streams were held "
        f"(target <= {HEALTH_TARGET_MS:.0f} ms): {'met' if through['health_max_ms'] <= HEALTH_TARGET_MS else 'MISSED'}",
        f"/health failed {through['failed_polls']} of {through['polls'] + through['failed_polls']} polls",
    ]
    peaks = {"relay": rss.get("relay", 0.0), "worker": max((mb for role, mb in rss.items() if role != "relay"), default=0.0)}
    for role, bound in RSS_TARGETS_MB.items():
        peak = peaks[role]
        lines.append(f"{role} peak RSS {peak:.0f} MB (target <= {bound:.0f} MB): {'met' if peak <= bound else 'MISSED'}")
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    deltas = max(1, round(args.hold / PACE_S) - 5)
    body = request_body(Spec(url="", concurrency=1, requests=1, warmup=0, stream=True))
    with contextlib.ExitStack() as stack:
        work = workdir(stack, keep=False)
        upstream, _ = start_fake(stack, work, "fake-paced", deltas, PACE_S)
        broker = stack.enter_context(kafka_broker())
        topic = asyncio.run(create_bench_topic(broker.bootstrap))
        proxy, measured = start_kgb(stack, work, "kgb", upstream, broker.bootstrap, topic)
        direct = asyncio.run(phase(upstream, proxy, measured, body, args.streams))
        through = asyncio.run(phase(proxy, proxy, measured, body, args.streams))
        kafka = asyncio.run(wait_published(broker.bootstrap, topic, args.streams))
    return {
        "machine": machine() | {"uptime": uptime()},
        "hold_s": args.hold,
        "direct (proxy idle)": direct,
        "through kgb": through,
        "health_p99_ratio_vs_idle": through["health_p99_ms"] / direct["health_p99_ms"],
        "longest_gap_p99_ratio_vs_direct": through["longest_gap_p99_ms"] / direct["longest_gap_p99_ms"],
        "kafka": kafka,
        "verdicts": verdicts(through),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    report = run(args)
    print(orjson.dumps({k: v for k, v in report.items() if k != "verdicts"}, option=orjson.OPT_INDENT_2).decode())
    print("\n".join(report["verdicts"]))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
