"""The disk spool on its own: order, durability across reopen, damage, the byte cap."""

from __future__ import annotations

import os
from pathlib import Path

from proxy.spool import POSITION_FILE, REJECTED_DIR, Spool, read_record_file, record_size


def records(n: int, size: int = 100, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(f"key-{i % 3}".encode(), f"value-{i}-".encode().ljust(size, b"x")) for i in range(start, start + n)]


def fill(spool: Spool, items: list[tuple[bytes, bytes]]) -> None:
    for key, value in items:
        assert spool.append(key, value)
    spool.sync()


def read_all(spool: Spool, max_records: int = 7) -> list[tuple[bytes, bytes]]:
    """Read and commit batch by batch, as the publisher's drainer does."""
    out: list[tuple[bytes, bytes]] = []
    while True:
        batch = spool.read(max_records, 1 << 30)
        spool.commit(batch.end)
        if not batch.records:
            return out
        out += [(r.key, r.value) for r in batch.records]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    items = records(50)
    fill(spool, items)
    assert len(segment_files(tmp_path)) > 5
    assert read_all(spool) == items
    assert spool.is_empty and spool.pending_bytes == 0


def test_delivered_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    fill(spool, records(50))
    read_all(spool)
    assert segment_files(tmp_path) == []
    fill(spool, records(3, start=50))
    assert read_all(spool) == records(3, start=50)


def test_position_survives_reopen_and_new_writes_go_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    items = records(30)
    fill(spool, items)
    batch = spool.read(12, 1 << 30)
    spool.commit(batch.end)
    spool.close()

    reopened = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    fill(reopened, records(5, start=30))
    assert read_all(reopened) == items[12:] + records(5, start=30)
    assert (tmp_path / POSITION_FILE).exists()


def test_uncommitted_reads_are_read_again_after_rewind(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    items = records(10)
    fill(spool, items)
    first = spool.read(4, 1 << 30)
    spool.commit(first.records[1].end)
    spool.read(4, 1 << 30)
    spool.rewind()
    assert read_all(spool) == items[2:]


def test_torn_tail_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    items = records(10)
    fill(spool, items)
    spool.close()
    (segment,) = segment_files(tmp_path)
    with open(segment, "r+b") as f:
        f.truncate(os.path.getsize(segment) - 30)

    reopened = Spool(tmp_path, max_bytes=1 << 20)
    fill(reopened, records(2, start=10))
    assert read_all(reopened) == items[:9] + records(2, start=10)
    assert reopened.corrupt_records == 1


def test_flipped_byte_skips_only_that_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    items = records(5)
    fill(spool, items)
    spool.close()
    (segment,) = segment_files(tmp_path)
    data = bytearray(segment.read_bytes())
    data[record_size(*items[0]) * 2 + 50] ^= 0xFF  # inside the third record's value
    segment.write_bytes(bytes(data))

    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert read_all(reopened) == items[:2] + items[3:]
    assert reopened.corrupt_records == 1


def test_cap_refuses_newest_until_delivery_makes_room(tmp_path: Path) -> None:
    size = record_size(*records(1)[0])
    spool = Spool(tmp_path, max_bytes=size * 20)
    accepted = [spool.append(k, v) for k, v in records(25)]
    assert accepted == [True] * 20 + [False] * 5
    assert spool.full
    spool.commit(spool.read(1, 1 << 30).end)
    assert spool.full and not spool.append(*records(1, start=99)[0])  # 19 of 20: above 90%
    spool.commit(spool.read(1, 1 << 30).end)
    assert not spool.full
    assert spool.append(*records(1, start=99)[0])


def test_rejected_record_is_kept_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    path = spool.reject("exchange-e1-event-v1", b"session", b"v" * 5000)
    assert path.parent == tmp_path / REJECTED_DIR
    assert read_record_file(path) == (b"session", b"v" * 5000)
    assert spool.is_empty
