"""Capture-log records back into exchanges, and exchanges into events: the worker's pure core.

`Assembler.feed` takes records in log order and returns the events they
complete: the request event at its response head (or, when the upstream
answered before the body ended, at its request-end record; else at its end), the response event at the end. Records of an exchange whose
head was never seen are skipped: it began before the checkpoint and was
published whole before it. A writer-start record means the relay restarted, so
exchanges still open then will never end: they are closed with what they have
(`capture_interrupted`). An exchange that ended before its request body did
(the upstream answered first) keeps the body that came, its response flagged
`capture_incomplete`. The request event says itself whether its body is all the
client sent (`body_complete`): not when the exchange ended first, when the body
was refused for its size (recorded empty), or when the body's request-end record
never came (the log was full mid-body and refused it, or the relay died before
it): the event is then built at the exchange's end with what the log holds, and
nothing vouches for the rest. A log from before request-end records has no such
facts, and its bodies count as whole. `open_starts` is where each open exchange
began, for the checkpoint. The MCP Streamable HTTP relay's requests begin with an
MCP_REQUEST_HEAD instead, so this assembler skips them like any exchange whose
head it never saw; proxy/mcp/assemble.py builds their events.

`OpenExchanges` is what both assemblers share: the open exchanges by id, the
records that open, skip or interrupt them, and the hook by which the worker
saves an open exchange's state beside the checkpoint (`snapshot`, `restore`)
so that the checkpoint may pass its head. An API exchange is never saved: its
state is its whole response so far (the response event carries the body), so
it holds the checkpoint at its head until it ends, which bounds it by the
upstream's answer; an MCP stream's state is small (proxy/mcp/assemble.py).
"""

from __future__ import annotations

import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import orjson

from proxy.capture import (
    Ending,
    RedactionPolicy,
    RequestFacts,
    RequestRecord,
    ResponseRecorder,
    request_event,
    response_event,
)
from proxy.logformat import Kind, Record
from proxy.logreader import Position, Read
from schemas.codec import EXCHANGE

log = logging.getLogger(__name__)

INTERRUPTED = ("capture_interrupted", "KGB proxy stopped before this exchange ended; the response is what it relayed until then")
INCOMPLETE = ("capture_incomplete", "KGB proxy: the capture log was full (KGB_SPOOL_MAX_BYTES); the body is cut short")
PARTIAL = (
    "capture_incomplete",
    "KGB proxy: the exchange ended before its request body did; the request body is what came until then",
)


@dataclass(frozen=True, slots=True)
class Built:
    """An event ready to encode; `start` is where its exchange begins in the log, `last` marks its final event,
    `schema` says which topic's (an MCP relay's exchange makes `kgb.mcp` events, proxy/mcp/assemble.py)."""

    exchange: bytes
    start: Position
    event: dict[str, Any]
    last: bool
    schema: str = EXCHANGE


@dataclass
class Pending:
    start: Position
    request: RequestRecord
    body: list[bytes] = field(default_factory=list)
    facts: RequestFacts | None = None
    recorder: ResponseRecorder | None = None
    last_at: int = 0
    body_open: bool = False  # a REQUEST_END is to come: the body may still grow after the response head
    body_partial: bool = False  # the REQUEST_END said the exchange ended first (the upstream answered early)
    body_discarded: bool = False  # the REQUEST_END said the body was refused for its size: recorded empty
    resume: Position = Position(0, 0)

    @property
    def body_complete(self) -> bool:
        """The body is all the client sent: its REQUEST_END came (still open, it never will: the log refused
        it or the relay died), and said the body neither was cut by the exchange's end nor discarded."""
        return not (self.body_open or self.body_partial or self.body_discarded)


def request_of(exchange: bytes, head: dict[str, Any]) -> RequestRecord:
    """A request head's JSON (proxy.tap.request_head) as the record the relay built, body still to come."""
    return RequestRecord(
        method=head["method"],
        path=head["path"],
        query=head["query"],
        http_version=head["http_version"],
        headers=[(name, value) for name, value in head["headers"]],
        body=b"",
        received_at=head["received_at"],
        exchange_id=str(uuid.UUID(bytes=exchange)),
        key_fingerprint=head["key_fingerprint"],
    )


def ending(record: Record) -> Ending:
    return ending_of(orjson.loads(record.payload), record.at_ns)


def ending_of(end: dict[str, Any], at_ns: int) -> Ending:
    """An END record's JSON, already read (the MCP assembler reads a field of its own from it)."""
    error = end["proxy_error"]
    if error is None and not end.get("captured_whole", True):
        error = INCOMPLETE
    return Ending(
        client_disconnected=end["client_disconnected"],
        upstream_complete=end["upstream_complete"],
        ttfb_ms=end["ttfb_ms"],
        duration_ms=end["duration_ms"],
        ended_at=at_ns // 1000,
        proxy_error=tuple(error) if error else None,
    )


class Open(Protocol):
    """What the shared bookkeeping reads of an open exchange; `resume` is where a restored one's records
    start to count (those before it are in its saved state already)."""

    start: Position
    request: RequestRecord
    last_at: int
    resume: Position


