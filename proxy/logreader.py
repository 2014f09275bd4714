"""The worker's side of the capture log: reads records from a position on, following the writer.

`LogReader.poll` returns what is there now and never waits; the worker's loop
decides how long to sleep when nothing is. A record the buffer ends inside is
not written yet while its segment is the newest; once a newer segment exists it
never will be (its writer was killed mid-write), so it is skipped as torn.
Damaged bytes (a bad length or checksum) cannot be resynchronised within a
segment: the rest of that segment is skipped, loudly. An intact record of a
kind this code does not know (a newer KGB wrote it) is not damage: `poll`
returns the records before it, then raises `NewerLog` there, every time, its
position staying before it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

from proxy import logformat
from proxy.logformat import Record
from proxy.logwriter import segment_name, segment_seqs

log = logging.getLogger(__name__)

# What one read of a segment asks for: small enough that a large record seldom lies whole in a window, and
# so is read apart (below); a window of 1 MiB held a 500 KB body whole about half the time, to copy it out.
READ_BYTES = 256 * 1024
# A record at least this long that the window ends inside is read from the file straight into its payload's
# own bytes, not into the window and then out of it.
APART_BYTES = 128 * 1024
POLL_BYTES = 4 * 1024 * 1024  # about the most one poll returns
ARENA_KEPT = 4 * 1024 * 1024  # a reader's buffer over this is not kept once what it holds is read


class Position(NamedTuple):
    """Where a record starts: its segment's sequence number and the byte offset in it."""

    seq: int
    offset: int


class Read(NamedTuple):
    """A record and where it lies; a named tuple for `Record`'s reason (one per record read)."""

    at: Position
    record: Record
    after: Position


class Window:
    """What has been read of a segment from one offset on, in one buffer used again read after read: a fresh
    buffer per read, and a copy to join it to the record half read before, cost more than decoding it. A large
    record it ends inside is read apart instead (`LogReader._read_apart`)."""

    def __init__(self) -> None:
        self._arena = bytearray()
        self.view = memoryview(self._arena)[:0]  # the bytes read; released before the arena changes size

    def drop(self, count: int) -> None:
        """Forget the first `count` bytes (consumed), keeping the rest at the front; an arena a record of many
        megabytes grew is let go once it is read, so the worker does not keep its size."""
        kept = len(self.view) - count
        if len(self._arena) > ARENA_KEPT and kept <= READ_BYTES:
            rest = bytes(self.view[count:])
            self.view.release()
            self._arena = bytearray(rest)
        else:
            self.view[:kept] = self.view[count:]
        self._resize(kept)

    def read(self, fd: int, want: int, at: int) -> int:
        """Append up to `want` bytes of `fd` from offset `at`; how many there were."""
        have = len(self.view)
        self.view.release()
        if len(self._arena) < have + want:
            self._arena.extend(bytes(have + want - len(self._arena)))
        with memoryview(self._arena) as arena:
            got = os.preadv(fd, [arena[have : have + want]], at)
        self._resize(have + got)
        return got

    def clear(self) -> None:
        self.drop(len(self.view))

    def _resize(self, length: int) -> None:
        self.view.release()
        self.view = memoryview(self._arena)[:length]


