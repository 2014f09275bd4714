"""The capture log's parts on their own: framing, writer, tailing reader, checkpoint. No network."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
import stat
import subprocess
import sys
import uuid
from itertools import accumulate, pairwise
from pathlib import Path

import pytest

from proxy import checkpoint, logformat, worker
from proxy.capture import RedactionPolicy
from proxy.logformat import Kind
from proxy.logreader import APART_BYTES, ARENA_KEPT, READ_BYTES, LogReader, Position, Read, Window
from proxy.logwriter import FsyncPolicy, LogSettings, LogWriter, segments
from proxy.redact import BUILTIN_RULES
from proxy.tap import capture_log, exchange_id, id_bytes

EXCHANGE = uuid.uuid4().bytes


def writer(directory: Path, **overrides: object) -> LogWriter:
    return LogWriter(LogSettings(directory, **overrides))  # type: ignore[arg-type]


def payloads(reader: LogReader) -> list[bytes]:
    """What was appended, without the marker each writer starts with."""
    return [read.record.payload for read in reader.poll() if read.record.kind is not Kind.WRITER_START]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def decode_one(buffer: bytes, offset: int) -> tuple[logformat.Record, int] | None:
    """The record at `offset` and the offset after it, None when the buffer ends inside it: the
    reader's two steps, `decode_run` and, when it read nothing, `refuse`."""
    records, ends = logformat.decode_run(buffer, offset, 1)
    if records:
        return records[0], ends[0]
    logformat.refuse(buffer, offset)
    return None


def test_a_record_round_trips_and_a_short_buffer_is_not_a_record() -> None:
    data = logformat.encode(Kind.RESPONSE_CHUNK, EXCHANGE, 123, b"data: {}\n\n")
    record, end = decode_one(data + b"more", 0)
    assert (record.kind, record.exchange, record.at_ns, record.payload, end) == (
        Kind.RESPONSE_CHUNK,
        EXCHANGE,
        123,
        b"data: {}\n\n",
        len(data),
    )
    assert decode_one(data[:-1], 0) is None
    assert decode_one(data[:3], 0) is None


def test_damaged_bytes_are_refused_not_misread() -> None:
    data = bytearray(logformat.encode(Kind.END, EXCHANGE, 1, b"{}"))
    data[-1] ^= 0xFF
    with pytest.raises(logformat.Damaged, match="checksum"):
        decode_one(bytes(data), 0)
    for rest in (40, 4):  # a bad length is seen in a buffer too short for the rest of the prefix too
        with pytest.raises(logformat.Damaged, match="length 1 at"):
            decode_one(b"\x00\x00\x00\x01" + b"\x00" * rest, 0)
    assert decode_one(data[: logformat.PREFIX - 1], 0) is None  # a good length there is a record to come


def test_a_run_of_records_stops_before_the_first_that_is_not_whole_and_intact() -> None:
    """`decode_run` gives the records wholly in the buffer up to one cut short or damaged, and `refuse` says
    which: waiting for the rest, or damage; a budget stops it after the record that reaches it."""
    framed = [logformat.encode(kind, EXCHANGE, n, bytes([n]) * 10 * n) for n, kind in enumerate(Kind, 1)]
    data, starts = b"".join(framed), [0, *accumulate(map(len, framed))]
    for cut in range(len(data) + 1):
        records, ends = logformat.decode_run(data[:cut], 0, len(data))
        whole = sum(end <= cut for end in starts[1:])
        assert [r.kind for r in records] == list(Kind)[:whole] and ends == starts[1 : whole + 1]
        logformat.refuse(data[:cut], starts[whole] if whole < len(framed) else cut)
    third = starts[2]
    for at in range(third, starts[3]):
        damaged = bytearray(data)
        damaged[at] ^= 0x01
        records, ends = logformat.decode_run(bytes(damaged), 0, len(data))
        assert ends == starts[1:3]  # never the damaged record, nor any after it
        if at >= third + logformat.HEADER.size // 2:  # past its length: the checksum catches it
            with pytest.raises(logformat.Damaged):
                logformat.refuse(bytes(damaged), third)
    assert logformat.decode_run(data, 0, 1)[1] == starts[1:2]
    assert logformat.decode_run(data, 0, starts[1] + 1)[1] == starts[1:3]


