"""MCP traffic as events (schemas/mcp.avsc): JSON-RPC classification and event building, pure.

The WebSocket relay and the stdio shim hand what they forwarded to a
`Recorder`, which numbers it and stamps its time at once, in forwarding order,
and builds the event at the next turn of the loop (`proxy.capture.soon`),
after the bytes have gone on: a failure in here costs an event, never a
message. The loop runs callbacks in order, so events are built, and
submitted, in sequence order. The Streamable HTTP relay builds nothing: it
appends raw material to the capture log, and the capture worker builds the
same events from it (`proxy.mcp.assemble`) with a `Stamper`, the Recorder's
pure part. Event ids follow from the connection and the sequence, so an event
built twice is the same event.

One event per JSON-RPC message. A payload is redacted first and read after,
so a secret in an error message stays out too; a batch becomes one event per
element (each re-serialised compactly, with its index), and bytes that are
not JSON-RPC become one event flagged ``not_json`` or ``not_jsonrpc``, so
nothing that crossed the relay goes unrecorded.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from common.documents import parse_json
from common.jsonrpc import Part, parts_of, parts_of_parsed
from proxy.capture import RedactionPolicy, Submit, guarded, name_uuid, now_us, soon
from proxy.redact import redact_body, redact_headers, redact_json, redact_query

CLIENT_TO_UPSTREAM = "CLIENT_TO_UPSTREAM"
UPSTREAM_TO_CLIENT = "UPSTREAM_TO_CLIENT"
WEBSOCKET, STREAMABLE_HTTP, STDIO = "WEBSOCKET", "STREAMABLE_HTTP", "STDIO"

# The headers an MCP event keeps beside the message: the protocol's own (2025-11-25, 2026-07-28).
MCP_HEADERS = frozenset({"mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name", "last-event-id"})
MCP_PARAM_PREFIX = "mcp-param-"
PROTOCOL_VERSION_META = "io.modelcontextprotocol/protocolVersion"


def negotiated_version(value: Any) -> str | None:
    """The protocol version a message states: an initialize result's, or a request's ``_meta`` (2026-07-28)."""
    if not isinstance(value, dict):
        return None
    result, params = value.get("result"), value.get("params")
    if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str) and "serverInfo" in result:
        return result["protocolVersion"]
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(PROTOCOL_VERSION_META) if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def mcp_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The protocol's headers among an HTTP message's, in wire order."""
    return [(n, v) for n, v in headers if (low := n.lower()) in MCP_HEADERS or low.startswith(MCP_PARAM_PREFIX)]


def recorded_url(url: str, policy: RedactionPolicy) -> str:
    """An upstream URL as events may hold it: no user or password, credential-like query parameters redacted."""
    parsed = URL(url).with_user(None)
    query, _ = redact_query(parsed.raw_query_string, policy.rules)
    return str(parsed.with_query(None)) + (f"?{query}" if query else "")


@functools.lru_cache(maxsize=256)
def stateless_key(server: str, day: str, address: str | None, user_agent: str | None, key_fingerprint: str | None) -> str:
    """The session of HTTP traffic that carries no Mcp-Session-Id (2026-07-28, or a stateless server):
    one per server, UTC day and client (address, User-Agent, the credential's fingerprint), since the
    protocol names none. Cached: a client sends the same User-Agent and credential all day, so it is
    one hash per client and day, not one per request."""
    client = [server, day, address or "", user_agent or "", key_fingerprint or ""]
    return "stateless:" + hashlib.blake2b("\x00".join(client).encode(), digest_size=16).hexdigest()


# --- events: pure ----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """What a transport forwarded: one payload one way, with the HTTP or SSE context it came in."""

    direction: str
    payload: bytes
    headers: Sequence[tuple[str, str]] = ()
    sse: dict[str, Any] | None = None
    frame_type: str | None = None


def message_fields(message: Message, policy: RedactionPolicy) -> list[dict[str, Any]]:
    """The fields of each event a payload makes, one per message in it; JSON is redacted as
    it is read (escapes decoded), so a `\\u`-escaped secret does not reach the tables."""
    binary = message.frame_type == "BINARY"
    document = None if binary else parse_json(message.payload)
    redacted, fired = (
        redact_body(message.payload, policy.rules) if binary else redact_json(message.payload, policy.rules, document)
    )
    headers, header_fired = redact_headers(mcp_headers(message.headers), policy.extra_headers, policy.rules)
    common = {
        "direction": message.direction,
        "frame_type": message.frame_type,
        "payload_size": len(message.payload),
        "mcp_headers": headers,
        "sse": message.sse,
        "redactions": sorted(set(fired + header_fired)),
    }
    if binary:
        return [common | {"payload": redacted, "jsonrpc": [], "error_type": "binary_frame"}]
    return [common | _part_fields(part) for part in _parts(redacted, document, bool(fired))]