P = TypeVar("P", bound=Open)


class OpenExchanges(ABC, Generic[P]):
    """The open exchanges of one kind, from the record that opens one (`head`) to its end."""

    name: ClassVar[str]  # which assembler a saved state belongs to
    head: ClassVar[Kind]

    def __init__(self, policy: RedactionPolicy) -> None:
        self._policy = policy
        self._open: dict[bytes, P] = {}

    @property
    def open_count(self) -> int:
        return len(self._open)

    def open_starts(self) -> Iterator[tuple[bytes, Position]]:
        """Each open exchange, and where it began."""
        return ((exchange, pending.start) for exchange, pending in self._open.items())

    def feed(self, read: Read) -> list[Built]:
        record = read.record
        if record.kind is Kind.WRITER_START:
            return self.interrupt_all(read.at)
        if record.kind is self.head:
            self._open[record.exchange] = self._opened(read)
            return []
        pending = self._open.get(record.exchange)
        if pending is None or read.at < pending.resume:
            return []
        pending.last_at = record.at_ns
        return self._take(record, pending)

    def interrupt_all(self, at: Position) -> list[Built]:
        """Close every exchange open at `at` with what it has: its relay is gone. One restored from a state
        taken past `at` began after that relay start (its state says it was open later)."""
        built: list[Built] = []
        for exchange, pending in list(self._open.items()):
            if at < pending.resume:
                continue
            ended_at = pending.last_at // 1000
            duration_ms = (ended_at - pending.request.received_at) / 1000
            built += self._close(exchange, Ending(False, False, None, duration_ms, ended_at, INTERRUPTED))
        return built

    def snapshot(self, exchange: bytes) -> dict[str, Any] | None:
        """An open exchange's state as JSON, for the worker to save beside the checkpoint; None when it
        cannot be saved now (then its head holds the checkpoint). By default none can."""
        return None

    def restore(self, exchange: bytes, state: dict[str, Any], resume: Position) -> None:
        """Open `exchange` again from a `snapshot` taken when the log had been read up to `resume`."""
        raise ValueError(f"{self.name} exchanges are never saved open")

    @abstractmethod
    def _opened(self, read: Read) -> P: ...

    @abstractmethod
    def _take(self, record: Record, pending: P) -> list[Built]:
        """A record of an open exchange, past its head."""

    @abstractmethod
    def _close(self, exchange: bytes, how: Ending) -> list[Built]: ...


class Assembler(OpenExchanges[Pending]):
    name, head = "api", Kind.REQUEST_HEAD

    def _opened(self, read: Read) -> Pending:
        head = orjson.loads(read.record.payload)
        request = request_of(read.record.exchange, head)
        return Pending(read.at, request, last_at=read.record.at_ns, body_open=head.get("body_end", False))

    def _take(self, record: Record, pending: Pending) -> list[Built]:
        if record.kind is Kind.RESPONSE_CHUNK and pending.facts is not None:  # most records: the request is built
            if pending.recorder is not None:
                pending.recorder.feed(record.payload)
            return []
        if record.kind is Kind.REQUEST_BODY:
            pending.body.append(record.payload)
            return []
        if record.kind is Kind.REQUEST_END:
            end = orjson.loads(record.payload)
            pending.body_discarded = end["discarded"]
            if pending.body_discarded:
                pending.body = []
            pending.body_partial = end.get("partial", False)
            pending.body_open = False  # built at its response head, as ever, or now if that came first
            return [] if pending.recorder is None else self._request_done(record.exchange, pending, last=False)
        if record.kind is Kind.END:
            how = ending(record)
            if pending.body_partial and how.proxy_error is None:
                how = replace(how, proxy_error=PARTIAL)
            return self._close(record.exchange, how)
        built = [] if pending.body_open else self._request_done(record.exchange, pending, last=False)
        if record.kind is Kind.RESPONSE_HEAD:
            head = orjson.loads(record.payload)
            pending.recorder = ResponseRecorder(pending.request, head["status"], [(n, v) for n, v in head["headers"]])
        elif record.kind is Kind.RESPONSE_CHUNK and pending.recorder is not None:
            pending.recorder.feed(record.payload)
        return built

    def _request_done(self, exchange: bytes, pending: Pending, *, last: bool) -> list[Built]:
        if pending.facts is not None:
            return []
        pending.request.body = b"".join(pending.body)
        pending.body = []
        event, pending.facts = request_event(pending.request, self._policy, body_complete=pending.body_complete)
        pending.request.body = b""  # in the event now; an open exchange holds only its response from here on
        return [Built(exchange, pending.start, event, last)]

    def _close(self, exchange: bytes, how: Ending) -> list[Built]:
        """The response event; an exchange with no response head in the log (the relay died first,
        or the log was full) has none, and its request event is its last."""
        pending = self._open.pop(exchange)
        if pending.recorder is None:
            return self._request_done(exchange, pending, last=True)
        built = self._request_done(exchange, pending, last=False)
        assert pending.facts is not None
        event = response_event(pending.request, pending.recorder.finish(how), pending.facts, self._policy)
        return [*built, Built(exchange, pending.start, event, last=True)]