def test_files_are_private_even_in_a_directory_that_was_not(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    w = writer(directory)
    w.append(Kind.END, EXCHANGE, b"{}")
    w.close()
    assert mode(directory) == 0o700
    ((_, path),) = segments(directory)
    assert mode(path) == 0o600
    checkpoint.save(directory, Position(0, 10))
    assert mode(directory / checkpoint.FILE_NAME) == 0o600


def test_the_writer_rotates_and_a_new_writer_never_appends_to_an_old_segment(tmp_path: Path) -> None:
    w = writer(tmp_path, segment_bytes=200)
    for n in range(5):
        w.append(Kind.REQUEST_BODY, EXCHANGE, bytes([n]) * 60)
    w.close()
    assert len(segments(tmp_path)) == 3  # a 29-byte start marker and 89-byte records: 2 or 3 per 200 bytes
    again = writer(tmp_path)
    again.append(Kind.END, EXCHANGE, b"{}")
    again.close()
    seqs = [seq for seq, _ in segments(tmp_path)]
    assert seqs == [0, 1, 2, 3]
    reader = LogReader(tmp_path, Position(0, 0))
    assert payloads(reader) == [bytes([n]) * 60 for n in range(5)] + [b"{}"]


def test_a_sync_skips_the_segments_left_that_the_worker_has_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deleted segment was published whole: syncing it would write to disk pages nothing will read."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    w = writer(tmp_path, segment_bytes=200)
    for n in range(5):  # a 29-byte start marker, then 149-byte records: segments of 2, 2 and 1
        w.append(Kind.REQUEST_BODY, EXCHANGE, bytes([n]) * 120)
    (first, published), (_, kept), *_ = segments(tmp_path)
    assert first == 0
    kept_inode, live_inode = kept.stat().st_ino, segments(tmp_path)[-1][1].stat().st_ino
    published.unlink()
    w.sync()
    assert synced == [kept_inode, live_inode]
    w.close()


def test_only_the_segment_being_written_holds_blocks_past_its_end(tmp_path: Path) -> None:
    """Its blocks are reserved up front, and given back when it is left (tmp_path: ext4, which can reserve)."""
    w = writer(tmp_path, segment_bytes=1 << 20)
    w.append(Kind.REQUEST_BODY, EXCHANGE, b"x" * 100)
    live = segments(tmp_path)[-1][1].stat()
    assert live.st_size < 4096  # the reader sees what was written, no more
    assert live.st_blocks * 512 >= 1 << 20
    for _ in range(12):
        w.append(Kind.REQUEST_BODY, EXCHANGE, b"y" * 100_000)  # past a segment: rotated
    w.close()
    assert len(segments(tmp_path)) == 2
    for _, path in segments(tmp_path):
        assert path.stat().st_blocks * 512 < path.stat().st_size + 8192
    assert payloads(LogReader(tmp_path, Position(0, 0))) == [b"x" * 100] + [b"y" * 100_000] * 12


def test_an_append_that_fails_midway_leaves_its_segment_cut_to_what_reached_it(tmp_path: Path) -> None:
    """A file size limit makes the kernel write the writev's first part and refuse the rest (EFBIG), as a disk
    that fills does: the bytes written stay, the torn record's too, and no reserved block past them."""
    w = writer(tmp_path, segment_bytes=1 << 20)
    w.append(Kind.REQUEST_BODY, EXCHANGE, b"x" * 100)
    ((_, path),) = segments(tmp_path)
    limit = path.stat().st_size + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel's signal for it kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(OSError) as failed:
            w.append(Kind.REQUEST_BODY, EXCHANGE, b"y" * 5000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert failed.value.errno == errno.EFBIG
    w.close()
    assert path.stat().st_size == limit
    assert path.stat().st_blocks * 512 < limit + 8192
    assert payloads(LogReader(tmp_path, Position(0, 0))) == [b"x" * 100]


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from proxy.logformat import Kind
from proxy.logwriter import LogSettings, LogWriter
LogWriter(LogSettings(Path(sys.argv[1]), segment_bytes=1 << 20)).append(Kind.REQUEST_BODY, bytes(16), b"x" * 100)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_segment_holds_its_reservation_until_the_worker_deletes_it(tmp_path: Path) -> None:
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], cwd=Path(__file__).parents[2], check=False)
    assert killed.returncode == -signal.SIGKILL
    ((_, left),) = segments(tmp_path)
    assert left.stat().st_size < 4096 and left.stat().st_blocks * 512 >= 1 << 20  # never cut
    writer(tmp_path, segment_bytes=1 << 20).close()  # the restarted relay's segment, past it
    assert checkpoint.delete_published(tmp_path, Position(1, 0)) == 1  # the worker, once it is published
    assert not left.exists()