def _parts(redacted: bytes, document: Any, rewritten: bool) -> list[Part]:
    """The messages of a redacted payload: a JSON payload nothing was redacted in is the document already
    parsed (parsed once, not again); a rewritten one, or one that is not JSON, is read from its bytes."""
    return parts_of(redacted) if document is None or rewritten else parts_of_parsed(redacted, document)


def _part_fields(part: Part) -> dict[str, Any]:
    return {
        "payload": part.payload,
        "jsonrpc": [part.jsonrpc] if part.jsonrpc else [],
        "batch_index": part.batch_index,
        "batch_size": part.batch_size,
        "error_type": part.flag,
        "error_message": None if part.flag is None else _flag_message(part.flag),
        "protocol_version": negotiated_version(part.value),
    }


def _flag_message(flag: str) -> str:
    return "payload is not JSON" if flag == "not_json" else "payload is JSON but not a JSON-RPC 2.0 message"


@dataclass(frozen=True)
class Origin:
    """What every event of one WebSocket connection, shim run or HTTP request shares."""

    transport: str
    upstream: str
    upstream_url: str | None
    connection_id: str = field(default_factory=lambda: str(uuid.uuid4()))


Build = Callable[..., dict[str, Any] | list[dict[str, Any]]]

EVENT_NAMESPACE = uuid.UUID("6b6762c0-cafe-4e00-8000-6d6370657665")
_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes


def event_id(connection_id: str, sequence: int) -> str:
    """The same connection and position always give the same id: an event the capture worker builds
    again (it restarted before its checkpoint moved) is a duplicate that consumers drop."""
    return name_uuid(_NAMESPACE_BYTES, f"{connection_id}/{sequence}")


@dataclass
class Stamper:
    """The envelope of one connection's, shim run's or HTTP request's events: numbering in recording
    order, the session, the protocol version the messages negotiate. Pure: times come from the caller.

    `session_key` and `protocol_version` are read when an event is stamped, so
    a transport may learn them after it began (an HTTP request's session id
    comes with its response); `protocol_version` also follows what the messages
    negotiate (an initialize result, a request's ``_meta``).
    """

    origin: Origin
    session_key: str | None = None
    mcp_session_id: str | None = None
    protocol_version: str | None = None
    next_sequence: int = 0  # the next event's; the capture worker saves it with an open request's state

    def stamped(self, kind: str, at: int, built: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`built`'s fields (one event's, or one per message) as whole events of `kind`, occurring at `at`."""
        stamped = []
        for fields in built if isinstance(built, list) else [built]:
            self.protocol_version = fields.pop("protocol_version", None) or self.protocol_version
            event = self._envelope(kind, at)
            event.update(fields)  # in place: no third dict per event
            stamped.append(event)
        return stamped

    def _envelope(self, kind: str, at: int) -> dict[str, Any]:
        origin, sequence = self.origin, self.next_sequence
        self.next_sequence += 1
        return {
            "event_id": event_id(origin.connection_id, sequence),
            "connection_id": origin.connection_id,
            "upstream": origin.upstream,
            "upstream_url": origin.upstream_url,
            "sequence": sequence,
            "occurred_at": at,
            "kind": kind,
            "transport": origin.transport,
            "session_key": self.session_key or origin.connection_id,
            "mcp_session_id": self.mcp_session_id,
            "protocol_version": self.protocol_version,
        }


@dataclass(kw_only=True)
class Recorder(Stamper):
    """A live connection's or shim run's capture (the WebSocket relay, the stdio shim): its time
    stamped at once, in forwarding order; the rest of each event built at the next turn of the
    loop, after the bytes have gone on, and submitted. With `at_once` (the stdio shim, a process
    that can be killed between that write and that turn) each event is built and submitted when
    it is recorded, before its bytes go on, so whatever reached the peer is in the capture log."""

    policy: RedactionPolicy
    submit: Submit
    at_once: bool = False

    def message(self, message: Message) -> None:
        self.record("MESSAGE", message_fields, message, self.policy)

    def record(self, kind: str, build: Build, *args: Any) -> None:
        """Stamp an event now, and build it with ``build(*args)`` now (`at_once`) or soon."""
        (guarded if self.at_once else soon)(self._complete, kind, now_us(), build, args)

    def _complete(self, kind: str, at: int, build: Build, args: tuple[Any, ...]) -> None:
        for event in self.stamped(kind, at, build(*args)):
            self.submit(event)
