"""The publisher against a real Kafka broker: order, outages, the spool, limits, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from kgb.config import KafkaSettings, SettingsError
from proxy.metrics import ProxyMetrics
from proxy.publish import Publisher, PublishSettings
from proxy.spool import REJECTED_DIR, Spool, read_record_file, record_size
from schemas.codec import CONFLUENT_MAGIC, make_decoder, single_object_encoder
from schemas.registry import Registry
from tests.fakes.schema_registry import FakeSchemaRegistry
from tests.schemas.factories import request_event
from tests.topic import read_events

SESSIONS = ("session-a", "session-b", "session-c", "session-d")


def event(i: int, *, body_size: int = 1024, sessions: tuple[str, ...] = SESSIONS) -> dict:
    """Event number `i`; its number is in its ids so order can be checked after decoding."""
    return request_event(
        event_id=f"event-{i:05d}", exchange_id=f"exchange-{i:05d}", session_key=sessions[i % len(sessions)],
        body_size=body_size,
    )


def number(decoded: dict) -> int:
    return int(decoded["event_id"].removeprefix("event-"))


def settings(kafka: Any, topic: str, spool_dir: Path, **over: Any) -> PublishSettings:
    base: dict[str, Any] = {"stall_seconds": 1.0, "close_timeout": 10.0}
    return PublishSettings(kafka=KafkaSettings(bootstrap=kafka.bootstrap, topic=topic), spool_dir=spool_dir, **(base | over))


@asynccontextmanager
async def running(config: PublishSettings, metrics: ProxyMetrics | None = None, **kw: Any) -> AsyncIterator[Publisher]:
    publisher = Publisher(config, metrics or ProxyMetrics(), **kw)
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.close()


def value(metrics: ProxyMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


async def eventually(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait for background work; fails the test if it never happens."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def read_until_all(bootstrap: str, topic: str, wanted: set[str], timeout: float = 120.0) -> list[dict]:
    """Every message in partition order until each wanted event_id was seen (duplicates kept)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    decoder = make_decoder(None)
    seen: list[dict] = []
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while not wanted <= {e["event_id"] for e in seen}:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        seen.append(await decoder.decode(record.value) | {"_key": record.key})
    finally:
        await consumer.stop()
    return seen


def first_occurrences_in_order(events: list[dict]) -> dict[bytes, list[int]]:
    """Per key, event numbers in the order they first appear (what an idempotent consumer keeps)."""
    per_key: dict[bytes, list[int]] = {}
    for e in events:
        numbers = per_key.setdefault(e["_key"], [])
        if number(e) not in numbers:
            numbers.append(number(e))
    return per_key


def assert_in_order(events: list[dict], count: int) -> None:
    per_key = first_occurrences_in_order(events)
    assert sorted(n for numbers in per_key.values() for n in numbers) == list(range(count))
    for key, numbers in per_key.items():
        assert numbers == sorted(numbers), f"order broken for {key!r}"
        assert all(SESSIONS[n % len(SESSIONS)].encode() == key for n in numbers)


def spooled_bytes(spool_dir: Path) -> int:
    return sum(p.stat().st_size for p in spool_dir.glob("*.seg"))


async def test_events_reach_the_topic_in_order_with_the_session_key(kafka: Any, topic: str, tmp_path: Path) -> None:
    metrics = ProxyMetrics()
    async with running(settings(kafka, topic, tmp_path), metrics) as publisher:
        assert publisher.ready
        for i in range(40):
            publisher.submit(event(i))
        events = await read_events(kafka.bootstrap, topic, 40)
    assert_in_order(events, 40)
    assert events[0]["request"]["body"] == event(number(events[0]))["request"]["body"]
    assert value(metrics, "kgb_events_published_total") == 40
    assert value(metrics, "kgb_events_spooled_total") == 0