def test_the_cap_refuses_appends_counts_them_and_lets_an_end_through(tmp_path: Path) -> None:
    w = writer(tmp_path, max_bytes=300)
    assert w.append(Kind.REQUEST_BODY, EXCHANGE, b"x" * 200)
    assert not w.append(Kind.REQUEST_BODY, EXCHANGE, b"y" * 200)
    assert w.full and w.refused_records == 1 and w.refused_bytes > 200
    assert w.append(Kind.END, EXCHANGE, b"{}", force=True)
    w.close()
    assert payloads(LogReader(tmp_path, Position(0, 0))) == [b"x" * 200, b"{}"]


def test_the_cap_frees_up_once_the_worker_deletes_published_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.logwriter.RESCAN_EVERY", 0.0)
    w = writer(tmp_path, max_bytes=500, segment_bytes=150)
    assert w.append(Kind.REQUEST_BODY, EXCHANGE, b"x" * 200)
    assert w.append(Kind.REQUEST_BODY, EXCHANGE, b"x" * 200)
    assert not w.append(Kind.REQUEST_BODY, EXCHANGE, b"x" * 200)
    assert checkpoint.delete_published(tmp_path, Position(2, 0)) == 2
    assert w.append(Kind.REQUEST_BODY, EXCHANGE, b"z" * 200)
    assert not w.full
    w.close()


def test_the_reader_follows_the_writer(tmp_path: Path) -> None:
    w = writer(tmp_path, fsync=FsyncPolicy.NONE)
    reader = LogReader(tmp_path, Position(0, 0))
    assert [read.record.kind for read in reader.poll()] == [Kind.WRITER_START]
    assert reader.poll() == []
    w.append(Kind.REQUEST_HEAD, EXCHANGE, b"head")
    (read,) = reader.poll()
    assert read.at == Position(0, logformat.PREFIX) and read.after == reader.position
    assert reader.poll() == []
    w.append(Kind.END, EXCHANGE, b"end")
    assert payloads(reader) == [b"end"]
    w.close()


def test_the_reader_says_when_a_poll_stopped_at_the_end_of_what_is_written(tmp_path: Path) -> None:
    w = writer(tmp_path, fsync=FsyncPolicy.NONE)
    for n in range(3):
        w.append(Kind.REQUEST_BODY, EXCHANGE, bytes([n]) * 100)
    reader = LogReader(tmp_path, Position(0, 0))
    assert len(reader.poll(budget=1)) == 1 and not reader.at_end  # its budget stopped it: more is there
    assert len(reader.poll()) == 3 and reader.at_end
    w.close()
    again = writer(tmp_path, fsync=FsyncPolicy.NONE)  # a newer segment: the end of the old one is not the end
    assert [read.record.kind for read in reader.poll()] == [Kind.WRITER_START] and reader.at_end
    again.close()


def test_a_position_mid_log_reads_from_there(tmp_path: Path) -> None:
    w = writer(tmp_path)
    for n in range(3):
        w.append(Kind.REQUEST_BODY, EXCHANGE, str(n).encode())
    w.close()
    reads = LogReader(tmp_path, Position(0, 0)).poll()
    assert payloads(LogReader(tmp_path, reads[2].at)) == [b"1", b"2"]


