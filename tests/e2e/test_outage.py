"""A Kafka outage in the middle of traffic costs clients nothing and loses no capture.

200 requests go through the proxy, 8 at a time, in waves: before the outage,
while the broker is being stopped, while it is down, once the capture log
holds what the worker could not publish (so the events wait in the log, the
spool, not in a producer's buffer), and while the broker is being started
again. Waves and the log's checkpoint, not timers, decide what overlaps the
outage, so the test does not depend on how fast anything runs. Then every exchange must
be in PostgreSQL exactly once with both halves, and nothing dead-lettered.

Each request carries its own marker, and the fake answers with it, so a client
that got someone else's answer, or a row whose halves belong to two
exchanges, shows up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy import checkpoint
from tests import services
from tests.e2e.conftest import Pipeline
from tests.fakes.anthropic import FakeAnthropic, ReceivedRequest, Reply, json_message, text_stream

CONCURRENCY = 8
TOTAL = 200
BACKLOG_DEADLINE = 120.0
SESSIONS = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(4)]
DRAIN_DEADLINE = 300.0


class EchoFake(FakeAnthropic):
    """Answers each request with its own marker, whatever order requests arrive in."""

    def default_reply(self, received: ReceivedRequest) -> Reply:
        body = received.json()
        text = answer_for(body["messages"][0]["content"])
        return text_stream(text, deltas=1) if body.get("stream") else json_message(text)


@pytest.fixture
def upstream() -> EchoFake:
    return EchoFake()


def marker(number: int) -> str:
    return f"outage-request-{number:03d}"


def answer_for(prompt: str) -> str:
    return f"answer to {prompt}"


def request_body(number: int) -> bytes:
    """Even numbers stream, odd ones do not: both response paths go through the outage."""
    return orjson.dumps(
        {
            "model": "claude-opus-4-8",
            "max_tokens": 64,
            "stream": number % 2 == 0,
            "messages": [{"role": "user", "content": marker(number)}],
        }
    )


def request_headers(number: int) -> dict[str, str]:
    """Several sessions, so the events spread over partitions as real traffic does."""
    return {
        "x-api-key": "sk-ant-api03-" + "outage0" * 12 + "AA",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        "X-Claude-Code-Session-Id": SESSIONS[number % len(SESSIONS)],
    }


@dataclass
class Traffic:
    """Numbered requests in waves, at most CONCURRENCY in flight; keeps what every client saw."""

    session: aiohttp.ClientSession
    url: str
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENCY))
    sent: int = 0
    answered: int = 0  # so far, for a test that acts in the middle of a wave
    seen: list[tuple[int, int, str]] = field(default_factory=list)

    async def wave(self, size: int) -> None:
        numbers = range(self.sent, self.sent + size)
        self.sent += size
        self.seen += await asyncio.gather(*(self.send(number) for number in numbers))

    async def send(self, number: int) -> tuple[int, int, str]:
        async with self.gate, self.session.post(self.url, data=request_body(number), headers=request_headers(number)) as response:
            body = (await response.read()).decode()
        self.answered += 1
        return number, response.status, body


async def while_doing(action: Callable[[], None], traffic: Awaitable[None]) -> None:
    """Traffic overlapping a blocking broker action, which runs in a thread."""
    await asyncio.gather(traffic, asyncio.to_thread(action))


async def wait_backlog(spool: Path) -> int:
    """Until the capture log holds bytes past the worker's checkpoint: Kafka is not taking them."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + BACKLOG_DEADLINE
    while loop.time() < give_up:
        if (waiting := checkpoint.backlog(spool)) > 0:
            return waiting
        await asyncio.sleep(0.2)
    raise AssertionError(f"the capture log's checkpoint kept up with a stopped broker for {BACKLOG_DEADLINE:.0f}s")


def check_client_view(number: int, status: int, body: str) -> None:
    assert status == 200, f"request {number}: status {status}: {body[:300]}"
    assert answer_for(marker(number)) in body, f"request {number} got another answer: {body[:300]}"


def check_row(row: dict[str, Any]) -> str:
    """The row's marker, once its halves are shown to belong together."""
    prompt = json.loads(row["request_body"])["messages"][0]["content"]
    assert row["status"] == 200, prompt
    assert json.loads(row["message"])["content"][0]["text"] == answer_for(prompt), prompt
    return prompt


@pytest.mark.timeout(900)
async def test_a_broker_outage_loses_no_exchange_and_no_client_request(pipeline: Pipeline, kafka: services.KafkaBroker) -> None:
    async with aiohttp.ClientSession() as session:
        traffic = Traffic(session, pipeline.url + "/v1/messages")
        await traffic.wave(40)
        await while_doing(kafka.stop, traffic.wave(50))
        await traffic.wave(50)
        await wait_backlog(pipeline.spool)
        await traffic.wave(30)  # the worker cannot publish: these wait in the capture log
        await while_doing(kafka.start, traffic.wave(30))

    assert traffic.sent == len(traffic.seen) == TOTAL
    for number, status, body in traffic.seen:
        check_client_view(number, status, body)

    rows = [dict(row) for row in await pipeline.wait_for_exchanges(TOTAL, deadline=DRAIN_DEADLINE)]
    assert sorted(check_row(row) for row in rows) == [marker(number) for number in range(TOTAL)]
    (total,) = await pipeline.query("SELECT count(*) AS n FROM kgb.exchanges")
    assert total["n"] == TOTAL
    assert await pipeline.dead_letters() == []
