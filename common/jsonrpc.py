"""JSON-RPC 2.0 messages classified, pure: what the MCP relays record and the consumers read back.

Shared by the capture (`proxy.mcp.events`) and the consumers (`consumers.mcp`),
so a version 1 WebSocket frame holding a batch is split the same way the relay
now splits one into events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


def _long(value: Any) -> int | None:
    return value if type(value) is int and -(2**63) <= value < 2**63 else None


def jsonrpc_message(item: Any) -> dict[str, Any] | None:
    """One JSON-RPC 2.0 message classified: a method with an id is a request, without one a
    notification; otherwise `error` or `result` make it an error or a response."""
    if not isinstance(item, dict):
        return None
    found: dict[str, Any] = {
        "method": None,
        "id": orjson.dumps(item["id"]).decode() if "id" in item else None,
        "error_code": None,
        "error_message": None,
    }
    method, error = item.get("method"), item.get("error")
    if isinstance(method, str):
        return found | {"kind": "REQUEST" if "id" in item else "NOTIFICATION", "method": method}
    if isinstance(error, dict):
        message = error.get("message")
        return found | {
            "kind": "ERROR",
            "error_code": _long(error.get("code")),
            "error_message": message if isinstance(message, str) else None,
        }
    if "result" in item:
        return found | {"kind": "RESPONSE"}
    return None


def jsonrpc_messages(payload: bytes) -> list[dict[str, Any]]:
    """The messages of a payload: one, or several for a batch; none when it is not JSON-RPC."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    return [message for message in map(jsonrpc_message, items) if message is not None]


@dataclass(frozen=True)
class Part:
    """One message of a payload: its bytes, its parsed value, how it classifies, where it sat in a batch."""

    payload: bytes
    value: Any
    jsonrpc: dict[str, Any] | None
    batch_index: int | None = None
    batch_size: int | None = None
    flag: str | None = None


def parts_of(payload: bytes) -> list[Part]:
    """A (redacted) payload split into its messages; at least one part, flagged when it is not JSON-RPC."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return [Part(payload, None, None, flag="not_json")]
    return parts_of_parsed(payload, parsed)


def parts_of_parsed(payload: bytes, parsed: Any) -> list[Part]:
    """`parts_of` for a payload its caller already parsed (the MCP capture, which parses it to redact it)."""
    if isinstance(parsed, list) and parsed:
        return [_part(orjson.dumps(item), item, index, len(parsed)) for index, item in enumerate(parsed)]
    return [_part(payload, parsed)]


def _part(payload: bytes, value: Any, index: int | None = None, size: int | None = None) -> Part:
    message = jsonrpc_message(value)
    return Part(payload, value, message, index, size, None if message else "not_jsonrpc")