async def test_confluent_framing_when_a_registry_is_configured(kafka: Any, topic: str, tmp_path: Path) -> None:
    async with FakeSchemaRegistry() as url, aiohttp.ClientSession() as session:
        config = settings(kafka, topic, tmp_path)
        config = PublishSettings(**(vars(config) | {"kafka": KafkaSettings(kafka.bootstrap, topic, schema_registry_url=url)}))
        async with running(config, session=session) as publisher:
            publisher.submit(event(0))
            raw = await first_raw_value(kafka.bootstrap, topic)
        assert raw[:1] == CONFLUENT_MAGIC
        assert number(await make_decoder(Registry(url, session)).decode(raw)) == 0


async def first_raw_value(bootstrap: str, topic: str) -> bytes:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            return (await consumer.getone()).value
    finally:
        await consumer.stop()


async def test_broker_down_at_start_spools_then_delivers_in_order(kafka: Any, topic: str, tmp_path: Path) -> None:
    metrics = ProxyMetrics()
    await asyncio.to_thread(kafka.stop)
    async with running(settings(kafka, topic, tmp_path), metrics) as publisher:
        assert not publisher.ready
        for i in range(30):
            publisher.submit(event(i))
        await eventually(lambda: value(metrics, "kgb_events_spooled_total") == 30)
        assert spooled_bytes(tmp_path) > 0
        await asyncio.to_thread(kafka.start)
        events = await read_events(kafka.bootstrap, topic, 30)
        await eventually(lambda: publisher.ready and value(metrics, "kgb_spool_bytes") == 0)
        publisher.submit(event(30))
        events += await read_until_all(kafka.bootstrap, topic, {"event-00030"})
    assert_in_order(events, 31)
    assert value(metrics, "kgb_events_dropped_total", reason="spool_full") == 0


async def test_broker_stopped_mid_flow_loses_nothing_and_keeps_order(kafka: Any, topic: str, tmp_path: Path) -> None:
    metrics = ProxyMetrics()
    async with running(settings(kafka, topic, tmp_path), metrics) as publisher:
        for i in range(200):
            publisher.submit(event(i, body_size=20_000))
            if i == 50:
                outage = asyncio.create_task(asyncio.to_thread(kafka.stop))
            if i == 120:
                await outage
            await asyncio.sleep(0.01)
        await asyncio.to_thread(kafka.start)
        events = await read_until_all(kafka.bootstrap, topic, {f"event-{i:05d}" for i in range(200)})
        await eventually(lambda: value(metrics, "kgb_spool_bytes") == 0)
    assert_in_order(events, 200)
    assert value(metrics, "kgb_events_spooled_total") > 0
    assert value(metrics, "kgb_events_dropped_total", reason="spool_full") == 0