class LogReader:
    def __init__(self, directory: Path, start: Position) -> None:
        self.directory = directory
        self._seq = start.seq
        self._base = start.offset  # file offset of the window's first byte
        self._window = Window()
        self._cursor = 0
        self._file: int | None = None
        self.torn = 0
        self.damaged = 0
        # The last `poll` stopped at the end of what is written (not at its budget, a damaged or newer record):
        # polling again before the log grows finds nothing, so the worker waits instead.
        self.at_end = False

    @property
    def position(self) -> Position:
        return Position(self._seq, self._base + self._cursor)

    def poll(self, budget: int = POLL_BYTES) -> list[Read]:
        """Records readable now, up to about `budget` bytes of them. A record's end is where the next one
        starts: one `Position` serves as both, but for a move to another segment."""
        reads: list[Read] = []
        used = 0
        self.at_end = False
        while used < budget:
            if self._file is None and not self._open():
                break
            records, ends = logformat.decode_run(self._window.view, self._cursor, budget - used)
            if records:
                self._take(reads, records, ends)
                used += ends[-1] - self._cursor
                self._cursor = ends[-1]
                continue
            try:
                logformat.refuse(self._window.view, self._cursor)
            except logformat.NewerLog as exc:
                if reads:  # what comes before it is this version's: the worker publishes it first
                    break
                raise logformat.NewerLog(f"capture log segment {self.directory / segment_name(self._seq)}: {exc}") from None
            except logformat.Damaged as exc:
                if not self._skip_damaged(exc):
                    break
                continue
            if (end := self._read_apart(reads)) is not None:
                used += end
                continue
            if self._fill():  # the buffer ends inside a record: the window moves on; the position stays
                continue
            if not self._next_segment_if_done():
                self.at_end = True
                break
        return reads

    def _take(self, reads: list[Read], records: list[Record], ends: list[int]) -> None:
        """A run of records read from the cursor on, each with where it lies; built with `tuple.__new__`, as
        `logformat.decode_run` builds its records, for the same reason."""
        seq, base, new = self._seq, self._base, tuple.__new__
        at = Position(seq, base + self._cursor)
        for record, end in zip(records, ends, strict=True):
            after = new(Position, (seq, base + end))
            reads.append(new(Read, (at, record, after)))
            at = after

    def _read_apart(self, reads: list[Read]) -> int | None:
        """The large record the window ends inside, when all of it is written: its payload read straight
        into its own bytes, the window emptied past it. How many bytes it took; None to read it the usual
        way (a smaller record, one still being written, or one that is not whole and intact)."""
        assert self._file is not None
        view, at = self._window.view, self._cursor
        needed = logformat.needed_at(view, at)
        start = self._base + at  # the record's offset in the file
        if needed < APART_BYTES or len(view) - at < logformat.PREFIX or os.fstat(self._file).st_size < start + needed:
            return None
        payload = os.pread(self._file, needed - logformat.PREFIX, start + logformat.PREFIX)
        record = logformat.decode_apart(view[at : at + logformat.PREFIX], payload)
        if record is None:
            return None
        self._take(reads, [record], [at + needed])
        self._base, self._cursor = start + needed, 0
        self._window.clear()
        return needed

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def _open(self) -> bool:
        """Open the segment at the position, or the oldest later one (earlier ones were published and deleted)."""
        path = self.directory / segment_name(self._seq)
        try:
            self._file = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            later = [seq for seq in segment_seqs(self.directory) if seq > self._seq]
            if not later:
                return False
            self._seq, self._base, self._cursor = later[0], 0, 0
            self._window.clear()
            return self._open()
        return True

    def _fill(self) -> bool:
        """Read more of the segment; False at its current end."""
        assert self._file is not None
        window = self._window
        if self._cursor:
            self._base += self._cursor
            window.drop(self._cursor)
            self._cursor = 0
        want = max(READ_BYTES, logformat.needed_at(window.view, 0) - len(window.view))
        return window.read(self._file, want, self._base + len(window.view)) > 0

    def _newer_segment(self) -> bool:
        return any(seq > self._seq for seq in segment_seqs(self.directory))

    def _next_segment_if_done(self) -> bool:
        """At the end of what is written: move on if the writer has (after one last read), else wait."""
        if not self._newer_segment() or self._fill():
            return False
        if self._cursor < len(self._window.view):
            self.torn += 1
            log.warning(
                "capture log segment %d ends in a torn record (%d bytes; its writer was killed mid-write); skipped",
                self._seq,
                len(self._window.view) - self._cursor,
            )
        self._advance()
        return True

    def _skip_damaged(self, exc: logformat.Damaged) -> bool:
        """Skip the rest of a damaged segment once the writer has left it; until then, wait."""
        if not self._newer_segment():
            return False
        self.damaged += 1
        log.error("capture log segment %d is damaged (%s); the rest of it is skipped", self._seq, exc)
        self._advance()
        return True

    def _advance(self) -> None:
        self.close()
        self._seq, self._base, self._cursor = self._seq + 1, 0, 0
        self._window.clear()
