"""The proxy's publishing stage: capture events to Kafka, never on the request path.

Flow of one event::

    submit(event) ──► bounded queue ──► pump: Avro-encode, then route
                                          ├─ direct: producer.send, held in the in-flight window
                                          └─ spool:  append to the disk spool (proxy/spool.py)
                                      drainer: spool ──► producer.send, in order, commit position

Ordering. The pump routes directly only while the spool is empty. It switches to
the spool when the broker is unreachable, a send fails or times out, the window
is full, its oldest record has waited `stall_seconds`, or the queue is past its
high-water mark (half of KGB_QUEUE_MAX_EVENTS / KGB_QUEUE_MAX_BYTES). At the switch it first
copies every unacknowledged window record into the (empty) spool, so the spool
always starts with everything not known to be delivered, followed by newer
events. The drainer starts only once every window send has settled; the idempotent
producer retries those forever in order, so Kafka sees window records before the
spool's. Copies of window records Kafka did acknowledge are skipped while this
process lives; after a restart they are re-sent, which is fine because consumers
are idempotent on ``event_id``. The pump goes back to direct only when the
drainer found the spool empty with no append pending.

Backlog. When Kafka is slower than the proxy, the queue must not fill while the
pump waits on the producer: once the queue is past its high-water mark the pump
stops sending directly and drains the queue to the spool, which only costs encoding
and a sequential write on the spool thread. A `producer.send` already waiting for
room in the producer is cut short by `submit` the moment the queue crosses the mark
(its record goes to the spool, after the window), so the pump never waits on Kafka
while the queue is over it. The other half of the bound is headroom for the spool
write (one fsync per batch) to finish.

Nothing is lost silently: a full queue or spool, an unencodable event, an event
over the size limit are each logged at ERROR and counted (proxy/metrics.py);
events over the limit are kept whole in the spool's ``rejected/`` directory. The
queue keeps its hard bound, so memory stays bounded: it can still fill, and drop,
only when events arrive faster than the pump can encode and write them to disk,
that is when the event loop starves the pump (the CPU is saturated, or a burst of
submits never yields to it) or the disk is slower than the traffic for longer than
the headroom lasts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError, for_code

from kgb.config import KafkaSettings, SettingsError, env_float, env_int, env_opt, env_str
from proxy.metrics import ProxyMetrics
from proxy.spool import Batch, Spool
from schemas.codec import EXCHANGE, Encoder, registry_encoder, single_object_encoder
from schemas.errors import SchemaError
from schemas.registry import Registry, subject_for_topic

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1024 * 1024
COMPRESSIONS = {"zstd": "zstd", "lz4": "lz4", "gzip": "gzip", "none": None}
TOPIC_ALREADY_EXISTS = 36
# Room for the record batch framing (and compression's worst case) around one event
# at the limit: what a created topic gets on top of KGB_MAX_EVENT_BYTES.
BATCH_OVERHEAD = 64 * 1024
# The least room an existing topic's smaller limit must leave for one record's framing.
RECORD_OVERHEAD = 1024
WINDOW_MAX_RECORDS = 5000
WINDOW_MAX_BYTES = 32 * MiB
PUMP_BATCH = 256
DRAIN_RECORDS = 500
DRAIN_BYTES = 16 * MiB
MAX_BACKOFF = 5.0


def default_spool_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/kgb/spool``, else ``~/.local/state/kgb/spool``: state that must
    survive restarts but is not configuration. Containers should mount a volume there."""
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "kgb" / "spool"


