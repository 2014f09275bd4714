import asyncio
import os

from common.config import KafkaSettings
from proxy.kafkalink import RECORD_OVERHEAD, KafkaLink
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
