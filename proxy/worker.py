"""`kgb capture-worker`: the capture log to Kafka, off the relay's event loop and out of its process.

A session opens a `KafkaLink`, reads the log from the checkpoint on, rebuilds
exchanges (proxy/assemble.py: decoding, SSE reassembly, redaction, session
parsing; proxy/mcp/assemble.py: the MCP Streamable HTTP relay's messages), encodes and sends each event (one over FRAGMENT_BYTES as FRAGMENT
events, schemas/fragments.py), and moves the checkpoint only past
exchanges whose every event Kafka acknowledged, or past an open MCP request
whose events so far Kafka acknowledged, with its state saved beside the
checkpoint (proxy/checkpoint.py `Held`): a GET stream open for hours holds no
segment on disk. Any Kafka failure ends the
session; the next one starts from the checkpoint, so while Kafka is down the
log is the spool and nothing else is. Events are built deterministically (ids
from the exchange, times from the log), so what a new session sends again is a
duplicate that consumers drop. Between reads it sleeps until the log grows
(proxy/logwatch.py: inotify, a slow safety poll), not for a fixed interval.

`kgb proxy` runs this in its own process and restarts it if it dies
(proxy/supervisor.py); it also runs alone, beside a proxy started with
``--no-worker``, against the same KGB_SPOOL_DIR.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path

import aiohttp
import orjson
from aiokafka.errors import KafkaError

from common.outages import KAFKA_WATCH, Reporter
from proxy import checkpoint
from proxy.assemble import Assembler, Built, OpenExchanges
from proxy.capture import RedactionPolicy
from proxy.kafkalink import KafkaLink, never_fits
from proxy.checkpoint import Held
from proxy.logformat import Kind
from proxy.logreader import LogReader, Position, Read
from proxy.logwatch import SAFETY_POLL, LogWatch
from proxy.logwriter import private_directory
from proxy.mcp.assemble import McpAssembler
from proxy.redact import matcher
from proxy.settings import CaptureSettings, ProxySettings
from proxy.tap import KEY_LENGTH
from proxy import workerstats
from proxy.workerstats import WorkerFigures
from schemas.codec import EXCHANGE, MCP
from schemas import fragments
from schemas.errors import SchemaError
from schemas.fragments import FRAGMENT_BYTES
import contextlib

log = logging.getLogger(__name__)

SAVE_EVERY = 0.2  # seconds between checkpoint writes while publishing
REGISTRY_RETRY = 5.0  # seconds between attempts to register the schemas while the registry is away
REPORT_EVERY = 60.0  # seconds between progress lines, when there was progress
MAX_UNACKED = 5000  # exchanges sent but not yet acknowledged before the worker waits on Kafka
RETRY_MIN, RETRY_MAX = 0.2, 5.0
FRAGMENT_ROOM = 64 * 1024  # a FRAGMENT event's envelope, and the record's framing, beside its piece
LOCK_FILE = "worker.lock"
LOCK_POLL = 0.2
KAFKA_SILENT = 10.0  # seconds a send may wait for its ack before the figures say Kafka is down
# Bytes of one open exchange's state saved beside the checkpoint; over it (an SSE event of megabytes half
# read) its last saved state, or its head, holds the checkpoint until the message is whole.
OPEN_STATE_MAX = 64 * 1024


def split_mcp_record(payload: bytes) -> tuple[bytes, bytes]:
    """An EVENT record's key and value (proxy.tap.McpSink)."""
    (length,) = KEY_LENGTH.unpack_from(payload)
    return payload[KEY_LENGTH.size : KEY_LENGTH.size + length], payload[KEY_LENGTH.size + length :]


@dataclass
class Tracked:
    """An exchange's sent events until Kafka has answered for all of them; answered ones are counted and
    let go as they come (`Session._reap`), so a stream open for hours keeps only those in flight."""

    start: Position
    futures: list[asyncio.Future] = field(default_factory=list)
    complete: bool = False
    sent_at: float = field(default_factory=time.monotonic)  # when the oldest of `futures` was sent

    def answered(self) -> bool:
        """Kafka has answered for every event sent so far."""
        return all(future.done() for future in self.futures)


def summary(counts: WorkerFigures) -> str:
    """The worker's progress line (its figures are on the proxy's /metrics too, proxy/workerstats.py)."""
    too_large, unencodable = counts.dropped["too_large"], counts.dropped["unencodable"]
    return f"{counts.events_published} events published, {too_large} too large and {unencodable} unencodable (not published)"


