"""The relay's side of the capture log: append-only segment files, plain writes.

A record is on its way to disk the moment `os.write` returns: the kernel holds
it, so a killed relay loses nothing it appended. An append may `hold` a record
that nothing is waiting on (a request's head, its end) so it leaves in one
`os.writev` with the next: the relay never holds one past its next write to the
log, which always comes before it sends a client anything. Only a machine crash
can lose what is not yet synced, which the fsync policy (`FsyncPolicy`) bounds.
Each writer start opens a new segment, so no writer ever appends after a record
torn by an earlier kill. Segments are ``segment-<seq>.log``, 0600 in a 0700
directory; the worker deletes them once everything in them is on Kafka.

A new segment's blocks are reserved up front (`reserve`: ``fallocate``, the
size kept), so an append fills blocks the file has; growing it made ext4
reserve blocks page by page (0.11 against 0.065 ms per 500 KB append). Its size
is still what was written, and a segment left (rotated, or at close) is cut to
it. So besides the segments' sizes the disk holds up to `segment_bytes` past
the end of the one being written, and as much past each one a killed writer
left (never cut), until the worker deletes it.

The log is also the spool while Kafka is down, bounded by `max_bytes` over
every segment's size: an append that does not fit is refused, counted and
logged (once per episode), and the caller drops the rest of that exchange.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from proxy import logformat
from proxy.logformat import Kind

log = logging.getLogger(__name__)

SEGMENT_PREFIX = "segment-"
SEGMENT_SUFFIX = ".log"
RESCAN_EVERY = 0.5  # seconds between re-reading the directory's size while full
# Held records are written anyway once this many buffers (well under IOV_MAX, 1024 on Linux) or bytes wait:
# many requests waiting for their answers at once must not make one writev too long.
HOLD_PARTS = 64
HOLD_BYTES = 1024 * 1024
FALLOC_FL_KEEP_SIZE = 1  # linux/falloc.h: blocks reserved past the end, the size unchanged
_FALLOCATE = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)  # None where the C library has none
if _FALLOCATE is not None:
    _FALLOCATE.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class FsyncPolicy(enum.Enum):
    NONE = "none"  # the kernel writes back when it likes: a machine crash loses its last ~30 s
    INTERVAL = "interval"  # fsync every KGB_CAPTURE_FSYNC_INTERVAL seconds, off the event loop
    ALWAYS = "always"  # fsync after each exchange's end, on the event loop: safest, slowest


@dataclass(frozen=True)
class LogSettings:
    directory: Path
    max_bytes: int = 1024 * 1024 * 1024
    segment_bytes: int = 64 * 1024 * 1024
    fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    fsync_interval: float = 1.0


def segment_name(seq: int) -> str:
    return f"{SEGMENT_PREFIX}{seq:016d}{SEGMENT_SUFFIX}"


def segment_seq(name: str) -> int | None:
    """The sequence number in a segment's file name; None for any other file."""
    if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)):
        return None
    digits = name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def _named_segments(directory: Path) -> list[tuple[int, str]]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted((seq, name) for name in names if (seq := segment_seq(name)) is not None)


def segments(directory: Path) -> list[tuple[int, Path]]:
    """The directory's segments, oldest first."""
    return [(seq, directory / name) for seq, name in _named_segments(directory)]


def segment_seqs(directory: Path) -> list[int]:
    """The sequence numbers of the directory's segments, oldest first, with no path built for each: the
    worker looks for a newer segment every time it reaches the end of what is written."""
    return [seq for seq, _ in _named_segments(directory)]


