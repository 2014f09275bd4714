"""How far the worker has published: a position in the capture log, moved only after Kafka's acks.

Exchanges interleave in the log, so the checkpoint is the start of the oldest
exchange not yet wholly acknowledged (`safe_position`); everything before it is
on Kafka, and segments wholly before it are deleted. A restarted worker reads
from the checkpoint again: records of exchanges that began before it are
skipped, and exchanges that began after it but were already published are
published again with the same event ids, which consumers ignore.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import orjson

from proxy.logreader import Position
from proxy.logwriter import segments

FILE_NAME = "checkpoint"


def safe_position(unfinished: Iterable[Position], read_up_to: Position) -> Position:
    """The earliest start among exchanges not yet acknowledged, else where reading has got to."""
    return min(unfinished, default=read_up_to)


def load(directory: Path) -> Position:
    """The saved position; the log's start when there is none or it cannot be read."""
    try:
        saved = orjson.loads((directory / FILE_NAME).read_bytes())
        return Position(int(saved["seq"]), int(saved["offset"]))
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return Position(0, 0)


def save(directory: Path, position: Position) -> None:
    """Atomically, so a kill leaves the old checkpoint or the new one, never half of one."""
    temporary = directory / f".{FILE_NAME}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, orjson.dumps({"seq": position.seq, "offset": position.offset}))
    finally:
        os.close(fd)
    os.replace(temporary, directory / FILE_NAME)


def published_segments(directory: Path, position: Position) -> list[Path]:
    """Segments wholly before `position`: everything in them is on Kafka."""
    return [path for seq, path in segments(directory) if seq < position.seq]


def delete_published(directory: Path, position: Position) -> int:
    deleted = 0
    for path in published_segments(directory, position):
        try:
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            continue
    return deleted


class Behind(NamedTuple):
    """How far the log runs past a position: what the worker has yet to get acknowledged, and the whole log."""

    bytes: int  # past the position
    segments: int  # the position's segment and every later one
    spool_bytes: int  # in every segment, published ones not yet deleted included


def behind(directory: Path, position: Position) -> Behind:
    past = count = total = 0
    for seq, path in segments(directory):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue  # deleted meanwhile
        total += size
        if seq >= position.seq:
            count += 1
            past += size - position.offset if seq == position.seq else size
    return Behind(max(past, 0), count, total)


def backlog(directory: Path) -> int:
    """Bytes in the log past the saved checkpoint."""
    return behind(directory, load(directory)).bytes