class Session:
    """One producer's life: from the checkpoint until stopped or Kafka fails."""

    def __init__(
        self,
        settings: CaptureSettings,
        policy: RedactionPolicy,
        http: aiohttp.ClientSession | None,
        counts: WorkerFigures,
        kafka: Reporter,
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.directory = settings.spool_dir
        self.link = KafkaLink(settings, http)
        # each takes the exchanges whose head is its kind; the open ones saved with the checkpoint are open again
        self.assemblers, position, self.held = reopened(policy, *checkpoint.load_open(self.directory))
        self.reader = LogReader(self.directory, position)
        self.watch = LogWatch(self.directory)
        self.unacked: dict[bytes, Tracked] = {}
        self.saved, self.saved_held = self.reader.position, set(self.held)
        self.counts = counts
        self.progressed = False
        self.open = False

    async def run(self, stop: asyncio.Event) -> None:
        await self.link.open()
        self.open = True
        self.kafka.recovered()
        self.watch.start(stop)
        loop = asyncio.get_running_loop()
        saved_at, reported_at, reported = loop.time(), loop.time(), summary(self.counts)
        asked_registry_at = saved_at
        while not stop.is_set():
            reads = self.reader.poll()
            for read in reads:
                await self._take(read)
            self._reap()
            if loop.time() - saved_at >= SAVE_EVERY:
                self._save()
                saved_at = loop.time()
            if loop.time() - asked_registry_at >= REGISTRY_RETRY:
                await self.link.register_schemas()  # nothing once registered
                asked_registry_at = loop.time()
            if loop.time() - reported_at >= REPORT_EVERY and summary(self.counts) != reported:
                reported, reported_at = summary(self.counts), loop.time()
                log.info("capture worker: %s so far", reported)
            if reads:
                self.watch.found()
                if not self.reader.at_end:
                    continue
            # acks to come or a checkpoint to move: look again at SAVE_EVERY; else only when the log grows (after
            # a poll that read something the next comes a GATHER later whatever this says, so it is not worked out)
            pending = bool(reads) or self._position() != self.saved or not all(t.answered() for t in self.unacked.values())
            await self.watch.wait(SAVE_EVERY if pending else SAFETY_POLL)
        await self._catch_up()
        await self._drain()

    async def close(self) -> None:
        self.open = False
        self.reader.close()
        self.watch.close()
        self.counts.dropped["torn"] += self.reader.torn
        self.counts.dropped["damaged"] += self.reader.damaged
        self.reader.torn = self.reader.damaged = 0
        await self.link.close(self.settings.close_timeout)

    def figures(self) -> WorkerFigures:
        """The worker's counts with this session's log reader's, and the log's state as of now."""
        dropped = self.counts.dropped
        behind = checkpoint.behind(self.directory, self.saved)
        return replace(
            self.counts,
            dropped={**dropped, "torn": dropped["torn"] + self.reader.torn, "damaged": dropped["damaged"] + self.reader.damaged},
            checkpoint_lag_bytes=behind.bytes,
            checkpoint_lag_segments=behind.segments,
            spool_bytes=behind.spool_bytes,
            spool_max_bytes=self.settings.spool_max_bytes,
            kafka_up=self.open and not self.kafka.outage.away and not self._unanswered(),
        )

    def _unanswered(self) -> bool:
        """Kafka has left sends unanswered for KAFKA_SILENT: a broker that went away mid-session (the
        idempotent producer retries rather than fail them, so the session need not end)."""
        when = time.monotonic() - KAFKA_SILENT
        return any(tracked.sent_at < when and not tracked.answered() for tracked in self.unacked.values())

    async def _take(self, read: Read) -> None:
        self.counts.records_read += 1
        self.counts.bytes_read += read.after.offset - read.at.offset
        if read.record.kind is Kind.EVENT:
            key, value = split_mcp_record(read.record.payload)
            tracked = self.unacked.setdefault(read.record.exchange + read.at.offset.to_bytes(8, "big"), Tracked(read.at))
            await self._send(tracked, MCP, key, self.link.reframe(MCP, value), "MCP event")
            tracked.complete = True
            return
        for assembler in self.assemblers:
            for built in assembler.feed(read):
                await self._send_built(built)

    async def _send_built(self, built: Built) -> None:
        tracked = self.unacked.setdefault(built.exchange, Tracked(built.start))
        event, schema = built.event, built.schema
        label = (
            f"exchange {event['exchange_id']} {event['kind']} event" if schema == EXCHANGE else f"MCP event {event['event_id']}"
        )
        encoder, key = self.link.encoders[schema], event["session_key"].encode()
        try:
            value = encoder.encode(event)
            part = min(FRAGMENT_BYTES, self.link.limits[schema] - FRAGMENT_ROOM)
            # kgb.mcp has no FRAGMENT events: an MCP message over Kafka's limit is counted too large in _send
            whole = len(value) <= part or schema != EXCHANGE
            pieces = [value] if whole else [encoder.encode(piece) for piece in fragments.split(event, value, part)]
        except SchemaError as exc:
            self.counts.dropped["unencodable"] += 1
            log.error("capture event dropped, it does not fit the schema: %s: %s", label, exc)
        else:
            for piece in pieces:
                await self._send(tracked, schema, key, piece, label)
        tracked.complete = built.last

    async def _send(self, tracked: Tracked, schema: str, key: bytes, value: bytes, label: str) -> None:
        size = len(key) + len(value)
        if size > self.link.limits[schema]:
            self.counts.dropped["too_large"] += 1
            log.error(
                "capture event too large for Kafka, not published: %s: %d bytes over the limit of %d",
                label,
                size,
                self.link.limits[schema],
            )
            return
        if len(self.unacked) > MAX_UNACKED:
            await self._wait_oldest()
        if not tracked.futures:
            tracked.sent_at = time.monotonic()
        tracked.futures.append(await self.link.send(schema, key, value))

    async def _wait_oldest(self) -> None:
        """Wait for the oldest exchange with sends in flight (an open stream ahead of it, all answered, is no bound)."""
        oldest = next((tracked for tracked in self.unacked.values() if not tracked.answered()), None)
        if oldest is not None:
            await asyncio.wait(oldest.futures)
        self._reap()

    def _reap(self) -> None:
        """Count the events Kafka answered for and forget them, and the exchanges they end; a failed send
        ends the session (it starts again from the checkpoint)."""
        for exchange, tracked in list(self.unacked.items()):
            if (not tracked.futures and not tracked.complete) or not tracked.answered():
                continue
            self._count(tracked.futures)
            tracked.futures = []
            if tracked.complete:
                del self.unacked[exchange]
                self.held.pop(exchange, None)

    def _count(self, answered: list[asyncio.Future]) -> None:
        for future in answered:
            exc = future.exception()
            if exc is None:
                self.counts.events_published += 1
                self.counts.last_publish = time.time()
                self.progressed = True
            elif never_fits(exc):
                self.counts.dropped["too_large"] += 1
                log.error("capture event refused by Kafka as too large, not published: %s", exc)
            else:
                raise exc

    def _hold_open(self) -> None:
        """Save the state of each open exchange whose events so far Kafka has all acknowledged (none in
        flight, none failed), as of where reading has got to: the checkpoint may then pass its head."""
        through, live = self.reader.position, set()
        for assembler in self.assemblers:
            for exchange, start in assembler.open_starts():
                live.add(exchange)
                held = self.held.get(exchange)
                if held is None and start.seq == through.seq:
                    continue  # it holds no segment on disk: saving it would gain nothing (most requests end so)
                if held is not None and held.through >= through:
                    # nothing read since (an idle log costs no work), or a restored state the re-reading from an
                    # earlier checkpoint has not reached yet: its state is as of `held.through`, not of now
                    continue
                tracked = self.unacked.get(exchange)
                if tracked is not None and tracked.futures:
                    continue
                state = assembler.snapshot(exchange)
                data = b"" if state is None else orjson.dumps(state)
                if data and len(data) <= OPEN_STATE_MAX:
                    self.held[exchange] = Held(assembler.name, through, data)
        for exchange in [x for x in self.held if x not in live and x not in self.unacked]:
            del self.held[exchange]

    def _hold(self, exchange: bytes, start: Position) -> Position:
        """Where an unfinished exchange holds the checkpoint: its saved state's position, else its head."""
        held = self.held.get(exchange)
        return start if held is None else held.through

    def _position(self) -> Position:
        opened = (pair for assembler in self.assemblers for pair in assembler.open_starts())
        sent = ((exchange, tracked.start) for exchange, tracked in self.unacked.items())
        unfinished: Iterable[Position] = (self._hold(exchange, start) for exchange, start in chain(opened, sent))
        return checkpoint.safe_position(unfinished, self.reader.position)

    def _save(self) -> None:
        self._hold_open()
        position = self._position()
        if position == self.saved and self.held.keys() >= self.saved_held:
            return  # the file still holds what a restart needs (a state it has, for no longer, would linger)
        checkpoint.save(self.directory, position, self.held)
        if position.seq != self.saved.seq:
            checkpoint.delete_published(self.directory, position)
        self.saved, self.saved_held = position, set(self.held)

    async def _catch_up(self) -> None:
        """On stop: send what the log holds by now (the relay has stopped appending), within KGB_SHUTDOWN_TIMEOUT."""
        try:
            async with asyncio.timeout(self.settings.close_timeout):
                while reads := self.reader.poll():
                    for read in reads:
                        await self._take(read)
        except TimeoutError:
            log.warning("capture worker: stopping with records left in the log; the next start publishes them")

    async def _drain(self) -> None:
        """On stop: wait (within KGB_SHUTDOWN_TIMEOUT) for what is in flight, then save how far Kafka got."""
        pending = [future for tracked in self.unacked.values() for future in tracked.futures if not future.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.close_timeout)
        try:
            self._reap()
        finally:
            self._save()


def reopened(
    policy: RedactionPolicy, position: Position, held: dict[bytes, Held]
) -> tuple[tuple[OpenExchanges, ...], Position, dict[bytes, Held]]:
    """The assemblers, with the open exchanges saved beside the checkpoint open again in theirs; states that
    cannot be restored cost them all, and the log is read from its start (what is published again, consumers drop)."""
    assemblers: tuple[OpenExchanges, ...] = (Assembler(policy), McpAssembler(policy))
    by_name = {assembler.name: assembler for assembler in assemblers}
    try:
        for exchange, saved in held.items():
            by_name[saved.assembler].restore(exchange, orjson.loads(saved.state), saved.through)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        log.error(
            "capture worker: the open exchanges saved with the checkpoint cannot be restored (%r); reading the whole log", exc
        )
        return reopened(policy, Position(0, 0), {})
    return assemblers, position, held


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def stop_at_eof(fd: int, stop: asyncio.Event) -> None:
    """Set `stop` when the pipe on `fd` ends: the supervising proxy closed it, or died."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), open(fd, "rb", closefd=False))  # noqa: SIM115 - the pipe's, for its life
    try:
        while await reader.read(4096):
            continue
    finally:
        transport.close()
    stop.set()


async def sole_worker(directory: Path, stop: asyncio.Event) -> int | None:
    """An exclusive lock on the log's ``worker.lock``, waited for while another worker holds it
    (the one of a proxy killed a moment ago, still publishing what it read); None if stopped first."""
    private_directory(directory)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not waited:
                log.info("capture worker: another worker holds %s; waiting for it to finish", directory / LOCK_FILE)
                waited = True
        await _wait(stop, LOCK_POLL)
        if stop.is_set():
            os.close(fd)
            return None


async def run(settings: ProxySettings, stop: asyncio.Event) -> None:
    """Sessions until `stop`; after a failure, the next one starts from the checkpoint, with backoff."""
    capture = settings.capture
    lock = await sole_worker(capture.spool_dir, stop)
    if lock is None:
        return
    try:
        await _sessions(settings, stop)
    finally:
        os.close(lock)


async def _sessions(settings: ProxySettings, stop: asyncio.Event) -> None:
    capture = settings.capture
    policy = RedactionPolicy(settings.rules(), settings.redact_headers, b"")
    matcher(policy.rules)  # the rules' automaton compiled now (once per process, 40-90 ms), not as the first exchange's lag
    log.info("capture worker: log %s to Kafka %s", capture.spool_dir, capture.kafka.bootstrap)
    retry, counts = RETRY_MIN, WorkerFigures()
    kafka = KAFKA_WATCH.reporter  # one outage, whether a session fails or aiokafka's records say so first
    session: Session | None = None

    def figures() -> WorkerFigures:
        return session.figures() if session is not None else counts

    async with aiohttp.ClientSession() as http, workerstats.writing(capture.spool_dir, figures):
        while not stop.is_set():
            session = Session(capture, policy, http, counts, kafka)
            try:
                await session.run(stop)
            except (KafkaError, OSError, TimeoutError) as exc:
                counts.retries += 1
                kafka.failed(f"{type(exc).__name__}: {exc}; resuming from the checkpoint in {retry:.1f}s")
            finally:
                await session.close()
            retry = RETRY_MIN if session.progressed else min(retry * 2, RETRY_MAX)
            await _wait(stop, retry)
    log.info("capture worker stopped: %s", summary(counts))
