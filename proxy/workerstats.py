"""The capture worker's figures, shown on the proxy's `/metrics`: a small file the worker writes beside the log.

A file the proxy serves rather than an HTTP endpoint of the worker's own,
because it is the simpler design and the sturdier one:
- `kgb proxy` already serves `/metrics`, so one scrape target shows the relay
  and its worker, and there is no port to choose, document or clash over (two
  proxies on one machine each have a worker; the worker of a killed proxy
  still finishing while its successor's waits for `worker.lock` would want
  the same port);
- the file outlives the worker: one that died, hangs or is restarting shows
  as `kgb_worker_up 0` with its last figures, not as a failed scrape;
- a worker run alone beside `kgb proxy --no-worker` writes the same file in
  the same KGB_SPOOL_DIR, and that proxy serves it.
The price is freshness: figures are as old as the last write (WRITE_EVERY
while they change; after a quiet spell, up to HEARTBEAT), from a task of its
own, so they keep coming while the worker's loop waits on a Kafka that went
away. Counters restart with the
worker process, which Prometheus counters allow for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from pathlib import Path

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from common.tasks import background

log = logging.getLogger(__name__)

FILE_NAME = "worker-metrics.json"
WRITE_EVERY = 1.0  # seconds between writes while the figures change
HEARTBEAT = 5.0  # seconds between writes while they do not
STALE_AFTER = 3 * HEARTBEAT  # an older file is a worker that is not running (or not looping)
DROP_REASONS = ("too_large", "unencodable", "torn", "damaged")


@dataclass
class WorkerFigures:
    """One worker process's figures: counters over its life, gauges as of `written_at`."""

    records_read: int = 0
    bytes_read: int = 0
    events_published: int = 0
    retries: int = 0  # Kafka failures (a send failed, no answer at a session's start), each a new session from the checkpoint
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    checkpoint_lag_bytes: int = 0
    checkpoint_lag_segments: int = 0
    spool_bytes: int = 0
    spool_max_bytes: int = 0
    last_publish: float = 0.0  # unix time of the last acknowledged event; 0 before the first
    kafka_up: bool = False
    written_at: float = 0.0
    pid: int = 0


def write(directory: Path, state: dict[str, Any]) -> None:
    """A `WorkerFigures` as `asdict` made it, stamped; atomically (a scrape reads the old file or the
    new one), 0600 like everything in the log's directory."""
    temporary = directory / f".{FILE_NAME}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, orjson.dumps({**state, "written_at": time.time(), "pid": os.getpid()}))
    finally:
        os.close(fd)
    os.replace(temporary, directory / FILE_NAME)


@contextlib.asynccontextmanager
async def writing(directory: Path, figures: Callable[[], WorkerFigures]) -> AsyncIterator[None]:
    """`figures()` written for the block's length: looked at every WRITE_EVERY while they change and every
    HEARTBEAT once they did not, written when changed or HEARTBEAT old, and once more at the block's end."""
    try:
        async with background(_keep_written(directory, figures), "worker figures"):
            yield
    finally:
        with contextlib.suppress(OSError):  # the log's directory gone: nothing to show them beside
            write(directory, asdict(figures()))


async def _keep_written(directory: Path, figures: Callable[[], WorkerFigures]) -> None:
    last: dict[str, Any] | None = None
    written_at = float("-inf")
    while True:
        state = asdict(figures())  # a deep copy: the next look compares against what was written
        changed = state != last
        if changed or time.monotonic() - written_at >= HEARTBEAT:
            try:
                write(directory, state)
            except OSError as exc:
                log.warning("capture worker: cannot write its figures to %s: %s", directory / FILE_NAME, exc)
            last, written_at = state, time.monotonic()
        await asyncio.sleep(WRITE_EVERY if changed else HEARTBEAT)  # an idle worker looks, and wakes, seldom


def read(directory: Path) -> WorkerFigures | None:
    """The last figures written; None if there are none or they cannot be read (a file of another version)."""
    try:
        return WorkerFigures(**orjson.loads((directory / FILE_NAME).read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError, TypeError):
        return None


def families(figures: WorkerFigures | None, now: float) -> Iterator[Metric]:
    """The Prometheus families for `figures` as of `now`; only `kgb_worker_up 0` when there are none."""
    up = figures is not None and now - figures.written_at <= STALE_AFTER
    yield GaugeMetricFamily("kgb_worker_up", f"1 while the capture worker's figures are under {STALE_AFTER:.0f}s old.", up)
    if figures is None:
        return
    f = figures
    counters = [
        ("records_read", "Capture-log records the worker read.", f.records_read),
        ("read_bytes", "Capture-log bytes the worker read.", f.bytes_read),
        ("events_published", "Events Kafka acknowledged.", f.events_published),
        (
            "publish_retries",
            "Kafka failures (a send failed, no answer at a session's start): each a new session from the checkpoint.",
            f.retries,
        ),
    ]
    for name, text, value in counters:
        yield CounterMetricFamily(f"kgb_worker_{name}", text, value)
    dropped = CounterMetricFamily("kgb_worker_dropped", "What the worker could not publish, by reason.", labels=["reason"])
    for reason, count in sorted(f.dropped.items()):
        dropped.add_metric([reason], count)
    yield dropped
    gauges = [
        ("kafka_up", "1 while the worker has Kafka: its session is open and no send waits long for an answer.", int(f.kafka_up)),
        ("checkpoint_lag_bytes", "Capture-log bytes past the checkpoint: not yet acknowledged by Kafka.", f.checkpoint_lag_bytes),
        ("checkpoint_lag_segments", "Capture-log segments from the checkpoint's on.", f.checkpoint_lag_segments),
        ("spool_bytes", "Bytes in the capture log's segments.", f.spool_bytes),
        ("spool_max_bytes", "KGB_SPOOL_MAX_BYTES: the cap on spool_bytes.", f.spool_max_bytes),
        ("last_publish_timestamp_seconds", "Unix time of the last event Kafka acknowledged (0: none yet).", f.last_publish),
        ("figures_timestamp_seconds", "Unix time the worker wrote these figures.", f.written_at),
    ]
    for name, text, reading in gauges:
        yield GaugeMetricFamily(f"kgb_worker_{name}", text, reading)


class WorkerCollector:
    """Reads the worker's file at each scrape of the proxy's registry; `directory` is the log's (None: not known yet)."""

    def __init__(self) -> None:
        self.directory: Path | None = None

    def collect(self) -> Iterator[Metric]:
        yield from families(read(self.directory) if self.directory is not None else None, time.time())

    def describe(self) -> list[Metric]:
        """Nothing: registering must not read the file (prometheus_client calls collect otherwise)."""
        return []
