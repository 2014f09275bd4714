"""One exchange as its page shows it: the request as sent (rebuilt where winni split it) and the response as received.

By default winni keeps a request's body minus ``messages``, ``system`` and
``tools`` (migration 003): the messages are the conversation's first
``request_messages`` positions, the other two are `request_parts` stored
once. The rebuilt body is the request's meaning, not its bytes: strings
became text blocks and ``cache_control`` markers are gone, and key order may
differ; the topic keeps the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

SHOWN_BYTES = 256 * 1024  # of a body that is neither JSON nor text: a hex dump this long, the rest downloadable


@dataclass(frozen=True)
class Body:
    kind: str  # json, text, bytes, none
    value: Any = None  # the JSON value, the text, or the bytes
    rebuilt: bool = False

    def download(self) -> tuple[bytes, str]:
        """The body as a file: bytes and content type (never one a browser would render)."""
        if self.kind == "json":
            return orjson.dumps(self.value, option=orjson.OPT_INDENT_2), "application/json"
        if self.kind == "text":
            return self.value.encode(), "text/plain; charset=utf-8"
        return bytes(self.value or b""), "application/octet-stream"


def stored_body(json: Any, text: str | None, raw: bytes | None) -> Body:
    """Whichever of the three columns holds the body."""
    if json is not None:
        return Body("json", json)
    if text is not None:
        return Body("text", text)
    if raw is not None:
        return Body("bytes", bytes(raw))
    return Body("none")


def request_body(row: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> Body:
    """The request body, with its messages, system and tools put back when winni stored them apart."""
    body = stored_body(row["request_body"], row["request_body_text"], row["request_body_bytes"])
    if row["request_messages"] is None or body.kind != "json" or not isinstance(body.value, dict):
        return body
    whole = dict(body.value)
    if row["system_part"] is not None:
        whole["system"] = orjson.loads(row["system_part"])
    if row["tools_part"] is not None:
        whole["tools"] = orjson.loads(row["tools_part"])
    whole["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    return Body("json", whole, rebuilt=True)


def response_body(row: Mapping[str, Any]) -> Body:
    """The body the client got: the SSE stream as text, JSON, or bytes (decoded from its content encoding)."""
    return stored_body(row["response_body"], row["response_body_text"], row["response_body_bytes"])


def hex_dump(data: bytes, limit: int = SHOWN_BYTES) -> str:
    """Offset, 16 bytes in hex, and their printable ASCII, per line; up to ``limit`` bytes."""
    lines = []
    for offset in range(0, min(len(data), limit), 16):
        chunk = data[offset : offset + 16]
        shown = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  {shown}")
    return "\n".join(lines)
