"""The relay's only capture work: append each exchange's raw material to the capture log.

Per exchange: a request head (credential headers already replaced, the key's
fingerprint computed from it, so no credential ever reaches the disk), the
request body in chunks as they arrive (each before it goes upstream: the relay
never holds a whole body) and a request-end record once the body is over, the
response head, each response chunk as it came, and an end record with how it
ended and its timings (a relayed answer's end leaves in one write with its last
chunk, before that chunk goes on: a client that leaves while the last bytes
drain is not told apart). Everything else (decoding,
SSE reassembly, body redaction, session parsing, Avro, Kafka) is the capture
worker's. The MCP Streamable HTTP relay appends its requests the same way,
their head of its own kind (`Tap.request` with `mcp`), and logs a compressed event stream's
chunks decoded (`Exchange.decoded_chunks`), so the worker can save a long stream's state. Appends are plain
writes to the page cache; a chunk is appended before it is sent on, so
whatever reached a client is in the log.

When the log is full the exchange is still relayed, only not captured: a
request is admitted whole (its head and declared length) or not at all; a body
without a declared length, or a response, cut short by the cap skips its later
chunks, and its end is written anyway (it is small, and says the capture is
incomplete) so the worker does not wait for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import struct
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from common.tasks import Shared
from proxy.capture import RequestRecord, uuid_text, versioned
from proxy.logformat import PREFIX, Kind
from proxy.logwriter import FsyncPolicy, LogSettings, LogWriter, keep_synced
from proxy.redact import REDACTED, SECRET_HEADERS, credential, fingerprint
from schemas.codec import MCP, single_object_encoder
from schemas.errors import SchemaError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024  # request bodies go to the log in records of at most this
KEY_LENGTH = struct.Struct(">H")  # an EVENT record: key length, key, value


@dataclass(frozen=True)
class HeaderPolicy:
    """What the relay must do before the append: which headers lose their value, and the fingerprint key."""

    secret_names: frozenset[str]
    fingerprint_key: bytes

    @classmethod
    def of(cls, extra: Iterable[str], key: bytes) -> HeaderPolicy:
        return cls(SECRET_HEADERS | {name.lower() for name in extra}, key)


def scrubbed(headers: Iterable[tuple[str, str]], names: frozenset[str]) -> list[tuple[str, str]]:
    return [(name, REDACTED if name.lower() in names else value) for name, value in headers]


@functools.lru_cache(maxsize=256)
def key_fingerprint(secret: str, key: bytes) -> str:
    """One HMAC per key, not per request: a client sends the same key every time."""
    return fingerprint(secret, key)


def request_head(record: RequestRecord, policy: HeaderPolicy, mcp: dict[str, Any] | None = None) -> bytes:
    """The head's JSON; an MCP relay's request adds what its events need beside it (`mcp`)."""
    secret = credential(record.headers)
    head = {
        "method": record.method,
        "path": record.path,
        "query": record.query,
        "http_version": record.http_version,
        "headers": scrubbed(record.headers, policy.secret_names),
        "received_at": record.received_at,
        "key_fingerprint": key_fingerprint(secret, policy.fingerprint_key) if secret else None,
        "body_end": True,  # a REQUEST_END closes the body (logs written before it existed have none)
    }
    return orjson.dumps(head if mcp is None else head | {"mcp": mcp})


def exchange_id() -> str:
    """A random (version 4) UUID's text: the relay needs only the text, for its own log lines, and the log's 16 bytes."""
    return uuid_text(versioned(os.urandom(16), 4))


def id_bytes(exchange_id: str) -> bytes:
    """A UUID's text (``8-4-4-4-12`` hex digits) as its 16 bytes, as `uuid.UUID(...).bytes` gives them, parsed in one C call."""
    raw = bytes.fromhex(exchange_id.replace("-", ""))
    if len(raw) != 16:
        raise ValueError(f"not a UUID: {exchange_id!r}")
    return raw


def chunks(body: bytes, size: int = CHUNK_BYTES) -> Iterable[memoryview]:
    view = memoryview(body)
    return (view[start : start + size] for start in range(0, len(body), size))