def test_a_record_torn_by_a_kill_is_skipped_once_a_new_writer_starts(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.append(Kind.REQUEST_BODY, EXCHANGE, b"whole")
    w.close()
    ((_, first),) = segments(tmp_path)
    torn = logformat.encode(Kind.REQUEST_BODY, EXCHANGE, 1, b"never finished")
    with first.open("ab") as handle:
        handle.write(torn[:-4])
    reader = LogReader(tmp_path, Position(0, 0))
    assert payloads(reader) == [b"whole"]
    assert payloads(reader) == [] and reader.torn == 0  # the writer may still be writing it
    restarted = writer(tmp_path)
    restarted.append(Kind.END, EXCHANGE, b"after restart")
    restarted.close()
    assert payloads(reader) == [b"after restart"] and reader.torn == 1


def positions_hold(reads: list[Read]) -> bool:
    """Each read lies where it says: its end is the next one's start within a segment, the start of the next
    segment otherwise, and it spans its record."""
    for read, following in pairwise(reads):
        if following.at != (read.after if following.at.seq == read.at.seq else Position(following.at.seq, 0)):
            return False
    return all(r.after.offset - r.at.offset == logformat.PREFIX + len(r.record.payload) for r in reads)


def test_reads_say_where_they_lie_across_segments_and_past_damage(tmp_path: Path) -> None:
    w = writer(tmp_path, segment_bytes=200)
    for n in range(5):
        w.append(Kind.REQUEST_BODY, EXCHANGE, bytes([n]) * 60)
    w.close()
    reads = LogReader(tmp_path, Position(0, 0)).poll()
    assert {read.at.seq for read in reads} == {0, 1} and positions_hold(reads)  # the third segment is empty
    (_, first), *_ = segments(tmp_path)
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    reader = LogReader(tmp_path, Position(0, 0))
    reads = reader.poll()
    assert reader.damaged == 1 and len(reads) == 5 and reads[2].at == Position(1, 0) and positions_hold(reads)


def test_a_damaged_segment_is_skipped_with_what_follows_it_kept(tmp_path: Path) -> None:
    w = writer(tmp_path, segment_bytes=1)
    w.append(Kind.REQUEST_BODY, EXCHANGE, b"damaged")
    w.append(Kind.REQUEST_BODY, EXCHANGE, b"fine")
    w.close()
    (_, first), *_ = segments(tmp_path)
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    reader = LogReader(tmp_path, Position(0, 0))
    assert payloads(reader) == [b"fine"] and reader.damaged == 1


def future_record(kind: int, payload: bytes) -> bytes:
    """An intact record of a kind this KGB does not have, as a newer one would write it."""
    fixed = logformat.FIXED.pack(kind, EXCHANGE, 1) + payload
    return logformat.HEADER.pack(len(fixed), logformat.crc32(fixed)) + fixed


def test_a_record_of_an_unknown_kind_stops_the_reader_after_what_came_before_it(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.append(Kind.REQUEST_BODY, EXCHANGE, b"before")
    w.close()
    ((_, first),) = segments(tmp_path)
    with first.open("ab") as segment:
        segment.write(future_record(max(Kind) + 1, b"what a newer KGB meant"))
    later = writer(tmp_path)  # a newer segment: a damaged record here would be skipped with the rest of its segment
    later.append(Kind.REQUEST_BODY, EXCHANGE, b"after")
    later.close()
    reader = LogReader(tmp_path, Position(0, 0))
    assert payloads(reader) == [b"before"]
    stopped_at = reader.position
    for _ in range(2):  # every time, never past it
        with pytest.raises(logformat.NewerLog, match=rf"{first.name}: record kind {max(Kind) + 1} .* a newer KGB wrote"):
            reader.poll()
    assert reader.position == stopped_at and reader.damaged == 0


def read_apart(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The payloads the reader takes apart from its window (`LogReader._read_apart`), as it takes them."""
    taken: list[bytes] = []
    decode_apart = logformat.decode_apart

    def counted(prefix: bytes | memoryview, payload: bytes) -> logformat.Record | None:
        record = decode_apart(prefix, payload)
        if record is not None:
            taken.append(payload)
        return record

    monkeypatch.setattr(logformat, "decode_apart", counted)
    return taken


def test_large_records_the_window_ends_inside_are_read_apart_and_say_where_they_lie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = read_apart(monkeypatch)
    bodies = [bytes([n]) * (APART_BYTES + n * 150_000) for n in range(5)]
    w = writer(tmp_path)
    w.append(Kind.REQUEST_HEAD, EXCHANGE, b"x" * (READ_BYTES - APART_BYTES))  # the first body starts late in a window
    for body in bodies:
        w.append(Kind.REQUEST_BODY, EXCHANGE, body)
        w.append(Kind.END, EXCHANGE, b"{}")
    w.close()
    reader = LogReader(tmp_path, Position(0, 0))
    reads = [read for read in reader.poll(budget=1 << 30) if read.record.kind is not Kind.WRITER_START]
    assert [read.record.payload for read in reads] == [b"x" * (READ_BYTES - APART_BYTES)] + [
        payload for body in bodies for payload in (body, b"{}")
    ]
    assert positions_hold(reads) and taken and set(taken) <= set(bodies)
    assert all(type(read.record.payload) is bytes for read in reads)


def test_a_large_record_still_being_written_is_read_once_it_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = read_apart(monkeypatch)
    w = writer(tmp_path)
    w.append(Kind.REQUEST_HEAD, EXCHANGE, b"head")
    w.close()
    ((_, first),) = segments(tmp_path)
    body = os.urandom(3 * APART_BYTES)
    record = logformat.encode(Kind.REQUEST_BODY, EXCHANGE, 1, body)
    reader = LogReader(tmp_path, Position(0, 0))
    with first.open("ab") as segment:
        segment.write(record[: APART_BYTES // 2])
        segment.flush()
        assert payloads(reader) == [b"head"] and reader.at_end
        segment.write(record[APART_BYTES // 2 :])
    assert payloads(reader) == [body] and taken == [body] and reader.torn == 0


def test_a_large_damaged_or_newer_record_is_refused_as_a_small_one_is(tmp_path: Path) -> None:
    """Both start late in a window, so the reader would take them apart were they whole, intact and known."""
    filler = b"x" * (READ_BYTES - APART_BYTES // 2)
    w = writer(tmp_path)
    w.append(Kind.REQUEST_HEAD, EXCHANGE, filler)
    w.append(Kind.REQUEST_BODY, EXCHANGE, b"y" * 2 * APART_BYTES)
    w.close()
    ((_, first),) = segments(tmp_path)
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    later = writer(tmp_path)
    later.append(Kind.REQUEST_HEAD, EXCHANGE, filler)
    later.close()
    (_, second), *_ = segments(tmp_path)[1:]
    with second.open("ab") as segment:
        segment.write(future_record(max(Kind) + 1, b"z" * 2 * APART_BYTES))
    reader = LogReader(tmp_path, Position(0, 0))
    assert payloads(reader) == [filler, filler] and reader.damaged == 1
    with pytest.raises(logformat.NewerLog, match=f"record kind {max(Kind) + 1}"):
        reader.poll()


def test_a_reader_at_a_deleted_segment_goes_on_with_the_next(tmp_path: Path) -> None:
    w = writer(tmp_path, segment_bytes=1)
    for n in range(3):
        w.append(Kind.REQUEST_BODY, EXCHANGE, str(n).encode())
    w.close()
    checkpoint.delete_published(tmp_path, Position(2, 0))
    assert payloads(LogReader(tmp_path, Position(0, 0))) == [b"2"]


def test_the_checkpoint_is_the_oldest_unfinished_exchange() -> None:
    at = Position(3, 900)
    assert checkpoint.safe_position([], at) == at
    assert checkpoint.safe_position([Position(2, 50), Position(1, 700), Position(3, 10)], at) == Position(1, 700)


def test_the_checkpoint_survives_and_a_damaged_one_means_the_start(tmp_path: Path) -> None:
    assert checkpoint.load(tmp_path) == Position(0, 0)
    checkpoint.save(tmp_path, Position(4, 1234))
    assert checkpoint.load(tmp_path) == Position(4, 1234)
    (tmp_path / checkpoint.FILE_NAME).write_bytes(b"{not json")
    assert checkpoint.load(tmp_path) == Position(0, 0)


def test_open_exchanges_are_saved_in_the_checkpoints_own_atomic_write_and_a_damaged_list_means_the_start(
    tmp_path: Path,
) -> None:
    held = {bytes(range(16)): checkpoint.Held("mcp", Position(5, 40), b'{"next_sequence":7}')}
    checkpoint.save(tmp_path, Position(4, 1234), held)
    assert checkpoint.load_open(tmp_path) == (Position(4, 1234), held)
    assert checkpoint.load(tmp_path) == Position(4, 1234)
    assert stat.S_IMODE((tmp_path / checkpoint.FILE_NAME).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.FILE_NAME], "no temporary file left beside it"
    (tmp_path / checkpoint.FILE_NAME).write_bytes(b'{"seq": 4, "offset": 1234, "open": [{"exchange": "zz"}]}')
    assert checkpoint.load_open(tmp_path) == (Position(0, 0), {}), "the whole log again: duplicates, never a loss"


def test_a_saved_state_that_cannot_be_restored_costs_a_read_of_the_whole_log() -> None:
    policy = RedactionPolicy(BUILTIN_RULES, frozenset(), b"")
    held = {bytes(16): checkpoint.Held("mcp", Position(5, 40), b'{"head": {}}')}
    assemblers, position, kept = worker.reopened(policy, Position(5, 0), held)
    assert (position, kept) == (Position(0, 0), {}) and all(a.open_count == 0 for a in assemblers)
    api = {bytes(16): checkpoint.Held("api", Position(5, 40), b"{}")}
    assert worker.reopened(policy, Position(5, 0), api)[1:] == (Position(0, 0), {}), "API exchanges are never saved open"


def test_only_segments_wholly_before_the_checkpoint_are_deleted(tmp_path: Path) -> None:
    w = writer(tmp_path, segment_bytes=1)
    for n in range(4):
        w.append(Kind.REQUEST_BODY, EXCHANGE, str(n).encode())
    w.close()
    assert checkpoint.delete_published(tmp_path, Position(2, 7)) == 2
    assert [seq for seq, _ in segments(tmp_path)] == [2, 3, 4]


def test_a_held_record_is_written_in_order_with_the_next_one_or_at_close(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.append(Kind.REQUEST_HEAD, EXCHANGE, b"head", hold=True)
    reader = LogReader(tmp_path, Position(0, 0))
    assert payloads(reader) == [], "held: not on disk yet"
    w.append(Kind.REQUEST_BODY, EXCHANGE, b"body")
    assert payloads(reader) == [b"head", b"body"]
    w.append(Kind.REQUEST_END, EXCHANGE, b"end", hold=True)
    w.close()
    assert payloads(reader) == [b"end"]


def test_held_bytes_count_against_the_cap(tmp_path: Path) -> None:
    w = writer(tmp_path, max_bytes=200)
    assert w.append(Kind.REQUEST_HEAD, EXCHANGE, b"h" * 100, hold=True)
    assert not w.append(Kind.REQUEST_BODY, EXCHANGE, b"b" * 100)
    assert w.refused_records == 1
    w.close()


def test_many_held_records_are_written_before_one_writev_grows_too_long(tmp_path: Path) -> None:
    w = writer(tmp_path)
    for n in range(1500):  # 3000 buffers: past IOV_MAX if they all waited for one writev
        w.append(Kind.REQUEST_HEAD, EXCHANGE, str(n).encode(), hold=True)
    reader = LogReader(tmp_path, Position(0, 0))
    assert 0 < len(payloads(reader)) < 1500, "some written already, the rest still held"
    w.append(Kind.END, EXCHANGE, b"end")
    w.close()
    assert payloads(LogReader(tmp_path, Position(0, 0))) == [str(n).encode() for n in range(1500)] + [b"end"]


async def test_the_interval_fsync_runs_while_any_user_of_a_shared_log_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[LogWriter] = []
    monkeypatch.setattr(LogWriter, "sync", lambda self: syncs.append(self))
    settings = LogSettings(tmp_path, fsync=FsyncPolicy.INTERVAL, fsync_interval=0.001)
    async with capture_log(settings) as api:
        mcp_block = capture_log(settings)
        mcp = await mcp_block.__aenter__()
    assert mcp is api  # one writer per directory: two would race for segment names
    syncs.clear()
    await asyncio.sleep(0.05)
    assert syncs  # the block that opened the log has ended, and the other still gets its fsyncs
    await mcp_block.__aexit__(None, None, None)
    syncs.clear()
    await asyncio.sleep(0.05)
    assert syncs == []


def test_exchange_ids_are_version_4_uuids_and_their_text_parses_to_the_uuids_bytes() -> None:
    ids = [exchange_id() for _ in range(200)]
    assert len(set(ids)) == 200
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
        assert id_bytes(text) == parsed.bytes
    with pytest.raises(ValueError):
        id_bytes("exchange-1")
    with pytest.raises(ValueError):
        id_bytes("0123")


def test_the_readers_window_keeps_unread_bytes_in_order_and_lets_a_grown_buffer_go(tmp_path: Path) -> None:
    data = os.urandom(ARENA_KEPT + 2 * READ_BYTES)
    path = tmp_path / "segment"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        window, start = Window(), ARENA_KEPT + 7
        end = window.read(fd, ARENA_KEPT + READ_BYTES, 0)
        window.drop(start)  # most of a grown buffer read: what is left moves to a buffer of its own
        assert bytes(window.view) == data[start:end]
        end += window.read(fd, READ_BYTES, end)
        window.drop(100)  # a little read: what is left moves to the front
        assert bytes(window.view) == data[start + 100 : end] and end == len(data)
        assert window.read(fd, READ_BYTES, end) == 0
        window.clear()
        assert len(window.view) == 0
    finally:
        os.close(fd)
