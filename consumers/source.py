"""The Kafka side every consumer shares: poll, decode at the edge, hand over, commit.

A consumer supplies one `Handler`: an async function taking a `Batch` of plain
decoded events (and the messages that would not decode, with the reason). The
loop here commits a batch's offsets only once the handler has returned, so a
crash, a SIGTERM or a cancelled task between the two means redelivery, never
loss; handlers are idempotent on the event id to make redelivery harmless.

A handler that raises a transient error (`consumers.errors.is_transient`: the
database or the registry away) gets the same batch again after a backoff, for
as long as it takes, logged at every attempt; any other error ends `consume`
loudly with the offsets uncommitted.

A reader (`make_reader`, `read_from_start`) is the same loop without a group:
every partition assigned from its oldest offset, no rebalancing, nothing
committed, and `consume(..., until=ends)` returns once it has handled
everything before the end offsets it was given (`kgb replay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumers.errors import ConsumerError, is_transient
from common.config import KafkaSettings
from common.outages import Outage, Reporter
from schemas.codec import Decoder
from schemas.errors import DecodeError, clip
from schemas.fragments import Joiner

log = logging.getLogger(__name__)

T = TypeVar("T")

# Requests grow past 1 MB; fetch whole batches of them per round trip.
MAX_PARTITION_FETCH_BYTES = 16 * 1024 * 1024
FETCH_MAX_BYTES = 64 * 1024 * 1024
POLL_TIMEOUT_MS = 500


@dataclass(frozen=True, slots=True)
class Envelope:
    """Where a message sat in Kafka, and its bytes as they came (kept for dead letters)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = field(repr=False)
    value: bytes | None = field(repr=False)

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A decoded event: the plain dict the codec returns, with its envelope (named apart from asyncpg's `Record`, a row)."""

    envelope: Envelope
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reject:
    """A message the consumer will not process, and why; it belongs in a dead-letter place."""

    envelope: Envelope
    reason: str
    error_class: str


@dataclass(frozen=True)
class Batch:
    """One poll's worth of messages, in partition order, and the offsets that complete it."""

    records: list[EventRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


Handler = Callable[[Batch], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    """Exponential delays between attempts, capped; a setting, so tests can make it short."""

    initial: float = 0.5
    maximum: float = 30.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * 2, self.maximum)


def consumer_options(kafka: KafkaSettings, group: str | None, batch_size: int) -> dict[str, Any]:
    """How every KGB consumer talks to Kafka: manual commits, from the start of the topic."""
    return {
        "bootstrap_servers": kafka.bootstrap,
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": batch_size,
        "max_partition_fetch_bytes": MAX_PARTITION_FETCH_BYTES,
        "fetch_max_bytes": FETCH_MAX_BYTES,
    }


def make_consumer(kafka: KafkaSettings, group: str, batch_size: int, topics: Sequence[str] = ()) -> AIOKafkaConsumer:
    """Subscribed to ``topics`` (the exchange topic when none are given), not started: the caller owns it."""
    return AIOKafkaConsumer(*(topics or (kafka.topic,)), **consumer_options(kafka, group, batch_size))


def make_reader(kafka: KafkaSettings, batch_size: int) -> AIOKafkaConsumer:
    """In no group and subscribed to nothing, not started: `read_from_start` assigns it the topic."""
    return AIOKafkaConsumer(**consumer_options(kafka, None, batch_size))


async def read_from_start(
    reader: AIOKafkaConsumer, kafka: KafkaSettings, optional: Sequence[str] = ()
) -> dict[TopicPartition, int]:
    """Assign the started reader every partition of the topic, and of each ``optional`` topic that exists,
    at its oldest offset, and return those offsets.

    Manual assignment rather than a fresh group: no rebalance to wait for, and
    the partitions are known up front, so their end offsets are too. An optional
    topic that does not exist (no MCP traffic yet) has nothing to read.
    """
    partitions = [TopicPartition(kafka.topic, number) for number in await partition_numbers(kafka)]
    for topic in optional:
        try:
            numbers = await partition_numbers(replace(kafka, topic=topic))
        except ConsumerError:
            log.info("topic %s not found on %s: nothing to read there", topic, kafka.bootstrap)
            continue
        partitions += [TopicPartition(topic, number) for number in numbers]
    reader.assign(partitions)
    await reader.seek_to_beginning(*partitions)
    return await reader.beginning_offsets(partitions)


async def partition_numbers(kafka: KafkaSettings) -> list[int]:
    """The topic's partitions; a topic that does not exist is an error, not an empty read."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([kafka.topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise ConsumerError(f"topic {kafka.topic!r} not found on {kafka.bootstrap} (error code {described['error_code']})")
    return sorted(partition["partition"] for partition in described["partitions"])


async def end_offsets(reader: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    """Where each assigned partition ends now: the offset its next message will get."""
    return await reader.end_offsets(sorted(reader.assignment()))


async def behind(reader: AIOKafkaConsumer, until: dict[TopicPartition, int]) -> bool:
    """True while some partition's position is short of its offset in ``until``."""
    for tp, end in until.items():
        if await reader.position(tp) < end:
            return True
    return False


def envelope(message: ConsumerRecord) -> Envelope:
    return Envelope(message.topic, message.partition, message.offset, message.key, message.value)


def next_offsets(polled: dict[TopicPartition, list[ConsumerRecord]]) -> dict[TopicPartition, int]:
    """What to commit once these messages are handled: one past the last of each partition."""
    return {tp: messages[-1].offset + 1 for tp, messages in polled.items() if messages}


Decoders = Decoder | Mapping[str, Decoder]


def decoder_for(decoders: Decoders, topic: str) -> Decoder:
    """A consumer of several topics reads each with its own schema's decoder; one of a single topic, with the one."""
    return decoders if isinstance(decoders, Decoder) else decoders[topic]


async def decode_batch(
    polled: dict[TopicPartition, list[ConsumerRecord]], decoders: Decoders, joiner: Joiner | None = None
) -> Batch:
    """Decode every message; the ones that never will become rejects, the rest records.

    FRAGMENT events (schemas/fragments.py) go to `joiner`; the event they complete
    is decoded in place of the last one, and the offsets stop before a partition's
    first piece still waiting, so a restart reads its pieces again. Registry
    failures propagate: the bytes may be fine, so they must not be rejected.
    """
    joiner = joiner if joiner is not None else Joiner()
    batch = Batch(offsets=next_offsets(polled))
    for tp, messages in polled.items():
        decoder = decoder_for(decoders, tp.topic)
        for message in messages:
            where = envelope(message)
            try:
                event = await decoder.decode(message.value or b"")
                if event.get("kind") == "FRAGMENT":
                    whole = joiner.add(tp, message.offset, event["fragment"])
                    if whole is None:
                        continue
                    where = replace(where, value=whole)
                    event = await decoder.decode(whole)
                batch.records.append(EventRecord(where, event))
            except DecodeError as exc:
                batch.rejects.append(Reject(where, clip(str(exc)), type(exc).__name__))
    for tp, first_waiting in joiner.holding().items():
        if tp in batch.offsets:
            batch.offsets[tp] = min(batch.offsets[tp], first_waiting)
    return batch


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early when asked to stop; True when stopping."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def retrying(attempt: Callable[[], Awaitable[T]], what: str, stop: asyncio.Event, backoff: Backoff) -> T | None:
    """Run ``attempt`` until it succeeds, retrying transient failures; None if stopped first.

    The failures are reported as an outage (`common.outages`): a line at the first,
    a summary a minute, a line at the success, however short the backoff.
    """
    reporter = Reporter(Outage(what, gone="is failing", back="succeeded"), log)
    try:
        for delay in backoff.delays():
            try:
                result = await attempt()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                reporter.failed(f"{type(exc).__name__}: {clip(str(exc))}; nothing committed")
                if await wait_or_stop(stop, delay):
                    return None
                continue
            reporter.recovered()
            return result
    finally:
        reporter.health.done(what)
    raise AssertionError("unreachable: backoff delays never end")


async def commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    """Commit, tolerating a rebalance or a broker away: skipping a commit is always safe.

    Commits are cumulative, so the next one covers these offsets; if none comes,
    the events are delivered again and the idempotent handler changes nothing.
    """
    try:
        await consumer.commit(offsets)
    except KafkaError as exc:
        log.warning("offsets not committed (%s: %s); those events may be delivered again", type(exc).__name__, exc)


async def consume(
    consumer: AIOKafkaConsumer,
    decoder: Decoders,
    handler: Handler,
    *,
    stop: asyncio.Event,
    batch_size: int,
    backoff: Backoff = Backoff(),
    until: dict[TopicPartition, int] | None = None,
) -> None:
    """Poll, decode, handle, commit, until ``stop`` is set; the batch in hand is finished first.

    A reader passes ``until`` (see `end_offsets`): it returns once it is there, and commits nothing.
    """
    joiner = Joiner()
    while not stop.is_set() and (until is None or await behind(consumer, until)):
        polled = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=batch_size)
        if not polled:
            continue
        what = f"batch of {sum(map(len, polled.values()))} messages"
        done = await retrying(partial(_decode_and_handle, polled, decoder, handler, joiner), what, stop, backoff)
        if done is None:
            return
        if until is None:
            await commit(consumer, done.offsets)
        joiner.settle()


async def _decode_and_handle(
    polled: dict[TopicPartition, list[ConsumerRecord]], decoder: Decoders, handler: Handler, joiner: Joiner
) -> Batch:
    batch = await decode_batch(polled, decoder, joiner)
    await handler(batch)
    return batch