@dataclass(frozen=True)
class PublishSettings:
    """How the proxy publishes; embedded in the proxy's settings.

    `max_event_bytes` bounds one encoded event (key + value). The producer's
    max_request_size and the topic's ``max.message.bytes`` are raised to match;
    keep it under the broker's ``socket.request.max.bytes`` (100 MiB by default).
    `stall_seconds` is how long the oldest in-flight send may wait before new
    events go to the spool instead; it is also the broker probe interval.
    `close_timeout` bounds shutdown: what Kafka has not acknowledged by then is spooled.
    """

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    spool_dir: Path = field(default_factory=lambda: default_spool_dir(os.environ))
    spool_max_bytes: int = 1024 * MiB
    queue_max_events: int = 10_000
    queue_max_bytes: int = 256 * MiB
    max_event_bytes: int = 64 * MiB
    compression: str = "zstd"
    linger_ms: int = 5
    topic_partitions: int = 6
    topic_replication: int = 1
    stall_seconds: float = 5.0
    close_timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> PublishSettings:
        compression = env_str(env, "KGB_KAFKA_COMPRESSION", cls.compression).lower()
        if compression not in COMPRESSIONS:
            raise SettingsError(f"KGB_KAFKA_COMPRESSION must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        spool_dir = env_opt(env, "KGB_SPOOL_DIR")
        return cls(
            kafka=KafkaSettings.from_env(env),
            spool_dir=Path(spool_dir).expanduser() if spool_dir else default_spool_dir(env),
            spool_max_bytes=env_int(env, "KGB_SPOOL_MAX_BYTES", cls.spool_max_bytes),
            queue_max_events=env_int(env, "KGB_QUEUE_MAX_EVENTS", cls.queue_max_events),
            queue_max_bytes=env_int(env, "KGB_QUEUE_MAX_BYTES", cls.queue_max_bytes),
            max_event_bytes=env_int(env, "KGB_MAX_EVENT_BYTES", cls.max_event_bytes),
            compression=compression,
            linger_ms=env_int(env, "KGB_KAFKA_LINGER_MS", cls.linger_ms),
            topic_partitions=env_int(env, "KGB_TOPIC_PARTITIONS", cls.topic_partitions),
            topic_replication=env_int(env, "KGB_TOPIC_REPLICATION", cls.topic_replication),
            stall_seconds=env_float(env, "KGB_PUBLISH_STALL_SECONDS", cls.stall_seconds),
            close_timeout=env_float(env, "KGB_SHUTDOWN_TIMEOUT", cls.close_timeout),
        )

    def for_mcp(self) -> PublishSettings:
        """The same, for the MCP relay's events: their own topic, and their own spool
        (a spool belongs to one publisher) in a subdirectory of this one."""
        kafka = dataclasses.replace(self.kafka, topic=self.kafka.mcp_topic)
        return dataclasses.replace(self, kafka=kafka, spool_dir=self.spool_dir / "mcp")


@dataclass(slots=True)
class Record:
    """An encoded event; `label` names it in logs."""

    key: bytes
    value: bytes
    label: str

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value)


@dataclass(slots=True)
class InFlight:
    record: Record
    future: asyncio.Future
    sent_at: float


def body_bytes(event: Mapping[str, Any]) -> int:
    """What an event weighs in memory, near enough: its bodies (or payload), which dwarf the rest."""
    halves = [event.get("request"), event.get("response")]
    sizes = [len(half["body"]) for half in halves if isinstance(half, dict)]
    payload = event.get("payload")
    return sum(sizes) + (len(payload) if isinstance(payload, bytes) else 0)


def label_of(event: Mapping[str, Any]) -> str:
    """Names an event in logs and rejected/ file names by what it belongs to."""
    if "connection_id" in event:
        return f"mcp connection {event['connection_id']} event {event.get('event_id')}"
    return f"exchange {event.get('exchange_id')} event {event.get('event_id')}"


