"""How far the worker has published: a position in the capture log, moved only after Kafka's acks.

Exchanges interleave in the log, so the checkpoint is the start of the oldest
exchange not yet wholly acknowledged (`safe_position`); everything before it is
on Kafka, and segments wholly before it are deleted. A restarted worker reads
from the checkpoint again: records of exchanges that began before it are
skipped, and exchanges that began after it but were already published are
published again with the same event ids, which consumers ignore.

An exchange that stays open for hours (an MCP GET stream, a
``subscriptions/listen`` POST) need not hold the checkpoint at its head: once
every event built from it so far is acknowledged, the worker saves its small
state (`Held`: which assembler's, the position the log had been read up to,
the state's JSON) in the same file, written in the same atomic replace, and
the checkpoint may move up to that position. A restarted worker opens those
exchanges again from their states and reads on from the checkpoint, skipping
each one's records before its own position (already in its state).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import orjson

from proxy.logreader import Position
from proxy.logwriter import segments

FILE_NAME = "checkpoint"


def safe_position(unfinished: Iterable[Position], read_up_to: Position) -> Position:
    """The earliest start among exchanges not yet acknowledged, else where reading has got to."""
    return min(unfinished, default=read_up_to)


class Held(NamedTuple):
    """An open exchange's state, saved beside the checkpoint: taken when the log had been read up to `through`
    and every event built from the exchange until then was acknowledged."""

    assembler: str
    through: Position
    state: bytes  # JSON


def load(directory: Path) -> Position:
    """The saved position; the log's start when there is none or it cannot be read."""
    return load_open(directory)[0]


def load_open(directory: Path) -> tuple[Position, dict[bytes, Held]]:
    """The saved position and the open exchanges saved with it; the log's start, and none, when there is
    none or it cannot be read (reading the whole log again only repeats events, which consumers drop)."""
    try:
        saved = orjson.loads((directory / FILE_NAME).read_bytes())
        held = {
            bytes.fromhex(entry["exchange"]): Held(
                str(entry["assembler"]), Position(*entry["through"]), orjson.dumps(entry["state"])
            )
            for entry in saved.get("open", [])
        }
        return Position(int(saved["seq"]), int(saved["offset"])), held
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return Position(0, 0), {}


def save(directory: Path, position: Position, held: Mapping[bytes, Held] | None = None) -> None:
    """Atomically, so a kill leaves the old checkpoint or the new one, never half of one."""
    open_exchanges = [
        {"exchange": exchange.hex(), "assembler": h.assembler, "through": list(h.through), "state": orjson.Fragment(h.state)}
        for exchange, h in (held or {}).items()
    ]
    temporary = directory / f".{FILE_NAME}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        data = orjson.dumps({"seq": position.seq, "offset": position.offset, "open": open_exchanges})
        while data:
            data = data[os.write(fd, data) :]
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
