"""The benchmark's load generator: one process, one aiohttp session, `concurrency` workers.

It runs apart from the proxies and the fake upstream so its CPU is not theirs, and
reports its own CPU share so a reader can tell when the client, not the proxy, was
the limit. It talks to the orchestrator over stdin/stdout:

    python -m bench.loadgen '{"url": ..., "concurrency": 16, "requests": 300, ...}'
    -> prints "warm" once the warm-up requests are done and the pool is full
    <- waits for one line on stdin (the orchestrator snapshots the proxy's CPU and RSS)
    -> prints one JSON line: per-request TTFB and total seconds, errors, wall and CPU time

TTFB is the time from sending the request to the first body chunk (for SSE, the first
event), so it includes the upload of the request body.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

MODEL = "claude-sonnet-4-5-20250929"
SESSION_ID = str(uuid.uuid4())
# Shaped like a real key so the proxy's redaction and fingerprinting do their real work.
API_KEY = "sk-ant-api03-" + "bench" * 18 + "-AAAAAAAA"
WORDS = [
    "the",
    "proxy",
    "streams",
    "every",
    "chunk",
    "to",
    "the",
    "client",
    "before",
    "it",
    "records",
    "a",
    "copy",
    "def",
    "main():",
    "return",
    "self.session",
    "await",
    "response.write(chunk)",
    "Kafka",
    "topic",
    "partition",
    "offset",
    "consumer",
    "group",
    "PostgreSQL",
    "table",
    "column",
    "index",
    '{"type":',
    '"text"}',
    "src/app/module.py",
    "line",
    "42",
    "error:",
    "None",
]


@dataclass(frozen=True)
class Spec:
    """One measured run: where to send what, how many at once, how many in all."""

    url: str
    concurrency: int
    requests: int
    warmup: int
    stream: bool
    body_bytes: int = 0
    stagger_s: float = 0.0

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**orjson.loads(text))


@dataclass
class Tally:
    """What the workers gather; a failed request counts as an error, never as a fast sample."""

    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def failed(self, reason: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or reason


def prose(size: int) -> str:
    """Text of `size` bytes that looks like a coding conversation: redaction regexes see varied input, not one repeated byte."""
    out, length, index = [], 0, 0
    while length < size:
        word = WORDS[(index * 7919) % len(WORDS)]
        out.append(word)
        length += len(word) + 1
        index += 1
    return " ".join(out)[:size]


def request_body(spec: Spec) -> bytes:
    """A Messages API request like Claude Code's, padded to `body_bytes` with conversation text."""
    user_id = orjson.dumps({"device_id": "bench", "account_uuid": str(uuid.uuid4()), "session_id": SESSION_ID}).decode()
    content = prose(spec.body_bytes) if spec.body_bytes else "Say hello."
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": content}],
        "metadata": {"user_id": user_id},
        "stream": spec.stream,
    }
    return orjson.dumps(body)


def request_headers() -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-api-key": API_KEY,
        "anthropic-version": "2023-06-01",
        "x-claude-code-session-id": SESSION_ID,
        "user-agent": "claude-cli/2.1.0 (external, cli)",
    }


async def one(session: aiohttp.ClientSession, spec: Spec, body: bytes, tally: Tally) -> None:
    start = time.perf_counter()
    try:
        async with session.post(spec.url, data=body, headers=request_headers()) as response:
            first = await response.content.readany()
            ttfb = time.perf_counter() - start
            while await response.content.readany():
                pass
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.failed(f"{type(exc).__name__}: {exc}")
        return
    if response.status != 200 or not first:
        tally.failed(f"status {response.status}, first chunk {len(first)} bytes")
        return
    tally.ttfb.append(ttfb)
    tally.total.append(time.perf_counter() - start)


async def run(session: aiohttp.ClientSession, spec: Spec, count: int, body: bytes) -> Tally:
    """`count` requests by `concurrency` workers that each send the next as soon as theirs ends (a closed loop).

    Worker i starts i * `stagger_s` late. Why: long paced streams of equal length keep
    workers that start together in lock step, so every request would arrive in a burst
    of `concurrency` and its TTFB would measure queueing behind the others, not the proxy.
    """
    tally, left = Tally(), [count]

    async def worker(number: int) -> None:
        await asyncio.sleep(number * spec.stagger_s)
        while left[0] > 0:
            left[0] -= 1
            await one(session, spec, body, tally)

    await asyncio.gather(*(worker(number) for number in range(spec.concurrency)))
    return tally


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main_async(spec: Spec) -> dict[str, Any]:
    body = request_body(spec)
    connector = aiohttp.TCPConnector(limit=spec.concurrency, limit_per_host=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm = await run(session, spec, spec.warmup, body)
        print("warm", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        cpu, start = cpu_seconds(), time.perf_counter()
        tally = await run(session, spec, spec.requests, body)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {
        "ttfb": tally.ttfb,
        "total": tally.total,
        "errors": tally.errors + warm.errors,
        "first_error": tally.first_error or warm.first_error,
        "wall": wall,
        "cpu": cpu,
        "sent": spec.requests + spec.warmup,
    }


def main() -> None:
    spec = Spec.from_json(sys.argv[1])
    try:
        import uvloop  # the bench extra; a faster loop keeps the client further from being the limit
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    result = orjson.dumps(runner(main_async(spec))).decode()
    # The report is one line of several 100 KB, past a pipe's 64 KiB: on a stdout left non-blocking
    # the write stops at the pipe's size (BlockingIOError) and the orchestrator reads half a report.
    os.set_blocking(sys.stdout.fileno(), True)
    print(result, flush=True)


if __name__ == "__main__":
    main()