def private_directory(directory: Path) -> None:
    """Create `directory` 0700, and tighten it if it exists: the log holds unredacted bodies."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)


def reserve(fd: int, size: int) -> bool:
    """Allocate `size` bytes of blocks to the file without changing its size; False where the file system
    cannot (the appends then grow the file as before)."""
    return _FALLOCATE is not None and _FALLOCATE(fd, FALLOC_FL_KEEP_SIZE, 0, size) == 0


def directory_bytes(directory: Path) -> int:
    total = 0
    for _, path in segments(directory):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue  # deleted by the worker meanwhile
    return total


class LogWriter:
    """Appends records to the current segment; rotates, syncs and refuses what the cap does not allow."""

    def __init__(self, settings: LogSettings) -> None:
        self.settings = settings
        private_directory(settings.directory)
        existing = segments(settings.directory)
        self._seq = existing[-1][0] + 1 if existing else 0
        self._total = directory_bytes(settings.directory)
        self._fd = self._open(self._seq)
        self._size = 0
        self._retired: list[int] = []
        self._dirty = False
        self._held: list[bytes | memoryview] = []
        self._held_bytes = 0
        self._lock = threading.Lock()
        self._rescanned_at = float("-inf")
        self.refused_records = 0
        self.refused_bytes = 0
        self._full = False
        self._held = [start := logformat.encode(Kind.WRITER_START, bytes(16), time.time_ns(), b"")]
        self._held_bytes = len(start)
        self._flush()

    @property
    def pending_bytes(self) -> int:
        return self._total

    @property
    def full(self) -> bool:
        return self._full

    def append(
        self, kind: Kind, exchange: bytes, payload: bytes | memoryview, *, force: bool = False, hold: bool = False
    ) -> bool:
        """Append one record; False if the cap refused it. `force` lets a small closing record
        (an exchange's end) past the cap, so an exchange that started in the log also ends there.
        `hold` keeps it for the next append that does not hold (with which it is written)."""
        head = logformat.prefix(kind, exchange, time.time_ns(), payload)
        size = len(head) + len(payload)
        if not force and not self._room_for(size):
            self._refuse(size)
            return False
        self._held += (head, payload)
        self._held_bytes += size
        if not hold or len(self._held) >= HOLD_PARTS or self._held_bytes >= HOLD_BYTES:
            self._flush()
            if self._size >= self.settings.segment_bytes:
                self._rotate()
        return True

    def admit(self, size: int) -> bool:
        """Whether `size` more bytes fit under the cap; a refusal counts as one dropped record."""
        if self._room_for(size):
            return True
        self._refuse(size)
        return False

    def sync(self) -> None:
        """fsync what was written; safe from another thread (the interval policy's). A segment left
        that the worker has since deleted is not synced: everything in it is on Kafka, and its pages,
        if not yet written back, are then never written at all (at 500 KB exchanges a 64 MiB segment
        lasts a fraction of the interval)."""
        with self._lock:
            retired, self._retired = self._retired, []
            fd, dirty, self._dirty = self._fd, self._dirty, False
        for old in retired:
            if os.fstat(old).st_nlink:
                os.fsync(old)
            os.close(old)
        if dirty and fd >= 0:
            os.fsync(fd)

    def exchange_ended(self) -> None:
        if self.settings.fsync is FsyncPolicy.ALWAYS:
            self.sync()

    def close(self) -> None:
        if self._held:
            self._flush()
        if self.settings.fsync is not FsyncPolicy.NONE:
            self.sync()
        with self._lock:
            os.ftruncate(self._fd, self._size)
            for fd in [*self._retired, self._fd]:
                os.close(fd)
            self._retired, self._fd = [], -1

    def _flush(self) -> None:
        """Write what is held, in one writev. What reached the file is counted as each write returns, so a
        write that then fails (the disk full) leaves `_size` at the file's size: the cut when the segment
        is left keeps every byte written, the torn record's included, and nothing past them."""
        parts, size = self._held, self._held_bytes
        self._held, self._held_bytes = [], 0
        self._dirty = True
        written = self._wrote(os.writev(self._fd, parts))
        if written < size:  # a short write to a regular file: rare (disk full, a signal); finish it
            rest = memoryview(b"".join(parts))[written:]
            while rest:
                rest = rest[self._wrote(os.write(self._fd, rest)) :]

    def _wrote(self, count: int) -> int:
        self._size += count
        self._total += count
        return count

    def _room_for(self, size: int) -> bool:
        size += self._held_bytes
        if self._total + size > self.settings.max_bytes and (now := time.monotonic()) - self._rescanned_at >= RESCAN_EVERY:
            self._rescanned_at = now  # the worker may have deleted segments since
            self._total = directory_bytes(self.settings.directory)
        if self._total + size > self.settings.max_bytes:
            return False
        if self._full:
            self._full = False
            log.warning(
                "capture log %s has room again; %d records were dropped while full", self.settings.directory, self.refused_records
            )
        return True

    def _refuse(self, size: int) -> None:
        self.refused_records += 1
        self.refused_bytes += size
        if not self._full:
            self._full = True
            log.error(
                "capture log %s is full (KGB_SPOOL_MAX_BYTES=%d): new exchanges are relayed but not captured "
                "until the worker publishes what it holds",
                self.settings.directory,
                self.settings.max_bytes,
            )

    def _open(self, seq: int) -> int:
        path = self.settings.directory / segment_name(seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        reserve(fd, self.settings.segment_bytes)
        return fd

    def _rotate(self) -> None:
        fd = self._open(self._seq + 1)
        os.ftruncate(self._fd, self._size)  # its reservation past the end, given back
        with self._lock:
            if self.settings.fsync is FsyncPolicy.NONE:
                os.close(self._fd)
            else:
                self._retired.append(self._fd)
            self._fd, self._seq, self._size = fd, self._seq + 1, 0
            self._dirty = False


async def keep_synced(writer: LogWriter) -> None:
    """The interval policy's loop: fsync on a thread, so the relay never waits on the disk."""
    while True:
        await asyncio.sleep(writer.settings.fsync_interval)
        await asyncio.to_thread(writer.sync)
