"""Reading events back from a real topic, for tests that check what was published."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer

from schemas.codec import EXCHANGE, make_decoder


async def read_events(
    bootstrap: str, topic: str, count: int, timeout: float = 60.0, schema: str = EXCHANGE
) -> list[dict[str, Any]]:
    """The first `count` events on `topic` in partition order, decoded, each with its Kafka key added as `_key`.

    Fails (rather than returning fewer) when they do not all arrive within `timeout`.
    """
    decoder = make_decoder(None, schema)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=128 * 1024 * 1024,
        max_partition_fetch_bytes=128 * 1024 * 1024,
    )
    await consumer.start()
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(events) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        event = await decoder.decode(record.value)
                        event["_key"] = record.key
                        events.append(event)
    except TimeoutError:
        raise AssertionError(f"only {len(events)} of {count} events arrived on {topic}") from None
    finally:
        await consumer.stop()
    return events


def by_exchange(events: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{exchange_id: {"REQUEST": event, "RESPONSE": event}}."""
    grouped: dict[str, dict[str, dict[str, Any]]] = {}
    for event in events:
        grouped.setdefault(event["exchange_id"], {})[event["kind"]] = event
    return grouped
