"""MCP events as the consumers read them, pure: messages, sessions, and the name Claude Code gives a tool.

Every consumer of ``kgb.mcp`` (winni's MCP stage, dewey, metrics) reads events
through here, so all of them agree on what a message is, including the
version 1 WebSocket events (kind FRAME, one per frame, a batch in one payload),
which are split into their messages exactly as the relays now split them.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from consumers.errors import InvalidEvent
from common.jsonrpc import parts_of

WEBSOCKET = "websocket"
CLIENT_TO_SERVER, SERVER_TO_CLIENT = "client_to_server", "server_to_client"
DIRECTIONS = {"CLIENT_TO_UPSTREAM": CLIENT_TO_SERVER, "UPSTREAM_TO_CLIENT": SERVER_TO_CLIENT}
KINDS = frozenset({"OPEN", "FRAME", "CLOSE", "MESSAGE", "EXCHANGE"})
CLIENT_INFO_META = "io.modelcontextprotocol/clientInfo"
SERVER_INFO_META = "io.modelcontextprotocol/serverInfo"
# Claude Code names an MCP tool mcp__SERVER__TOOL, each part with these characters replaced by "_".
_CLAUDE_NAME = re.compile(r"[^A-Za-z0-9_-]")


def is_mcp(event: dict[str, Any]) -> bool:
    """An McpEvent, not an ExchangeEvent: each consumer decodes each topic with its own schema."""
    return "connection_id" in event


def session_key(event: dict[str, Any]) -> str:
    """Version 1 events had no session_key: a WebSocket connection was the session."""
    return event.get("session_key") or event["connection_id"]


def transport(event: dict[str, Any]) -> str:
    return (event.get("transport") or "WEBSOCKET").lower()


def check(event: dict[str, Any]) -> None:
    """Refuse events the MCP tables cannot hold."""
    for name in ("event_id", "connection_id"):
        try:
            uuid.UUID(event[name])
        except ValueError:
            raise InvalidEvent(f"{name} {event[name]!r} is not a UUID") from None
    if event["kind"] in ("MESSAGE", "FRAME") and event.get("direction") not in DIRECTIONS:
        raise InvalidEvent(f"{event['kind']} event {event['event_id']} has no direction")


@dataclass(frozen=True)
class McpMessage:
    """One JSON-RPC message (or one flagged payload) of a session, as it crossed the relay."""

    event_id: str
    part: int
    session_key: str
    connection_id: str
    server: str
    direction: str
    kind: str | None
    method: str | None
    jsonrpc_id: str | None
    value: Any
    payload: bytes
    flag: str | None
    occurred_at: int

    @property
    def params(self) -> dict[str, Any]:
        params = self.value.get("params") if isinstance(self.value, dict) else None
        return params if isinstance(params, dict) else {}


def messages_of(event: dict[str, Any]) -> list[McpMessage]:
    """A MESSAGE event's message, or each message of a version 1 FRAME; none for the other kinds."""
    if event["kind"] == "MESSAGE":
        value = _parsed(event["payload"]) if event.get("jsonrpc") else None
        found = event["jsonrpc"][0] if event.get("jsonrpc") else None
        return [_message(event, 0, event["payload"] or b"", value, found, event.get("error_type"))]
    if event["kind"] != "FRAME":
        return []
    if event.get("frame_type") == "BINARY":
        return [_message(event, 0, event["payload"] or b"", None, None, "binary_frame")]
    return [
        _message(event, index, part.payload, part.value, part.jsonrpc, part.flag)
        for index, part in enumerate(parts_of(event["payload"] or b""))
    ]


def _parsed(payload: bytes | None) -> Any:
    try:
        return orjson.loads(payload or b"")
    except orjson.JSONDecodeError:
        return None


def _message(
    event: dict[str, Any], part: int, payload: bytes, value: Any, found: dict[str, Any] | None, flag: str | None
) -> McpMessage:
    return McpMessage(
        event_id=event["event_id"],
        part=part,
        session_key=session_key(event),
        connection_id=event["connection_id"],
        server=event["upstream"],
        direction=DIRECTIONS[event["direction"]],
        kind=found["kind"].lower() if found else None,
        method=found["method"] if found else None,
        jsonrpc_id=found["id"] if found else None,
        value=value,
        payload=payload,
        flag=flag,
        occurred_at=event["occurred_at"],
    )


