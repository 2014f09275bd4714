"""One conversation as its page shows it: messages in order, each tool call beside its result, each reply with its exchanges.

The tables store a tool call's input in the assistant message that made it
and its result in the user message that answered, positions apart; the page
wants them side by side and linked both ways, so the messages are scanned once
for both ends. Each exchange's reply went to ``reply_position``: the
exchanges are hung on that message, retries and failures included, so a reply
shows what it cost and which attempts came before it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from web.render import IMAGE_TYPES

PREVIEW_CHARS = 600
LONG_CHARS = 4000
LONG_LINES = 60


@dataclass(frozen=True)
class ResultPart:
    kind: str  # text, image, other
    text: str = ""
    media_type: str = ""
    data: str = ""


@dataclass(frozen=True)
class ToolResult:
    position: int
    tool_use_id: str
    is_error: bool
    parts: list[ResultPart]

    @cached_property
    def text(self) -> str:
        return "\n".join(p.text for p in self.parts if p.kind == "text")

    @property
    def preview(self) -> str:
        text = self.text
        return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + " …"

    @cached_property
    def long(self) -> bool:
        text = self.text
        return len(text) > LONG_CHARS or text.count("\n") > LONG_LINES


@dataclass(frozen=True)
class ToolUse:
    position: int
    block: Mapping[str, Any]


@dataclass(slots=True)
class Exchange:
    row: Mapping[str, Any]
    cost: Any = None
    unpriced: bool = False
    failed: bool = False
    cut: bool = False  # the client went away or the stream broke before the reply ended

    @classmethod
    def of(cls, row: Mapping[str, Any], cost: Mapping[str, Any] | None) -> Exchange:
        return cls(
            row,
            cost and cost["cost_usd"],
            bool(cost and cost["unpriced"]),
            failed=row["status"] != 200 or row["error_type"] is not None,
            cut=bool(row["client_disconnected"]) or row["upstream_complete"] is False,
        )


@dataclass(slots=True)
class Message:
    """A message as the page lists it; ``position`` None is the place for requests whose reply has no message here."""

    position: int | None
    role: str
    label: str
    row: Mapping[str, Any] | None
    blocks: Sequence[Any]
    exchanges: list[Exchange] = field(default_factory=list)

    @classmethod
    def of(cls, row: Mapping[str, Any], exchanges: list[Exchange]) -> Message:
        blocks = row["content"] if isinstance(row["content"], list) else [row["content"]]
        only_results = bool(blocks) and all(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)
        return cls(row["position"], row["role"], "tool results" if only_results else row["role"], row, blocks, exchanges)


@dataclass
class Page:
    messages: list[Message]  # in position order, after one of position None holding the exchanges no message shows
    uses: dict[str, ToolUse]  # tool_use_id -> where it was called
    results: dict[str, ToolResult]  # tool_use_id -> its result
    spawned: dict[str, Mapping[str, Any]]  # tool_use_id -> the sub-agent conversation it started
    mcp_calls: dict[str, str]  # tool_use_id -> mcp_calls id


def result_parts(block: Mapping[str, Any]) -> list[ResultPart]:
    """A tool_result's content (a string, or blocks of text and images) as parts to show."""
    content = block.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [ResultPart("text", content)]
    if not isinstance(content, list):
        return [ResultPart("other", str(content))]
    return [_result_part(part) for part in content]


def _result_part(part: Any) -> ResultPart:
    if isinstance(part, dict) and part.get("type") == "text":
        return ResultPart("text", str(part.get("text", "")))
    source = part.get("source") if isinstance(part, dict) else None
    if isinstance(source, dict) and source.get("type") == "base64" and source.get("media_type") in IMAGE_TYPES:
        return ResultPart("image", media_type=source["media_type"], data=str(source.get("data", "")))
    return ResultPart("other", str(part))


def is_error_result(block: Mapping[str, Any]) -> bool:
    """A client tool's is_error, or a server tool's ``*_error`` content (web_search_tool_result_error)."""
    content = block.get("content")
    return bool(block.get("is_error")) or (isinstance(content, dict) and str(content.get("type", "")).endswith("_error"))


def as_result(block: Mapping[str, Any], position: int) -> ToolResult:
    return ToolResult(position, str(block.get("tool_use_id")), is_error_result(block), result_parts(block))


def tool_ends(messages: Sequence[Mapping[str, Any]]) -> tuple[dict[str, ToolUse], dict[str, ToolResult]]:
    """Every tool call and every result in the messages, by tool_use_id (the first of each)."""
    uses: dict[str, ToolUse] = {}
    results: dict[str, ToolResult] = {}
    for message in messages:
        for block in message["content"]:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind in ("tool_use", "server_tool_use") and isinstance(block.get("id"), str):
                uses.setdefault(block["id"], ToolUse(message["position"], block))
            elif kind == "tool_result" and isinstance(block.get("tool_use_id"), str):
                results.setdefault(block["tool_use_id"], as_result(block, message["position"]))
    return uses, results


def build(
    messages: Sequence[Mapping[str, Any]],
    exchanges: Sequence[Mapping[str, Any]],
    costs: Mapping[str, Mapping[str, Any]],
    spawned: Mapping[str, Mapping[str, Any]],
    mcp_calls: Mapping[str, str],
) -> Page:
    """The page of a conversation from its rows (messages in position order, exchanges in time order)."""
    uses, results = tool_ends(messages)
    by_position: dict[int | None, list[Exchange]] = defaultdict(list)
    for row in exchanges:
        by_position[row["reply_position"]].append(Exchange.of(row, costs.get(str(row["exchange_id"]))))
    listed = [Message.of(row, by_position.pop(row["position"], [])) for row in messages]
    unplaced = [exchange for group in by_position.values() for exchange in group]
    if unplaced:
        listed.insert(0, Message(None, "", "requests with no reply here", None, [], unplaced))
    return Page(listed, uses, results, dict(spawned), dict(mcp_calls))
