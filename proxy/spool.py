"""The disk spool: where encoded events wait, in order, while Kafka is slow or down.

Layout of ``KGB_SPOOL_DIR``::

    0000000000000001.seg    append-only segments of records, read in name order
    0000000000000002.seg
    delivered               "<segment> <offset>": everything before it reached Kafka
    rejected/               events Kafka can never take (over the size limit), one file each

A record is a 12-byte header, big-endian ``length``, ``body_crc``, ``header_crc``
(CRC-32 of the first 8 bytes), then the body: a 4-byte key length, the key, the
value. A crash mid-write leaves a torn tail in the last segment; reading detects
it (bad header CRC, or a length running past the end of the file) and skips the
rest of that segment, since its lengths can no longer be trusted; a record whose
header is sound but whose body CRC fails is skipped alone. Either way the skip
is counted in `corrupt_records`, never fatal. After a restart the spool always
writes a fresh segment, so new records never land behind a torn tail.

Delivery is at least once: `commit` persists the delivered position after Kafka
acknowledged a batch, and a crash between the two re-sends that batch after the
restart. That is fine because consumers are idempotent on ``event_id``; a whole
segment is never re-sent, because the position is written after every batch.

This class is synchronous and not thread-safe: the publisher runs every call on
one dedicated thread, so disk waits (fsync above all) never stall the event loop.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SEGMENT_SUFFIX = ".seg"
POSITION_FILE = "delivered"
REJECTED_DIR = "rejected"
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
RESUME_FRACTION = 0.9

_HEADER = struct.Struct(">III")
_KEY_LEN = struct.Struct(">I")


@dataclass(frozen=True, order=True)
class Position:
    """A place in the spool: segment number and byte offset inside it."""

    segment: int
    offset: int


@dataclass(frozen=True)
class SpooledRecord:
    """One record read back; `end` is the position to commit once Kafka has it."""

    key: bytes
    value: bytes
    end: Position


@dataclass(frozen=True)
class Batch:
    """Records read in order; `end` also covers corrupt records skipped after the last one."""

    records: list[SpooledRecord]
    end: Position


def record_size(key: bytes, value: bytes) -> int:
    """Bytes a record takes on disk, for the byte cap."""
    return _HEADER.size + _KEY_LEN.size + len(key) + len(value)


def frame(key: bytes, value: bytes) -> list[bytes]:
    """A record as pieces for one `os.writev`, so a 1 MB value is never copied."""
    key_len = _KEY_LEN.pack(len(key))
    body_crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(key_len)))
    head = struct.pack(">II", _KEY_LEN.size + len(key) + len(value), body_crc)
    return [head + _KEY_LEN.pack(zlib.crc32(head)), key_len, key, value]


def parse_header(raw: bytes) -> tuple[int, int] | None:
    """(body length, body CRC), or None when the header itself is damaged."""
    length, body_crc, header_crc = _HEADER.unpack(raw)
    if zlib.crc32(raw[:8]) != header_crc or length < _KEY_LEN.size:
        return None
    return length, body_crc


def parse_body(body: bytes, body_crc: int) -> tuple[bytes, bytes] | None:
    """(key, value), or None when the body does not match its CRC."""
    if zlib.crc32(body) != body_crc:
        return None
    (key_len,) = _KEY_LEN.unpack_from(body)
    if _KEY_LEN.size + key_len > len(body):
        return None
    return body[4 : 4 + key_len], body[4 + key_len :]


def segment_name(number: int) -> str:
    return f"{number:016d}{SEGMENT_SUFFIX}"


def read_position(path: Path) -> Position | None:
    """The persisted delivered position; a missing or unreadable file means none."""
    try:
        segment, offset = path.read_text().split()
        return Position(int(segment), int(offset))
    except (OSError, ValueError):
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` so a crash leaves the old or the new content, never half of one."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(directory: Path) -> None:
    """Make a created or renamed file's directory entry durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Append-only segments with a delivered position and a byte cap.

    Once `append` refuses a record for lack of room, the spool stays `full` and
    refuses every record until delivery brings it back under 90% of the cap, so
    one full episode is one episode, not a flicker per freed batch.
    """

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.full = False
        self.corrupt_records = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sizes = {n: (self.directory / segment_name(n)).stat().st_size for n in self._scan()}
        self._committed = self._load_position()
        self._cursor = self._committed
        self._pending = self._count_pending()
        self._writer: int | None = None  # fd of the segment being written
        self._writing = 0  # its number; 0 when none is open

    # --- state -----------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes written and not yet delivered. A plain attribute, so the event loop may
        read it while the spool thread works."""
        return self._pending

    def _count_pending(self) -> int:
        return sum(self._sizes.values()) - self._committed.offset

    @property
    def is_empty(self) -> bool:
        return self.pending_bytes == 0

    @property
    def segments(self) -> list[int]:
        return sorted(self._sizes)

    def _scan(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob(f"*{SEGMENT_SUFFIX}") if p.stem.isdigit())

    def _load_position(self) -> Position:
        """The delivered position; segments wholly before it are deleted now."""
        saved = read_position(self.directory / POSITION_FILE)
        for number in self.segments:
            if saved is not None and number < saved.segment:
                self._delete(number)
        if saved is not None and saved.segment in self._sizes:
            return saved
        return Position(self.segments[0] if self._sizes else 0, 0)

    # --- writing ---------------------------------------------------------------

    def append(self, key: bytes, value: bytes) -> bool:
        """Write one record (not yet durable: call `sync`); False when the cap refuses it."""
        size = record_size(key, value)
        if self._refuses(size):
            return False
        fd = self._writable(size)
        try:
            written = os.writev(fd, frame(key, value))
            if written != size:
                raise OSError(f"short write to the spool: {written} of {size} bytes")
        except OSError:
            self._abandon_segment(fd)
            raise
        self._sizes[self._writing] += size
        self._pending += size
        return True

    def _abandon_segment(self, fd: int) -> None:
        """After a failed write (disk full): keep what landed, to be read as a torn tail,
        and write on in a fresh segment so offsets stay true."""
        self._sizes[self._writing] = os.fstat(fd).st_size
        self._pending = self._count_pending()
        self._close_writer()

    def sync(self) -> None:
        """fsync what was appended; called once per batch, not per record."""
        if self._writer is not None:
            os.fsync(self._writer)

    def _refuses(self, size: int) -> bool:
        limit = self.max_bytes * RESUME_FRACTION if self.full else self.max_bytes
        self.full = self.pending_bytes + size > limit
        return self.full

    def _writable(self, size: int) -> int:
        """The fd to append to: a new segment after a restart, or when this one is full."""
        current = self._sizes.get(self._writing, 0)
        if self._writer is None or (current and current + size > self.segment_bytes):
            self._open_segment()
        assert self._writer is not None
        return self._writer

    def _open_segment(self) -> None:
        self._close_writer()
        number = max([*self._sizes, self._committed.segment]) + 1
        path = self.directory / segment_name(number)
        self._writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._writing = number
        self._sizes[number] = 0
        if not any(n < number for n in self._sizes):
            self._committed = self._cursor = Position(number, 0)
        fsync_dir(self.directory)

    def _close_writer(self) -> None:
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    # --- reading and delivery --------------------------------------------------

    def read(self, max_records: int, max_bytes: int) -> Batch:
        """The next records after the read cursor, in order, at least one if any is left."""
        records: list[SpooledRecord] = []
        size = 0
        for record in self._records_from(self._cursor):
            records.append(record)
            size += len(record.value)
            if len(records) >= max_records or size >= max_bytes:
                break
        return Batch(records, self._cursor)

    def rewind(self) -> None:
        """Read again from the delivered position, after a failed send."""
        self._cursor = self._committed

    def commit(self, position: Position) -> None:
        """Mark everything before `position` delivered, durably; drop finished segments."""
        self._committed = max(self._committed, position)
        self._cursor = max(self._cursor, self._committed)
        for number in self.segments:
            if number < self._committed.segment or self._finished(number):
                self._delete(number)
        if self._committed.segment not in self._sizes:
            self._committed = self._cursor = Position(self._committed.segment + 1, 0)
        self._pending = self._count_pending()
        self.full = self.full and self._pending > self.max_bytes * RESUME_FRACTION
        write_atomically(self.directory / POSITION_FILE, f"{self._committed.segment} {self._committed.offset}\n".encode())

    def _finished(self, number: int) -> bool:
        return number == self._committed.segment and self._committed.offset >= self._sizes[number]

    def _delete(self, number: int) -> None:
        if number == self._writing:
            self._close_writer()
            self._writing = 0
        (self.directory / segment_name(number)).unlink(missing_ok=True)
        self._sizes.pop(number, None)

    def _records_from(self, start: Position) -> Iterator[SpooledRecord]:
        """Records from `start` on, moving the cursor past each one and past skipped damage."""
        for number in self.segments:
            if number < start.segment:
                continue
            offset = start.offset if number == start.segment else 0
            self._cursor = Position(number, offset)
            yield from self._segment_records(number, offset)

    def _segment_records(self, number: int, offset: int) -> Iterator[SpooledRecord]:
        end = self._sizes[number]
        with open(self.directory / segment_name(number), "rb") as f:
            f.seek(offset)
            while offset < end:
                header = parse_header(f.read(_HEADER.size)) if end - offset >= _HEADER.size else None
                if header is None or offset + _HEADER.size + header[0] > end:
                    self._skip_damage(number, end)
                    return
                body = f.read(header[0])
                offset += _HEADER.size + header[0]
                self._cursor = Position(number, offset)
                parsed = parse_body(body, header[1])
                if parsed is None:
                    self.corrupt_records += 1
                    continue
                yield SpooledRecord(parsed[0], parsed[1], self._cursor)

    def _skip_damage(self, number: int, end: int) -> None:
        """A torn tail: the rest of this segment cannot be framed, so step over it."""
        self.corrupt_records += 1
        self._cursor = Position(number, end)

    # --- rejects and shutdown --------------------------------------------------

    def reject(self, name: str, key: bytes, value: bytes) -> Path:
        """Keep an event Kafka cannot take, in the record format, so nothing is lost."""
        folder = self.directory / REJECTED_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.rec"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.writev(fd, frame(key, value))
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def close(self) -> None:
        self.sync()
        self._close_writer()


def read_record_file(path: Path) -> tuple[bytes, bytes] | None:
    """A `rejected/` file back as (key, value); None if it is damaged."""
    raw = path.read_bytes()
    header = parse_header(raw[: _HEADER.size]) if len(raw) >= _HEADER.size else None
    if header is None or len(raw) != _HEADER.size + header[0]:
        return None
    return parse_body(raw[_HEADER.size :], header[1])
