"""KGB messages as Dewey messages: pure, no I/O.

An MCP session is a conversation too (kind ``mcp``): its client's messages
as ``user``, its server's as ``assistant``, each the JSON-RPC message as JSON,
as the earlier KGB logged them.

Dewey stores a role and a text per message and searches the text, so each
block becomes a line a person can read: text as it is, a tool call as
``[tool_use Bash] {"command": "ls"}``, a result as ``[tool_result toolu_… error]``
followed by its text. What a line cannot hold (signatures, images, the exact
JSON) is kept whole in the message's metadata, so nothing is lost in the
rendering. ``turn_number`` is the message's position in its KGB conversation.

`chunks` cuts a conversation's messages into ``dewey_store_messages_bulk``
calls bounded in count and in bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# The roles Dewey accepts; any other is sent as user, the original kept in the metadata.
DEWEY_ROLES = frozenset({"user", "assistant", "system", "tool"})
EMPTY = "(empty)"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One row of the conversation tables (``messages``), content parsed."""

    conversation_id: uuid.UUID
    position: int
    role: str
    content: Any
    exchange_id: str
    source: str
    partial: bool


@dataclass(frozen=True, slots=True)
class ConversationHead:
    """What Dewey is told when a KGB conversation begins."""

    conversation_id: uuid.UUID
    session_key: str
    kind: str
    agent_id: str | None
    parent_agent_id: str | None
    parent_conversation_id: uuid.UUID | None
    model: str | None
    extra: dict[str, Any] | None = None  # more metadata: an MCP session's server, transport, client and server


def begin_arguments(head: ConversationHead) -> dict[str, Any]:
    """``dewey_begin_conversation``'s arguments; the KGB id in the metadata finds it again after a crash."""
    parent = head.parent_conversation_id
    return {
        "session_id": head.session_key,
        "metadata": {
            "source": "kgb",
            "kgb_conversation_id": str(head.conversation_id),
            "kind": head.kind,
            "agent_id": head.agent_id,
            "parent_agent_id": head.parent_agent_id,
            "parent_kgb_conversation_id": str(parent) if parent else None,
            "model": head.model,
            **(head.extra or {}),
        },
    }


def kgb_conversation_id(metadata: Any) -> str | None:
    """The KGB id a Dewey conversation was begun for, from its metadata (Dewey may return it as text)."""
    metadata = _parsed(metadata)
    return metadata.get("kgb_conversation_id") if isinstance(metadata, dict) else None


def kgb_position(metadata: Any) -> int | None:
    """The KGB position a Dewey message was sent for, from its metadata."""
    metadata = _parsed(metadata)
    position = metadata.get("position") if isinstance(metadata, dict) else None
    return position if isinstance(position, int) else None


def dewey_message(message: StoredMessage) -> dict[str, Any]:
    """One entry of ``dewey_store_messages_bulk``'s ``messages``."""
    return {
        "role": message.role if message.role in DEWEY_ROLES else "user",
        "content": text_of(message.content),
        "turn_number": message.position,
        "metadata": {
            "position": message.position,
            "role": message.role,
            "exchange_id": message.exchange_id,
            "source": message.source,
            "partial": message.partial,
            "content": message.content,
        },
    }


def text_of(content: Any) -> str:
    """Blocks rendered one per line; what is not a list of blocks, as JSON."""
    if isinstance(content, str):
        return content or EMPTY
    if not isinstance(content, list):
        return _json(content)
    return "\n".join(block_text(block) for block in content) or EMPTY


def block_text(block: Any) -> str:
    if not isinstance(block, dict):
        return _json(block)
    kind = str(block.get("type", "unknown"))
    if kind == "text":
        return str(block.get("text", ""))
    if kind.endswith("tool_use"):
        return f"[{kind} {block.get('name', '?')}] {_json(block.get('input'))}"
    if "tool_use_id" in block:
        return tool_result_text(kind, block)
    if kind == "thinking":
        return f"[thinking] {block.get('thinking', '')}"
    if kind in ("image", "document"):
        source = block.get("source")
        media = source.get("media_type") if isinstance(source, dict) else None
        return f"[{kind} {media}]" if media else f"[{kind}]"
    return f"[{kind}]"


def tool_result_text(kind: str, block: dict[str, Any]) -> str:
    """``[tool_result toolu_… error]`` and the result's own text on the next lines."""
    flag = " error" if block.get("is_error") is True else ""
    head = f"[{kind} {block['tool_use_id']}{flag}]"
    content = block.get("content")
    if content is None or content == [] or content == "":
        return head
    return f"{head}\n{text_of(content)}"


def chunks(messages: Sequence[dict[str, Any]], max_count: int, max_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive runs of at most ``max_count`` messages and about ``max_bytes`` of JSON; never empty."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for message in messages:
        length = len(orjson.dumps(message))
        if chunk and (len(chunk) == max_count or size + length > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(message)
        size += length
    if chunk:
        yield chunk


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _parsed(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    return value
