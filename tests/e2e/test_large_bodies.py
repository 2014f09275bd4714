"""Bodies far over one Kafka message reach winni whole (issue 13 item 6): FRAGMENT events in between."""

from __future__ import annotations

import io
import json

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer

from schemas.fragments import FRAGMENT_BYTES
from tests.e2e.conftest import Pipeline
from tests.fakes.anthropic import text_stream
from tests.proxy.test_app import HEADERS

PROMPT = "large-body-" + "abcdefghij" * 900_000  # a 9 MB user message
ANSWER = "large-answer-" + "klmnopqrst" * 600_000  # a 6 MB answer, so ~12 MB with its reassembled message


async def largest_message(pipeline: Pipeline) -> tuple[int, int]:
    """(messages, largest value) on the topic."""
    consumer = AIOKafkaConsumer(
        pipeline.topic,
        bootstrap_servers=pipeline.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=128 << 20,
        max_partition_fetch_bytes=128 << 20,
    )
    await consumer.start()
    try:
        sizes: list[int] = []
        while batch := await consumer.getmany(timeout_ms=2000):
            sizes += [len(record.value) for records in batch.values() for record in records]
        return len(sizes), max(sizes)
    finally:
        await consumer.stop()


async def test_a_huge_request_and_answer_reach_winni_whole_in_pieces(pipeline: Pipeline) -> None:
    pipeline.fake.enqueue(text_stream(ANSWER, deltas=40))
    body = orjson.dumps(
        {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(pipeline.url + "/v1/messages", data=io.BytesIO(body), headers=HEADERS) as response,  # read in pieces
    ):
        assert response.status == 200
        await response.read()
    (row,) = await pipeline.wait_for_exchanges(1)
    assert json.loads(row["request_body"])["messages"][0]["content"] == PROMPT
    assert json.loads(row["message"])["content"][0]["text"] == ANSWER
    count, largest = await largest_message(pipeline)
    assert count > 2 and largest <= FRAGMENT_BYTES + 64 * 1024, "the events went as pieces, none over FRAGMENT_BYTES"