@dataclass
class Exchange:
    """One exchange's appends; a refused append stops the rest, except the end."""

    tap: Tap
    id: bytes
    started_ns: int = field(default_factory=time.perf_counter_ns)
    first_byte_ns: int | None = None
    captured: bool = True
    headed: bool = False  # the request head made it into the log: only then does the end go there too
    body_bytes: int = 0
    body_over: bool = False  # its REQUEST_END is in the log: a piece read after it is not the request's
    ended: bool = False  # its END is in the log: nothing more is appended
    # set (by `decoded_chunks`) when the response's chunks go to the log decoded: the bytes that crossed, for its end
    crossed: int | None = None

    @property
    def label(self) -> str:
        return uuid_text(self.id)

    def _append(self, kind: Kind, payload: bytes | memoryview, *, hold: bool = False) -> None:
        if self.captured and not self.tap.writer.append(kind, self.id, payload, hold=hold):
            self.captured = False

    def body(self, data: bytes, *, hold: bool = False) -> None:
        """One piece of the request body, as it arrived, before it goes upstream (`hold`: a body already
        whole in memory may wait for the next record)."""
        if not data or self.body_over:
            return
        self.body_bytes += len(data)
        for piece in chunks(data) if len(data) > CHUNK_BYTES else (data,):
            self._append(Kind.REQUEST_BODY, piece, hold=hold)

    def body_end(self, *, discarded: bool = False, partial: bool = False) -> None:
        """The body is over; `discarded` (refused for its size) tells the worker to record it empty, `partial`
        that the exchange ended before the body did (the upstream answered early, the client left), so it holds what came."""
        if self.body_over:
            return
        self.body_over = True
        end = {"body_bytes": self.body_bytes, "discarded": discarded, "partial": partial}
        self._append(Kind.REQUEST_END, orjson.dumps(end), hold=True)

    def response_head(self, status: int, headers: list[tuple[str, str]], *, with_chunk: bool = False) -> None:
        """`with_chunk`: the client gets the head only with a chunk appended next, so the head may wait for it."""
        head = {"status": status, "headers": scrubbed(headers, self.tap.policy.secret_names)}
        if self.crossed is not None:
            head["decoded"] = True
        self._append(Kind.RESPONSE_HEAD, orjson.dumps(head), hold=with_chunk)

    def decoded_chunks(self) -> None:
        """The response's chunks go to the log decoded (an MCP event stream, proxy/mcp/http.py), called before
        its head: the head says so, and the end gives the size of the bytes that crossed."""
        self.crossed = 0

    def chunk(self, data: bytes, *, hold: bool = False, crossed: int | None = None) -> None:
        """`hold`: the end comes next, before the chunk goes on, so the two leave in one write. `crossed`: the
        size of the bytes that crossed, when `data` is their decoding."""
        if self.first_byte_ns is None:
            self.first_byte_ns = time.perf_counter_ns()
        if self.crossed is not None:
            self.crossed += len(data) if crossed is None else crossed
        self._append(Kind.RESPONSE_CHUNK, data, hold=hold)

    def end(self, *, client_disconnected: bool, upstream_complete: bool, proxy_error: tuple[str, str] | None = None) -> None:
        """The exchange's last record; only the first call counts (the relay ends an exchange before its
        last bytes go on, and again, to no effect, on its way out)."""
        if not self.headed or self.ended:
            return
        self.ended = True
        self.body_end(partial=True)  # no-op for a body that ended; one the upstream answered before it ended, flagged
        now = time.perf_counter_ns()
        ending = {
            "client_disconnected": client_disconnected,
            "upstream_complete": upstream_complete,
            "ttfb_ms": None if self.first_byte_ns is None else (self.first_byte_ns - self.started_ns) / 1e6,
            "duration_ms": (now - self.started_ns) / 1e6,
            "proxy_error": proxy_error,
            "captured_whole": self.captured,
        }
        if self.crossed is not None:
            ending["response_bytes"] = self.crossed
        self.tap.writer.append(Kind.END, self.id, orjson.dumps(ending), force=True)
        self.tap.writer.exchange_ended()


@dataclass
class Tap:
    writer: LogWriter
    policy: HeaderPolicy

    def request(self, record: RequestRecord, mcp: dict[str, Any] | None = None) -> Exchange:
        """Append a request whose body is already whole (`record.body`); the `Exchange` takes the rest. With
        `mcp`, it is a Streamable HTTP request to the MCP relay (`proxy.mcp.assemble` reads it back)."""
        exchange = self.streaming(record, len(record.body), mcp)
        exchange.body(record.body)
        exchange.body_end()
        return exchange

    def streaming(self, record: RequestRecord, declared: int | None, mcp: dict[str, Any] | None = None) -> Exchange:
        """Append the request head; its body follows through `Exchange.body` and `body_end`. The log
        admits the head and the `declared` body length together or neither: never a request cut short."""
        exchange = Exchange(self, id_bytes(record.exchange_id))
        head = request_head(record, self.policy, mcp)
        body = declared or 0
        if not self.writer.admit(len(head) + body + (3 + body // CHUNK_BYTES) * PREFIX):
            exchange.captured = False
            return exchange
        exchange._append(Kind.REQUEST_HEAD if mcp is None else Kind.MCP_REQUEST_HEAD, head, hold=True)
        exchange.headed = exchange.captured
        return exchange


class McpSink:
    """The WebSocket relay's and the stdio shim's events, built in the relay (they are small and per
    message), encoded single-object and appended whole; the worker reframes and publishes them to
    KGB_MCP_TOPIC. (The Streamable HTTP relay appends raw material through the `Tap` instead.)"""

    def __init__(self, writer: LogWriter) -> None:
        self._writer = writer
        self._encoder = single_object_encoder(MCP)

    def submit(self, event: dict[str, Any]) -> None:
        try:
            value = self._encoder.encode(event)
        except SchemaError as exc:
            log.error("MCP event dropped, it does not fit the schema: connection %s: %s", event.get("connection_id"), exc)
            return
        record = KEY_LENGTH.pack(len(key := event["session_key"].encode())) + key + value
        self._writer.append(Kind.EVENT, id_bytes(event["event_id"]), record)


@dataclass
class _Open:
    writer: LogWriter
    users: int
    syncing: Shared


_OPEN: dict[Path, _Open] = {}


@contextlib.asynccontextmanager
async def capture_log(settings: LogSettings) -> AsyncIterator[LogWriter]:
    """The process's one writer for a log directory (the API and MCP apps share it: two writers
    would race for segment names), with its interval fsync running while anyone uses it."""
    shared = _OPEN.get(settings.directory)
    if shared is None:
        shared = _OPEN[settings.directory] = _Open(LogWriter(settings), 0, Shared(f"fsync {settings.directory}"))
    interval = settings.fsync is FsyncPolicy.INTERVAL
    shared.users += 1
    try:
        async with shared.syncing.use(functools.partial(keep_synced, shared.writer)) if interval else contextlib.nullcontext():
            yield shared.writer
    finally:
        shared.users -= 1
        if shared.users == 0:
            del _OPEN[settings.directory]
            shared.writer.close()
