import asyncio
import os

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from common.config import KafkaSettings
from proxy.kafkalink import RECORD_OVERHEAD, KafkaLink, partition_for
from proxy.settings import MiB, CaptureSettings
from schemas.codec import EXCHANGE, MCP, Encoder, confluent_header, load_schema, single_object_encoder
from tests.services import KafkaBroker, create_topic


def test_an_event_the_relay_encoded_single_object_is_sent_in_the_links_framing() -> None:
    link = KafkaLink(CaptureSettings.from_env({}), None)
    link.encoders[MCP] = Encoder(load_schema(MCP), confluent_header(7))  # as once the registry has answered
    body = bytes(range(256)) * 4
    reframed = link.reframe(MCP, single_object_encoder(MCP).header + body)
    assert type(reframed) is bytes  # what the producer copies into its batch
    assert reframed == confluent_header(7) + body


@given(st.binary(max_size=80), st.integers(1, 64))
def test_a_keys_partition_is_kafkas_default_one(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert partition_for(key, partitions, partitions[:1]) == DefaultPartitioner()(key, partitions, partitions[:1])


async def test_a_sessions_events_land_on_the_partition_kafkas_default_gives_its_key(kafka: KafkaBroker) -> None:
    exchanges, mcp = [await create_topic(kafka.bootstrap, partitions=6) for _ in range(2)]
    link = KafkaLink(CaptureSettings(kafka=KafkaSettings(bootstrap=kafka.bootstrap, topic=exchanges, mcp_topic=mcp)), None)
    keys = [f"session-{n}".encode() for n in range(12)]
    await link.open()
    try:
        futures = [await link.send(EXCHANGE, key, b"event") for key in keys * 2]
        landed = [metadata.partition for metadata in await asyncio.gather(*futures)]
    finally:
        await link.close(10.0)
    expected = [DefaultPartitioner()(key, list(range(6)), []) for key in keys]
    assert landed == expected * 2 and len(set(expected)) > 1


async def test_incompressible_events_sent_together_publish_under_an_existing_topics_smaller_limit(kafka: KafkaBroker) -> None:
    """Eight 900 KB events would make one 7 MB batch (8 MiB allowed, lingering gathers them), which a topic
    limited to 2 MiB refuses: the batch bound follows the topic's limit, so every one is acknowledged."""
    limit = 2 * MiB
    exchanges, mcp = [await create_topic(kafka.bootstrap, partitions=1, max_message_bytes=limit) for _ in range(2)]
    kafka_settings = KafkaSettings(bootstrap=kafka.bootstrap, topic=exchanges, mcp_topic=mcp)
    link = KafkaLink(CaptureSettings(kafka=kafka_settings, batch_bytes=8 * MiB, linger_ms=200), None)
    await link.open()
    try:
        assert link.limits[EXCHANGE] == limit - RECORD_OVERHEAD
        futures = [await link.send(EXCHANGE, b"one session", os.urandom(900 * 1024)) for _ in range(8)]
        offsets = [metadata.offset for metadata in await asyncio.gather(*futures)]
    finally:
        await link.close(10.0)
    assert offsets == list(range(8))