def claude_tool_name(server: str, tool: str) -> str:
    """The name of the tool_use Claude Code sends for `tool` of the server it calls `server`."""
    return f"mcp__{_CLAUDE_NAME.sub('_', server)}__{_CLAUDE_NAME.sub('_', tool)}"


def call_target(message: McpMessage) -> str | None:
    """What a request is about: the tool or prompt name, or the resource URI."""
    params = message.params
    for key in ("name", "uri"):
        if isinstance(params.get(key), str):
            return params[key]
    return None


def call_arguments(message: McpMessage) -> Any:
    """A tools/call's arguments (what Claude Code's tool_use input is); the whole params of anything else."""
    params = message.params
    if message.method == "tools/call":
        return params.get("arguments")
    return params or None


def progress_token(message: McpMessage) -> str | None:
    """A request's ``_meta.progressToken``, as JSON text (1 and "1" differ), which its progress notifications name."""
    meta = message.params.get("_meta")
    if isinstance(meta, dict) and "progressToken" in meta:
        return orjson.dumps(meta["progressToken"]).decode()
    return None


def notified_token(message: McpMessage) -> str | None:
    """notifications/progress: the token of the request it reports on."""
    params = message.params
    return orjson.dumps(params["progressToken"]).decode() if "progressToken" in params else None


def cancelled_request(message: McpMessage) -> str | None:
    """notifications/cancelled: the id of the request it cancels, as JSON text."""
    params = message.params
    return orjson.dumps(params["requestId"]).decode() if "requestId" in params else None


def client_info(message: McpMessage) -> Any:
    """initialize's clientInfo, or a 2026-07-28 request's ``_meta`` one."""
    params = message.params
    if message.method == "initialize" and isinstance(params.get("clientInfo"), dict):
        return params["clientInfo"]
    meta = params.get("_meta")
    return meta.get(CLIENT_INFO_META) if isinstance(meta, dict) and isinstance(meta.get(CLIENT_INFO_META), dict) else None


def server_info(message: McpMessage) -> Any:
    """An initialize result's serverInfo, or a 2026-07-28 result's ``_meta`` one."""
    result = message.value.get("result") if isinstance(message.value, dict) else None
    if not isinstance(result, dict):
        return None
    if isinstance(result.get("serverInfo"), dict):
        return result["serverInfo"]
    meta = result.get("_meta")
    return meta.get(SERVER_INFO_META) if isinstance(meta, dict) and isinstance(meta.get(SERVER_INFO_META), dict) else None


def is_error_result(value: Any) -> bool:
    """A JSON-RPC error, or a tool result that says it failed (``isError``)."""
    if not isinstance(value, dict):
        return False
    result = value.get("result")
    return "error" in value or (isinstance(result, dict) and result.get("isError") is True)


@dataclass
class OpenCall:
    """A request waiting for its answer: from a table of open calls, or asked earlier in the batch."""

    call_id: Any
    session_key: str
    jsonrpc_id: str
    direction: str
    connection_id: str
    requested_at: datetime
    progress_token: str | None = None


def open_call(row: Any) -> OpenCall:
    """A row with the columns of `OpenCall` (``progress_token`` optional)."""
    token = row.get("progress_token", None)
    return OpenCall(
        row["call_id"], row["session_key"], row["jsonrpc_id"], row["direction"], row["connection_id"], row["requested_at"], token
    )


def answered(open_calls: list[OpenCall], message: McpMessage) -> OpenCall | None:
    """The call an answer (a response or an error) closes: same session and id, asked the other way; one
    asked on the same connection or HTTP request first, else the oldest (stateless clients reuse ids)."""
    asked = [
        c
        for c in open_calls
        if c.session_key == message.session_key and c.jsonrpc_id == message.jsonrpc_id and c.direction != message.direction
    ]
    same = [c for c in asked if c.connection_id == message.connection_id]
    return (same or asked or [None])[0]  # type: ignore[list-item]
