"""The capture log's record framing: what the relay appends and the worker reads back.

One record on disk::

    length u32 | crc32 u32 | kind u8 | exchange id 16 bytes | at_ns u64 | payload

`length` counts everything after the crc; the crc covers the same bytes, so a
record torn by a kill (or damaged on disk) is recognised and skipped, never
misread. Heads and ends carry JSON, chunks the raw bytes as they crossed the
wire. Kinds are only ever added, never renumbered or changed, so a worker
reads every log an older relay wrote; a kind it does not know stops it (`NewerLog`). Everything is big-endian and fixed-size up front, so reading is one
`struct.unpack_from` and a slice.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from isal.isal_zlib import crc32  # zlib's CRC-32, computed ~7x faster (ISA-L): relay and worker checksum every body byte

HEADER = struct.Struct(">II")  # length, crc
FIXED = struct.Struct(">B16sQ")  # kind, exchange id, at_ns
PREFIX = HEADER.size + FIXED.size
WHOLE_PREFIX = struct.Struct(">IIB16sQ")  # both at once: one unpack per record read, not two
_LENGTH_AND_CRC, _SHORTEST = HEADER.size, FIXED.size  # plain ints: read per record, as an attribute each cost a lookup
# A record this long is damage, not data: no chunk the relay appends comes near it.
MAX_RECORD = 1 << 30


class Kind(enum.IntEnum):
    REQUEST_HEAD = 1  # JSON: method, path, query, version, headers (credentials already redacted), ...
    REQUEST_BODY = 2  # raw bytes of the request body, in order, appended as they arrive
    RESPONSE_HEAD = 3  # JSON: status, headers
    RESPONSE_CHUNK = 4  # raw bytes of the response body as the upstream sent them
    END = 5  # JSON: how the exchange ended (client left, upstream complete, proxy error, timings)
    EVENT = 6  # a finished MCP event, Avro already: key length u16, key, value (proxy/mcp/events.py)
    WRITER_START = 7  # a writer (re)started: exchanges open before it will never end
    # A Streamable HTTP request to the MCP relay: REQUEST_HEAD's JSON plus "mcp" (server name, upstream URL,
    # whether its messages are recorded, client address); the rest of its exchange in the kinds above.
    MCP_REQUEST_HEAD = 8
    REQUEST_END = 9  # JSON: the request body ended (its size; whether it was discarded); a head saying
    # "body_end" is followed by one, and its request event waits for it (or the END)


KINDS = {kind.value: kind for kind in Kind}  # a dict lookup per record, not an enum call and its ValueError


class Record(NamedTuple):
    """One record read back; a named tuple, not a frozen dataclass: the worker builds one per record
    (an SSE answer is a record per event), and a frozen dataclass's `__init__` cost twice as much."""

    kind: Kind
    exchange: bytes  # 16 bytes, a UUID's
    at_ns: int  # wall clock, time.time_ns()
    payload: bytes


class Damaged(ValueError):
    """The bytes at this position are not a whole, intact record."""


class NewerLog(ValueError):
    """An intact record of a kind this code does not know: a newer KGB wrote the log. Never skipped as
    damage (that would lose the rest of the segment, and skipping only the record could build wrong
    events from the rest): the reader stops there, and the log waits for a worker that knows it."""


def prefix(kind: Kind, exchange: bytes, at_ns: int, payload: bytes | memoryview) -> bytes:
    """Everything in front of `payload`; written beside it (os.writev), so the payload is never copied."""
    fixed = FIXED.pack(kind, exchange, at_ns)
    return HEADER.pack(FIXED.size + len(payload), crc32(payload, crc32(fixed))) + fixed


def encode(kind: Kind, exchange: bytes, at_ns: int, payload: bytes) -> bytes:
    return prefix(kind, exchange, at_ns, payload) + payload


def decode_run(buffer: bytes | memoryview, offset: int, budget: int) -> tuple[list[Record], list[int]]:
    """The whole, intact records from `offset` on, until about `budget` bytes of them are read, and the offset
    after each; it stops before the first that is not one (`refuse` says why). The reader's per-record path,
    in one loop: a call, a returned tuple and a named tuple's Python-level `__new__` per record were a fifth
    of reading an SSE answer's sixty records (bench/build_bench.py)."""
    records: list[Record] = []
    ends: list[int] = []
    size, stop = len(buffer), offset + budget
    unpack, kinds, new = WHOLE_PREFIX.unpack_from, KINDS, tuple.__new__
    while offset < stop and size - offset >= PREFIX:
        length, crc, number, exchange, at_ns = unpack(buffer, offset)
        end = offset + _LENGTH_AND_CRC + length
        kind = kinds.get(number)
        if not _SHORTEST <= length <= MAX_RECORD or size < end or kind is None:
            break
        # the checksum is taken in one call over the bytes it covers where they lie (the fixed part and the
        # payload are contiguous, and CRC-32 chains: `prefix`'s two calls give the same), then the payload is
        # copied out once
        covered = buffer[offset + _LENGTH_AND_CRC : end]
        if crc32(covered) != crc:
            break
        records.append(new(Record, (kind, exchange, at_ns, bytes(covered[_SHORTEST:]))))
        ends.append(end)
        offset = end
    return records, ends


def decode_apart(prefix: bytes | memoryview, payload: bytes) -> Record | None:
    """A record whose `payload` was read into its own bytes, apart from the `PREFIX` bytes in front of it (the
    reader's path for a large one: no copy out of a buffer); None when they are not one whole, intact record
    of a kind this code knows, which `decode_run` and `refuse` then read and say why."""
    length, crc, number, exchange, at_ns = WHOLE_PREFIX.unpack_from(prefix)
    kind = KINDS.get(number)
    if kind is None or length != _SHORTEST + len(payload) or crc32(payload, crc32(prefix[_LENGTH_AND_CRC:PREFIX])) != crc:
        return None
    return Record(kind, exchange, at_ns, payload)


def refuse(buffer: bytes | memoryview, offset: int) -> None:
    """Why `decode_run` read no record at `offset`: returns when the buffer ends inside it (not written yet,
    or torn); raises `Damaged` when the bytes there cannot be a record, `NewerLog` for a kind this code does
    not know."""
    size = len(buffer)
    if size - offset < HEADER.size:
        return
    if not _SHORTEST <= HEADER.unpack_from(buffer, offset)[0] <= MAX_RECORD:
        raise _bad_length(buffer, offset)
    if size - offset < PREFIX:  # inside a record, whose length is at least FIXED.size
        return
    length, crc, number, _, _ = WHOLE_PREFIX.unpack_from(buffer, offset)
    end = offset + _LENGTH_AND_CRC + length
    if size < end:
        return
    if crc32(buffer[offset + _LENGTH_AND_CRC : end]) != crc:
        raise Damaged(f"checksum mismatch at offset {offset}")
    if number not in KINDS:
        raise NewerLog(
            f"record kind {number} at offset {offset} is not one this KGB knows (it knows 1 to {max(Kind)}): a newer KGB"
            " wrote this log; run that version's worker until the log is published (README: Downgrading)"
        )


def _bad_length(buffer: bytes | memoryview, offset: int) -> Damaged:
    return Damaged(f"record length {HEADER.unpack_from(buffer, offset)[0]} at offset {offset}")


def needed_at(buffer: bytes | memoryview, offset: int) -> int:
    """How many bytes the record at `offset` needs in all, as far as its header tells."""
    if len(buffer) - offset < HEADER.size:
        return HEADER.size
    return HEADER.size + HEADER.unpack_from(buffer, offset)[0]