def acked(future: asyncio.Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def never_fits(exc: BaseException) -> bool:
    """Errors no retry can fix: the record is too large for the broker or the topic."""
    return isinstance(exc, (MessageSizeTooLargeError, RecordTooLargeError))


def append_all(spool: Spool, records: list[Record]) -> int:
    """Runs on the spool thread: append in order, one fsync; how many the cap let in."""
    accepted = 0
    for record in records:
        if not spool.append(record.key, record.value):
            break
        accepted += 1
    spool.sync()
    return accepted


def topic_limit(describe_responses: list[Any]) -> int | None:
    """``max.message.bytes`` out of a DescribeConfigs answer, if present."""
    for response in describe_responses:
        for resource in response.resources:
            for entry in resource[4]:
                if entry[0] == "max.message.bytes" and entry[1] is not None:
                    return int(entry[1])
    return None


class Publisher:
    """Takes capture events from request handlers and gets them to Kafka, in order.

    Owned by the proxy app: `start` in its startup, `close` in its cleanup
    (SIGTERM). The aiohttp session, used only to reach the schema registry, is
    the caller's and is never closed here. One publisher serves one topic
    (``settings.kafka.topic``) with one schema (``schemas/<schema>.avsc``);
    each event's `key_field` is its Kafka key.
    """

    def __init__(
        self,
        settings: PublishSettings,
        metrics: ProxyMetrics,
        session: aiohttp.ClientSession | None = None,
        *,
        schema: str = EXCHANGE,
        key_field: str = "session_key",
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._session = session
        self._schema = schema
        self._key_field = key_field
        self._queue: asyncio.Queue[dict] = asyncio.Queue(maxsize=settings.queue_max_events)
        self._queued_bytes = 0
        self._encoder: Encoder = single_object_encoder(schema)
        self._registered = settings.kafka.schema_registry_url is None
        self._registry_down = False  # its outage is logged once, not at every retry
        self._limit = settings.max_event_bytes
        self._producer: AIOKafkaProducer | None = None
        self._connected = False
        self._direct = False
        self._window: deque[InFlight] = deque()
        self._window_bytes = 0
        self._echo: deque[asyncio.Future] = deque()
        self._appending = 0
        self._taken: list[dict] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._up = asyncio.Event()
        self._corrupt_seen = 0
        self._full_logged = False
        self._queue_full_logged = False
        self._send_timeout: asyncio.Timeout | None = None
        self._io_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kgb-spool")
        self._spool: Spool | None = None
        self._tasks: list[asyncio.Task] = []

    # --- the request handlers' side ------------------------------------------------

    def submit(self, event: dict) -> None:
        """Queue one event; never blocks, never raises. Past the high-water mark the pump
        spools instead of waiting on Kafka; a queue at its bound (the pump starved) drops it, loudly."""
        self.metrics.events_submitted.inc()
        if self._closing:
            self._drop(event, "closed", "publisher is closed")
            return
        size = body_bytes(event)
        if self._queued_bytes + size > self.settings.queue_max_bytes and not self._queue.empty():
            self._drop(event, "queue_full", f"queue holds KGB_QUEUE_MAX_BYTES={self.settings.queue_max_bytes}")
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drop(event, "queue_full", f"queue holds KGB_QUEUE_MAX_EVENTS={self.settings.queue_max_events}")
            return
        self._queued_bytes += size
        self._queue_full_logged = False
        self.metrics.queue_depth.set(self._queue.qsize())
        if self._send_timeout is not None and not self._send_timeout.expired() and self._backlogged():
            self._send_timeout.reschedule(asyncio.get_running_loop().time())  # the pump spools instead

    def _backlogged(self) -> bool:
        """The queue is past its high-water mark, half its bound: the pump must spool, not wait on Kafka."""
        s = self.settings
        return 2 * self._queue.qsize() >= s.queue_max_events or 2 * self._queued_bytes >= s.queue_max_bytes

    def _drop(self, event: Mapping[str, Any], reason: str, why: str) -> None:
        """Count every drop; log each, except a full queue only once per episode."""
        self.metrics.events_dropped.labels(reason).inc()
        if reason == "queue_full":
            if self._queue_full_logged:
                return
            self._queue_full_logged = True
        log.error("capture event dropped (%s): %s; %s", reason, why, label_of(event))

    @property
    def ready(self) -> bool:
        """Kafka reachable and the spool has room: what the proxy's `/ready` reports."""
        spool_full = self._spool is None or self._spool.full
        return self._producer is not None and self._connected and not spool_full and not self._stalled()

    @property
    def delivered(self) -> bool:
        """Everything submitted so far acknowledged by Kafka (or dropped): nothing queued, in flight or spooled.
        A short-lived publisher (the stdio shim's) waits for this before `close`, which would spool the rest."""
        self._reap()
        spool_empty = self._spool is not None and self._spool.is_empty
        return self._queue.empty() and not self._taken and not self._window and spool_empty and self._appending == 0

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool and start the background tasks; Kafka being down is not an error."""
        self._spool = await self._io(Spool, self.settings.spool_dir, self.settings.spool_max_bytes)
        self._show_spool()
        await self._register_schema()
        self._tasks = [
            asyncio.create_task(self._pump(), name="kgb-publish-pump"),
            asyncio.create_task(self._drain(), name="kgb-publish-drain"),
            asyncio.create_task(self._keep_connected(), name="kgb-publish-connect"),
        ]
        for task in self._tasks:
            task.add_done_callback(_report_crash)
        try:
            await asyncio.wait_for(self._up.wait(), self.settings.stall_seconds)
        except TimeoutError:
            log.warning("Kafka at %s not reachable yet; spooling to %s", self.settings.kafka.bootstrap, self.settings.spool_dir)

    async def close(self, timeout: float | None = None) -> None:
        """Flush what is in flight within the deadline, spool the rest, stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.settings.close_timeout if timeout is None else timeout)
        self._closing = True
        await _until(self._queue.join(), deadline)
        await _until(self._settled(), deadline)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._spool_leftovers()
        if self._producer is not None:
            await _stop_producer(self._producer, max(deadline - loop.time(), 0.5))
        if self._spool is not None:
            await self._io(self._spool.close)
            self._show_spool()
        self._io_pool.shutdown(wait=True)
        log.info("publisher closed; %d bytes left in the spool", self._spool.pending_bytes if self._spool else 0)

    async def _spool_leftovers(self) -> None:
        """At close: unacknowledged direct sends, then events still queued, keep their order."""
        leftovers = self._spill() if self._direct else []
        self._direct = False
        events = self._taken + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        self._queued_bytes = 0
        self._taken = []
        leftovers += [r for r in map(self._encode, events) if r is not None]
        self._echo.clear()
        if leftovers:
            await self._to_spool(leftovers)

    # --- pump: queue -> Kafka or spool -----------------------------------------------

    async def _pump(self) -> None:
        while True:
            self._taken = await self._take()
            records = [r for r in map(self._encode, self._taken) if r is not None]
            await self._route(records)
            for _ in self._taken:
                self._queue.task_done()
            self._taken = []
            self.metrics.queue_depth.set(self._queue.qsize())

    async def _take(self) -> list[dict]:
        events = [await self._queue.get()]
        while len(events) < PUMP_BATCH and not self._queue.empty():
            events.append(self._queue.get_nowait())
        self._queued_bytes -= sum(map(body_bytes, events))
        return events

    def _encode(self, event: dict) -> Record | None:
        """Avro bytes keyed by `key_field`; an event the schema rejects is dropped, loudly."""
        try:
            return Record(event[self._key_field].encode(), self._encoder.encode(event), label_of(event))
        except (SchemaError, KeyError, AttributeError) as exc:
            self._drop(event, "unencodable", str(exc))
            return None

    async def _route(self, records: list[Record]) -> None:
        to_spool: list[Record] = []
        for record in records:
            if record.size > self._limit:
                await self._reject(record, f"{record.size} bytes is over the limit of {self._limit} bytes")
                continue
            if self._direct and not self._should_spill() and await self._send_direct(record):
                continue
            if self._direct:
                to_spool.extend(self._spill())
            to_spool.append(record)
        if to_spool:
            await self._to_spool(to_spool)

    async def _send_direct(self, record: Record) -> bool:
        """False when the send could not even be queued (or `submit` cut its wait short
        because the queue backed up); the caller spools the record."""
        assert self._producer is not None
        try:
            async with asyncio.timeout(self.settings.stall_seconds) as self._send_timeout:
                future = await self._producer.send(self.settings.kafka.topic, record.value, key=record.key)
        except (KafkaError, TimeoutError) as exc:
            if not (isinstance(exc, TimeoutError) and self._backlogged()):
                self._count_error("send", exc)
                self._connected = False
            return False
        finally:
            self._send_timeout = None
        self._window.append(InFlight(record, future, time.monotonic()))
        self._window_bytes += record.size
        future.add_done_callback(self._reap)
        return True

    def _should_spill(self) -> bool:
        self._reap()
        head_failed = bool(self._window) and self._window[0].future.done()
        full = len(self._window) >= WINDOW_MAX_RECORDS or self._window_bytes >= WINDOW_MAX_BYTES
        return not self._connected or head_failed or full or self._stalled() or self._backlogged()

    def _stalled(self) -> bool:
        return bool(self._window) and time.monotonic() - self._window[0].sent_at > self.settings.stall_seconds

    def _reap(self, _: object = None) -> None:
        """Count acknowledged sends from the window's head; a failed head stays for `_spill`."""
        while self._window and acked(self._window[0].future):
            done = self._window.popleft()
            self._window_bytes -= done.record.size
            self.metrics.events_published.inc()

    def _spill(self) -> list[Record]:
        """Leave direct mode: everything not known delivered goes first into the spool."""
        self._direct = False
        self._reap()
        unsure = [f for f in self._window if not acked(f.future)]
        self._echo = deque(f.future for f in unsure)
        return [f.record for f in unsure]

    async def _to_spool(self, records: list[Record]) -> None:
        assert self._spool is not None
        self._appending += 1
        try:
            accepted = await self._io(append_all, self._spool, records)
        except OSError as exc:
            accepted = 0
            log.error("spool write to %s failed: %s", self.settings.spool_dir, exc)
        finally:
            self._appending -= 1
        self.metrics.events_spooled.inc(accepted)
        self._spool_refused(records[accepted:])
        self._show_spool()
        self._wake.set()

    def _spool_refused(self, refused: list[Record]) -> None:
        if not refused:
            return
        self.metrics.events_dropped.labels("spool_full").inc(len(refused))
        if not self._full_logged:
            log.error(
                "spool %s is full (KGB_SPOOL_MAX_BYTES=%d): dropping new capture events until Kafka catches up; first: %s",
                self.settings.spool_dir, self.settings.spool_max_bytes, refused[0].label,
            )
            self._full_logged = True

    async def _reject(self, record: Record, why: str) -> None:
        """An event Kafka can never take: log, count, and keep it under rejected/."""
        self.metrics.events_too_large.inc()
        assert self._spool is not None
        name = record.label.replace(" ", "-")
        try:
            path = await self._io(self._spool.reject, name, record.key, record.value)
        except OSError as exc:
            path = f"nowhere ({exc})"
        log.error("capture event too large for Kafka, not published: %s: %s; kept in %s", record.label, why, path)

    # --- drainer: spool -> Kafka ----------------------------------------------------

    async def _drain(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            while not self._direct and self._producer is not None and self._connected:
                await self._settled()
                try:
                    if await self._drain_batch():
                        break
                    backoff = 0.1
                except (KafkaError, TimeoutError) as exc:
                    self._count_error("drain", exc)
                    self._connected = False
                    self._echo.clear()
                    await self._io(self._spool.rewind)  # type: ignore[union-attr]
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)

    async def _drain_batch(self) -> bool:
        """Deliver one batch from the spool; True when it is empty and direct mode resumed."""
        assert self._spool is not None
        batch = await self._io(self._spool.read, DRAIN_RECORDS, DRAIN_BYTES)
        self._show_corrupt()
        if batch.records:
            await self._deliver(batch)
            return False
        await self._io(self._spool.commit, batch.end)
        self._show_spool()
        if not self._spool.is_empty:
            return False
        if self._appending == 0:
            self._direct = True
            return True
        self._wake.clear()  # an append is on the spool thread; its completion sets `_wake`
        await self._wake.wait()
        return False

    async def _deliver(self, batch: Batch) -> None:
        """Send a batch, wait for every answer, commit the delivered prefix, then raise
        the first retriable failure (the drainer rewinds to the committed position)."""
        sent: list[tuple[asyncio.Future, bool]] = []
        error: BaseException | None = None
        try:
            for record in batch.records:
                sent.append(await self._send_spooled(record.key, record.value))
        except (KafkaError, TimeoutError) as exc:
            error = exc
        if sent:
            await asyncio.wait([future for future, _ in sent])
        error = await self._commit_delivered(batch, sent) or error
        if error is not None:
            raise error

    async def _commit_delivered(self, batch: Batch, sent: list[tuple[asyncio.Future, bool]]) -> BaseException | None:
        """Commit up to the first retriable failure; records that can never fit are rejected."""
        assert self._spool is not None
        position = None
        for record, (future, fresh) in zip(batch.records, sent):
            exc = future.exception()
            if exc is not None and not never_fits(exc):
                break
            if exc is not None:
                await self._reject(Record(record.key, record.value, f"spooled record at {record.end}"), str(exc))
            elif fresh:
                self.metrics.events_published.inc()
            position = record.end
        else:
            exc = None
            if len(sent) == len(batch.records):
                position = batch.end
        if position is not None:
            await self._io(self._spool.commit, position)
            self._show_spool()
        return exc

    async def _send_spooled(self, key: bytes, value: bytes) -> tuple[asyncio.Future, bool]:
        """(future, fresh): a record the window already delivered is not sent again."""
        if self._echo:
            original = self._echo.popleft()
            if acked(original):
                return original, False
        assert self._producer is not None
        async with asyncio.timeout(self.settings.stall_seconds):
            return await self._producer.send(self.settings.kafka.topic, value, key=key), True

    async def _settled(self) -> None:
        """Wait until every direct send has an answer, so the spool never overtakes them."""
        pending = [f.future for f in self._window if not f.future.done()]
        if pending:
            await asyncio.wait(pending)
        self.metrics.events_published.inc(sum(1 for f in self._window if acked(f.future)))
        # Failed sends stay for `_spill` in direct mode; in spool mode they are already spooled.
        unsent = [f for f in self._window if self._direct and not acked(f.future)]
        self._window = deque(unsent)
        self._window_bytes = sum(f.record.size for f in unsent)

    # --- connection ------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        """Connect (retrying while the broker is down), then probe it every `stall_seconds`."""
        backoff = 0.2
        while self._producer is None:
            try:
                await self._connect()
            except (KafkaError, OSError) as exc:
                self._count_error("connect", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        while True:
            await asyncio.sleep(self.settings.stall_seconds)
            await self._register_schema()
            self._set_connected(bool(await self._producer.client.force_metadata_update()))

    async def _connect(self) -> None:
        producer = self._new_producer()
        try:
            await producer.start()
            await self._ensure_topic()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        self._direct = self._spool is not None and self._spool.is_empty and self._appending == 0
        self._set_connected(True)
        self._up.set()
        log.info("publishing to Kafka %s topic %s", self.settings.kafka.bootstrap, self.settings.kafka.topic)

    def _set_connected(self, connected: bool) -> None:
        if connected and not self._connected:
            self._wake.set()
        self._connected = connected

    def _new_producer(self) -> AIOKafkaProducer:
        s = self.settings
        return AIOKafkaProducer(
            bootstrap_servers=s.kafka.bootstrap,
            acks="all",
            enable_idempotence=True,
            compression_type=COMPRESSIONS[s.compression],
            max_request_size=s.max_event_bytes + BATCH_OVERHEAD,
            max_batch_size=MiB,
            linger_ms=s.linger_ms,
        )

    async def _ensure_topic(self) -> None:
        """Create the topic with room for the largest event, or learn the smaller limit it has."""
        s = self.settings
        wanted = s.max_event_bytes + BATCH_OVERHEAD
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka.bootstrap)
        await admin.start()
        try:
            topic = NewTopic(s.kafka.topic, s.topic_partitions, s.topic_replication, topic_configs={"max.message.bytes": str(wanted)})
            answer = await admin.create_topics([topic])
            code = answer.topic_errors[0][1]
            if code == TOPIC_ALREADY_EXISTS:
                resource = ConfigResource(ConfigResourceType.TOPIC, s.kafka.topic, {"max.message.bytes": None})
                self._adopt_limit(topic_limit(await admin.describe_configs([resource])))
            elif code != 0:
                raise for_code(code)()
        finally:
            await admin.close()

    def _adopt_limit(self, limit: int | None) -> None:
        """An existing topic with a lower limit wins; say how to raise it rather than alter it
        (AlterConfigs replaces every topic setting, and aiokafka lacks the incremental one)."""
        if limit is None or limit >= self.settings.max_event_bytes:
            return
        self._limit = max(limit - RECORD_OVERHEAD, 0)
        log.warning(
            "topic %s has max.message.bytes=%d, below KGB_MAX_EVENT_BYTES=%d; larger events go to %s/rejected. "
            "Raise it with: kafka-configs --alter --entity-type topics --entity-name %s --add-config max.message.bytes=%d",
            self.settings.kafka.topic, limit, self.settings.max_event_bytes, self.settings.spool_dir,
            self.settings.kafka.topic, self.settings.max_event_bytes + BATCH_OVERHEAD,
        )

    async def _register_schema(self) -> None:
        """Confluent framing once the registry answers; single-object (which consumers
        also read) until then, so a registry outage never stops capture."""
        if self._registered:
            return
        url = self.settings.kafka.schema_registry_url
        assert url is not None, "only a publisher with a registry registers"
        if self._session is None:
            raise SettingsError("KGB_SCHEMA_REGISTRY_URL is set but the publisher got no aiohttp session")
        try:
            subject = subject_for_topic(self.settings.kafka.topic)
            self._encoder = await registry_encoder(Registry(url, self._session), subject, self._schema)
            self._registered = True
        except SchemaError as exc:
            if not self._registry_down:
                log.warning("schema registry %s unavailable (%s); single-object encoding until it answers", url.masked, exc)
            self._registry_down = True
            return
        if self._registry_down:
            log.info("schema registry %s answers again; Confluent framing from now on", url.masked)

    # --- helpers ---------------------------------------------------------------------

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a spool call on its thread, in submission order."""
        return await asyncio.get_running_loop().run_in_executor(self._io_pool, fn, *args)

    def _count_error(self, kind: str, exc: BaseException) -> None:
        self.metrics.publish_errors.labels(kind).inc()
        log.warning("Kafka %s failed: %s: %s", kind, type(exc).__name__, exc)

    def _show_spool(self) -> None:
        assert self._spool is not None
        self.metrics.spool_bytes.set(self._spool.pending_bytes)
        self.metrics.spool_full.set(1 if self._spool.full else 0)
        if not self._spool.full and self._full_logged:
            log.warning("spool %s has room again", self.settings.spool_dir)
            self._full_logged = False

    def _show_corrupt(self) -> None:
        assert self._spool is not None
        new = self._spool.corrupt_records - self._corrupt_seen
        if new:
            self._corrupt_seen += new
            self.metrics.publish_errors.labels("spool_corrupt").inc(new)
            log.error("skipped %d damaged record(s) in spool %s (torn write after a crash?)", new, self.settings.spool_dir)


def _report_crash(task: asyncio.Task) -> None:
    """A background task must never end on its own; if one does, capture has stopped: say so."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("publisher task %s crashed; capture events are no longer published", task.get_name(), exc_info=task.exception())


async def _until(awaitable: Awaitable[Any], deadline: float) -> None:
    """Await until the loop-clock deadline; past it, give up quietly (the caller spools)."""
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        await asyncio.wait_for(awaitable, max(remaining, 0))
    except TimeoutError:
        pass


async def _stop_producer(producer: AIOKafkaProducer, timeout: float) -> None:
    """Stop within `timeout`. An idempotent producer retries unacknowledged batches
    forever, so with the broker down `stop()` would never return; those records are
    already spooled, so cancel its sender task (private, no public way) and let it go."""
    stopping = asyncio.ensure_future(producer.stop())
    done, _ = await asyncio.wait([stopping], timeout=timeout)
    if not done:
        producer._sender.sender_task.cancel()  # noqa: SLF001
        await stopping
