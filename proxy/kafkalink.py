"""The capture worker's producer: topics made ready, events framed, sends handed back as futures.

One link per worker session: if anything fails, the worker drops the link and
reads the log again from its checkpoint, so the link itself never retries,
spools or remembers anything. The producer is idempotent with acks=all; its
futures are what moves the checkpoint.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from aiokafka.partitioner import murmur2

from common.config import mask_url
from common.topics import BATCH_OVERHEAD, TopicSettings, ensure_topics
from proxy.settings import COMPRESSIONS, CaptureSettings
from schemas.codec import EXCHANGE, MCP, Encoder, SINGLE_OBJECT_MAGIC, registry_encoder, single_object_encoder
from schemas.errors import SchemaError
from schemas.registry import Registry, subject_for_topic

log = logging.getLogger(__name__)

# The least room an existing topic's smaller limit must leave for one record's framing.
RECORD_OVERHEAD = 1024
SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
KEYS_HASHED = 4096  # the session keys whose partition hash is kept: more than a proxy sees at once


def topic_limit(describe_responses: list[Any]) -> int | None:
    """``max.message.bytes`` out of a DescribeConfigs answer, if present."""
    for response in describe_responses:
        for resource in response.resources:
            for entry in resource[4]:
                if entry[0] == "max.message.bytes" and entry[1] is not None:
                    return int(entry[1])
    return None


def batch_bound(batch_bytes: int, limits: dict[str, int]) -> int:
    """The producer's batch size, at most every topic's limit: aiokafka fills a batch up to it counting
    the records uncompressed, and the broker refuses a batch above the topic's ``max.message.bytes``
    whatever the events' own sizes, so a batch of small events past an existing topic's lower limit
    would fail as never fitting. A single event above the bound still goes alone, in a batch of its own."""
    return min(batch_bytes, *limits.values())


@functools.lru_cache(maxsize=KEYS_HASHED)
def _key_hash(key: bytes) -> int:
    return murmur2(key) & 0x7FFFFFFF


def partition_for(key: bytes, all_partitions: list[int], available: list[int]) -> int:
    """Kafka's default partition for a key (the Java client's murmur2, so every client puts a session's events
    where this one does), each key's hash kept: aiokafka's murmur2 is pure Python, 1.4% of the worker's CPU
    at 500 KB exchanges, and all of a session's events share its key. Every event has a key, so
    `available`, which only a keyless record is spread over, is not read."""
    return all_partitions[_key_hash(key) % len(all_partitions)]


def never_fits(exc: BaseException) -> bool:
    """Errors no retry can fix: the record is too large for the broker or the topic."""
    return isinstance(exc, (MessageSizeTooLargeError, RecordTooLargeError))


class KafkaLink:
    """Both capture topics, the exchanges' and MCP's, each with its schema's encoder."""

    def __init__(self, settings: CaptureSettings, session: aiohttp.ClientSession | None) -> None:
        self.settings = settings
        self._session = session
        self.topics = {EXCHANGE: settings.kafka.topic, MCP: settings.kafka.mcp_topic}
        self.encoders: dict[str, Encoder] = {name: single_object_encoder(name) for name in self.topics}
        self.limits = dict.fromkeys(self.topics, settings.max_event_bytes)
        self._registered = settings.kafka.schema_registry_url is None
        self._registry_down = False  # its outage is logged once, not at every retry
        self._producer: AIOKafkaProducer | None = None

    async def open(self) -> None:
        """Make sure both topics exist and start the producer; raises while Kafka is unreachable.
        The topics come first: an existing one's smaller limit bounds the producer's batches."""
        s = self.settings
        await self._ensure_topics()
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka.bootstrap,
            acks="all",
            enable_idempotence=True,
            compression_type=COMPRESSIONS[s.compression],
            max_request_size=s.max_event_bytes + BATCH_OVERHEAD,
            max_batch_size=batch_bound(s.batch_bytes, self.limits),
            linger_ms=s.linger_ms,
            partitioner=partition_for,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        await self.register_schemas()
        log.info("publishing to Kafka %s topics %s", s.kafka.bootstrap, ", ".join(self.topics.values()))

    async def send(self, schema: str, key: bytes, value: bytes) -> asyncio.Future:
        """Queue one framed event; the future settles with Kafka's answer."""
        assert self._producer is not None
        return await self._producer.send(self.topics[schema], value, key=key)

    def reframe(self, schema: str, single_object: bytes) -> bytes:
        """An event the relay encoded single-object (MCP), in this link's framing: one copy of its body (a slice
        and a concatenation would take two, of a tool result of megabytes)."""
        return b"".join((self.encoders[schema].header, memoryview(single_object)[SINGLE_OBJECT_HEADER:]))

    async def close(self, timeout: float) -> None:
        """Stop within `timeout`. An idempotent producer retries unacknowledged batches
        forever, so with the broker down `stop()` would never return; what it holds is
        still in the log, so cancel its sender task (private, no public way) and let it go."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        stopping = asyncio.ensure_future(producer.stop())
        done, _ = await asyncio.wait([stopping], timeout=timeout)
        if not done:
            producer._sender.sender_task.cancel()  # noqa: SLF001
            await stopping

    async def register_schemas(self) -> None:
        """Confluent framing once the registry answers; single-object (which consumers
        also read) until then, so a registry outage never stops capture."""
        if self._registered:
            return
        url = self.settings.kafka.schema_registry_url
        assert url is not None and self._session is not None
        try:
            for name, topic in self.topics.items():
                self.encoders[name] = await registry_encoder(Registry(url, self._session), subject_for_topic(topic), name)
            self._registered = True
        except SchemaError as exc:
            if not self._registry_down:
                log.warning("schema registry %s unavailable (%s); single-object encoding until it answers", mask_url(url), exc)
            self._registry_down = True
            return
        if self._registry_down:
            log.info("schema registry %s answers again; Confluent framing from now on", mask_url(url))

    async def _ensure_topics(self) -> None:
        """Create the missing topics with room for the largest event (`common.topics`, as the consumers do),
        and learn the smaller limit of one that existed."""
        s = self.settings
        wanted = TopicSettings(s.topic_partitions, s.topic_replication, s.max_event_bytes)
        created = await ensure_topics(s.kafka.bootstrap, list(self.topics.values()), wanted)
        existing = {name: topic for name, topic in self.topics.items() if topic not in created}
        if not existing:
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka.bootstrap)
        await admin.start()
        try:
            for name, topic in existing.items():
                resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
                self._adopt_limit(name, topic, topic_limit(await admin.describe_configs([resource])))
        finally:
            await admin.close()

    def _adopt_limit(self, name: str, topic: str, limit: int | None) -> None:
        """An existing topic with a lower limit wins; say how to raise it rather than alter it
        (AlterConfigs replaces every topic setting, and aiokafka lacks the incremental one)."""
        if limit is None or limit >= self.settings.max_event_bytes:
            return
        self.limits[name] = max(limit - RECORD_OVERHEAD, 0)
        log.warning(
            "topic %s has max.message.bytes=%d, below KGB_MAX_EVENT_BYTES=%d; larger events cannot be published. "
            "Raise it with: kafka-configs --alter --entity-type topics --entity-name %s --add-config max.message.bytes=%d",
            topic,
            limit,
            self.settings.max_event_bytes,
            topic,
            self.settings.max_event_bytes + BATCH_OVERHEAD,
        )