async def test_full_spool_drops_newest_counts_and_says_so(
    kafka: Any, topic: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = record_size(b"session-a", single_object_encoder().encode(event(0)))
    metrics = ProxyMetrics()
    await asyncio.to_thread(kafka.stop)
    async with running(settings(kafka, topic, tmp_path, spool_max_bytes=3 * one + 10), metrics) as publisher:
        for i in range(10):
            publisher.submit(event(i))
        await eventually(lambda: value(metrics, "kgb_events_dropped_total", reason="spool_full") == 7)
        assert value(metrics, "kgb_spool_full") == 1
        assert not publisher.ready
        full_errors = [r for r in caplog.records if r.levelno == logging.ERROR and "is full" in r.getMessage()]
        assert len(full_errors) == 1
        await asyncio.to_thread(kafka.start)
        events = await read_events(kafka.bootstrap, topic, 3)
        await eventually(lambda: value(metrics, "kgb_spool_full") == 0)
    assert sorted(number(e) for e in events) == [0, 1, 2]
    assert value(metrics, "kgb_events_spooled_total") == 3


async def test_torn_record_is_skipped_counted_and_the_rest_delivered(kafka: Any, topic: str, tmp_path: Path) -> None:
    encoder = single_object_encoder()
    spool = Spool(tmp_path, max_bytes=1 << 30)
    for i in range(6):
        spool.append(SESSIONS[i % 4].encode(), encoder.encode(event(i)))
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    os.truncate(segment, segment.stat().st_size - 100)

    metrics = ProxyMetrics()
    async with running(settings(kafka, topic, tmp_path), metrics) as publisher:
        publisher.submit(event(6))
        events = await read_until_all(kafka.bootstrap, topic, {f"event-{i:05d}" for i in (0, 1, 2, 3, 4, 6)})
    assert [number(e) for e in events if e["_key"] == b"session-a"] == [0, 4]
    assert "event-00005" not in {e["event_id"] for e in events}
    assert value(metrics, "kgb_publish_errors_total", kind="spool_corrupt") == 1


async def test_close_with_broker_down_spools_and_the_next_publisher_delivers(
    kafka: Any, topic: str, tmp_path: Path
) -> None:
    config = settings(kafka, topic, tmp_path, close_timeout=2.0)
    first = ProxyMetrics()
    async with running(config, first) as publisher:
        assert publisher.ready
        await asyncio.to_thread(kafka.stop)
        for i in range(25):
            publisher.submit(event(i))
    assert value(first, "kgb_spool_bytes") > 0
    assert value(first, "kgb_events_published_total") == 0

    await asyncio.to_thread(kafka.start)
    second = ProxyMetrics()
    async with running(config, second):
        events = await read_until_all(kafka.bootstrap, topic, {f"event-{i:05d}" for i in range(25)})
        await eventually(lambda: value(second, "kgb_spool_bytes") == 0)
    assert_in_order(events, 25)
    assert list(tmp_path.glob("*.seg")) == []


async def test_event_over_the_limit_is_counted_logged_kept_and_later_events_flow(
    kafka: Any, topic: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ProxyMetrics()
    async with running(settings(kafka, topic, tmp_path, max_event_bytes=50_000), metrics) as publisher:
        publisher.submit(event(0))
        publisher.submit(event(1, body_size=100_000))
        publisher.submit(event(2))
        events = await read_events(kafka.bootstrap, topic, 2)
    assert sorted(number(e) for e in events) == [0, 2]
    assert value(metrics, "kgb_events_too_large_total") == 1
    (error,) = [r.getMessage() for r in caplog.records if "too large" in r.getMessage()]
    assert "exchange-00001" in error and "over the limit of 50000 bytes" in error
    (kept,) = (tmp_path / REJECTED_DIR).iterdir()
    key, raw = read_record_file(kept)  # type: ignore[misc]
    assert key == b"session-b" and number(make_decoder(None).decode_local(raw)) == 1


async def test_unencodable_event_is_dropped_loudly_and_the_rest_flow(
    kafka: Any, topic: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ProxyMetrics()
    async with running(settings(kafka, topic, tmp_path), metrics) as publisher:
        publisher.submit(event(0) | {"kind": "SIDEWAYS"})
        publisher.submit(event(1))
        (only,) = await read_events(kafka.bootstrap, topic, 1)
    assert number(only) == 1
    assert value(metrics, "kgb_events_dropped_total", reason="unencodable") == 1
    assert any("exchange-00000" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def dropped(metrics: ProxyMetrics) -> float:
    """Events dropped for any reason."""
    (family,) = [m for m in metrics.registry.collect() if m.name == "kgb_events_dropped"]
    return sum(sample.value for sample in family.samples if sample.name == "kgb_events_dropped_total")


async def submit_while_kafka_stalls(kafka: Any, publisher: Publisher, count: int, body_size: int) -> set[str]:
    """Large events, one every 5 ms, with the broker going down after the first 20: the
    producer stops taking them and would hold the pump for `stall_seconds` while the
    queue backs up. Ends with the broker back up; returns the event ids."""
    events = [event(i, body_size=body_size) for i in range(count)]
    outage = None
    for i, e in enumerate(events):
        publisher.submit(e)
        if i == 20:
            outage = asyncio.create_task(asyncio.to_thread(kafka.stop))
        await asyncio.sleep(0.005)
    await outage
    await asyncio.to_thread(kafka.start)
    return {e["event_id"] for e in events}


async def test_queue_past_its_event_bound_spools_in_order_instead_of_dropping(
    kafka: Any, topic: str, tmp_path: Path
) -> None:
    metrics = ProxyMetrics()
    async with running(settings(kafka, topic, tmp_path, queue_max_events=32), metrics) as publisher:
        wanted = await submit_while_kafka_stalls(kafka, publisher, 300, 200_000)
        events = await read_until_all(kafka.bootstrap, topic, wanted)
        await eventually(lambda: value(metrics, "kgb_spool_bytes") == 0)
    assert_in_order(events, 300)
    assert dropped(metrics) == 0
    assert value(metrics, "kgb_events_spooled_total") > 0
    assert value(metrics, "kgb_events_submitted_total") == 300


async def test_queue_past_its_byte_bound_spools_in_order_instead_of_dropping(
    kafka: Any, topic: str, tmp_path: Path
) -> None:
    metrics = ProxyMetrics()
    big = 200_000
    async with running(settings(kafka, topic, tmp_path, queue_max_bytes=32 * big), metrics) as publisher:
        wanted = await submit_while_kafka_stalls(kafka, publisher, 300, big)
        events = await read_until_all(kafka.bootstrap, topic, wanted)
        await eventually(lambda: value(metrics, "kgb_spool_bytes") == 0)
    assert_in_order(events, 300)
    assert dropped(metrics) == 0
    assert value(metrics, "kgb_events_spooled_total") > 0


async def test_queue_stays_bounded_when_the_pump_never_runs(kafka: Any, topic: str, tmp_path: Path) -> None:
    """What still drops: submits that never yield to the loop starve the pump, and the
    queue keeps its bound rather than grow."""
    metrics = ProxyMetrics()
    async with running(settings(kafka, topic, tmp_path, queue_max_events=5), metrics) as publisher:
        for i in range(8):
            publisher.submit(event(i))  # no await in between: the pump cannot take any yet
        events = await read_events(kafka.bootstrap, topic, 5)
    assert sorted(number(e) for e in events) == [0, 1, 2, 3, 4]
    assert value(metrics, "kgb_events_dropped_total", reason="queue_full") == 3
    assert value(metrics, "kgb_events_submitted_total") == 8


def test_settings_from_env() -> None:
    env = {
        "KGB_KAFKA_BOOTSTRAP": "127.0.0.1:9999", "KGB_TOPIC": "t", "KGB_SPOOL_DIR": "/var/spool/kgb",
        "KGB_SPOOL_MAX_BYTES": "1000", "KGB_QUEUE_MAX_EVENTS": "7", "KGB_MAX_EVENT_BYTES": "2000",
        "KGB_KAFKA_COMPRESSION": "LZ4",
    }
    s = PublishSettings.from_env(env)
    assert (s.kafka.bootstrap, s.kafka.topic, s.spool_dir) == ("127.0.0.1:9999", "t", Path("/var/spool/kgb"))
    assert (s.spool_max_bytes, s.queue_max_events, s.max_event_bytes, s.compression) == (1000, 7, 2000, "lz4")
    assert PublishSettings.from_env({"XDG_STATE_HOME": "/state"}).spool_dir == Path("/state/kgb/spool")
    with pytest.raises(SettingsError, match="KGB_KAFKA_COMPRESSION"):
        PublishSettings.from_env({"KGB_KAFKA_COMPRESSION": "snappy"})


def test_metrics_render_every_name() -> None:
    text = ProxyMetrics().render().decode()
    for name in (
        "kgb_events_submitted_total", "kgb_events_published_total", "kgb_events_spooled_total", "kgb_spool_bytes",
        "kgb_spool_full", "kgb_events_dropped_total", "kgb_events_too_large_total", "kgb_publish_errors_total",
        "kgb_queue_depth",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text
