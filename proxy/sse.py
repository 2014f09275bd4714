"""Incremental SSE parsing and reassembly of an Anthropic Messages stream.

Both classes are pure: they take text as it arrives, in chunks split anywhere
(mid-line, mid-CRLF, mid-character is the caller's job: feed them decoded
text), and never touch the network. The proxy feeds them a copy of each chunk
after the chunk has gone to the client, so they must not raise on any input:
what they cannot understand, they keep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

# Block types whose `input` arrives as `partial_json` fragments.
_JSON_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})

# Delta types carrying a string to append to their block, and the field it goes in.
_TEXT_DELTAS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event; `id` and `retry` only when the event itself set them (MCP resumes from ids)."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Splits an event stream into events, following the WHATWG rules that matter here.

    Lines end in CR, LF or CRLF; a CR at the end of a chunk is held back
    because its LF may open the next chunk.
    """

    def __init__(self) -> None:
        # The unfinished line, in the pieces it came in: a long line split over many
        # chunks is joined once, when its end arrives, not once per chunk.
        self._buffer: list[str] = []
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, text: str) -> list[SSEEvent]:
        if "\n" not in text and "\r" not in text and not (self._buffer and self._buffer[-1].endswith("\r")):
            if text:
                self._buffer.append(text)
            return []
        pending = "".join([*self._buffer, text]) if self._buffer else text
        lines = _LINE_BREAK.split(pending) if "\r" in pending else pending.split("\n")  # the usual stream: LF only
        rest = lines.pop()
        if pending.endswith("\r"):
            # That "\r" may be the first half of a "\r\n": keep its line until the next chunk.
            rest = lines.pop() + "\r"
        self._buffer = [rest] if rest else []
        return self._take_lines(lines)

    def idle(self) -> bool:
        """Between events: no partial line held, no field of an undispatched event read."""
        return not self._buffer and not self._event and not self._data and self._id is None and self._retry is None

    def state(self) -> dict[str, Any]:
        """What it holds between chunks, as JSON: the unfinished line and the undispatched event's fields,
        so a long stream's parsing can stop here and go on in another process (`restored`)."""
        return {"line": "".join(self._buffer), "event": self._event, "data": self._data, "id": self._id, "retry": self._retry}

    @classmethod
    def restored(cls, state: dict[str, Any]) -> SSEParser:
        parser = cls()
        parser._buffer = [state["line"]] if state["line"] else []
        parser._event, parser._data, parser._id, parser._retry = state["event"], list(state["data"]), state["id"], state["retry"]
        return parser

    def flush(self) -> list[SSEEvent]:
        """End of stream: a final event without its blank line still counts."""
        rest = "".join(self._buffer).rstrip("\r")
        self._buffer = []
        events = self._take_lines([rest] if rest else [])
        pending = self._dispatch()
        return events + ([pending] if pending else [])

    def _take_lines(self, lines: list[str]) -> list[SSEEvent]:
        events = []
        for line in lines:
            if not line:
                event = self._dispatch()
                if event:
                    events.append(event)
            elif not line.startswith(":"):
                self._field(line)
        return events

    def _field(self, line: str) -> None:
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)

    def _dispatch(self) -> SSEEvent | None:
        if not self._data and not self._event:
            self._id = self._retry = None
            return None
        event = SSEEvent(self._event or "message", "\n".join(self._data), self._id, self._retry)
        self._event, self._data, self._id, self._retry = "", [], None, None
        return event


@dataclass
class Reassembled:
    """What a Messages stream amounted to, as far as it got."""

    message: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    stop_reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    complete: bool = False
    unknown_events: list[dict[str, Any]] = field(default_factory=list)

    def final_message(self) -> dict[str, Any] | None:
        """The message as the client saw it; unknown events ride along so nothing is lost."""
        if self.message is None and not self.unknown_events:
            return None
        message = dict(self.message or {})
        if self.unknown_events:
            message["kgb_unknown_events"] = self.unknown_events
        return message


class MessageAssembler:
    """Builds the final message from SSE events, the way the SDKs do.

    Text, thinking and signature deltas are collected and joined once, at
    `finish` (joining per delta copies the text so far each time: quadratic in
    a long answer); `partial_json` fragments are joined and parsed at the
    block's stop; unknown deltas are kept on their block, unknown blocks as
    they came, unknown events in a list.
    """

    def __init__(self) -> None:
        self.result = Reassembled()
        self._blocks: dict[int, dict[str, Any]] = {}
        self._partial_json: dict[int, list[str]] = {}
        self._pieces: dict[tuple[int, str], list[str]] = {}

    def feed(self, event: SSEEvent) -> None:
        try:
            data = orjson.loads(event.data) if event.data else {}
        except orjson.JSONDecodeError:
            self.result.unknown_events.append({"event": event.event, "data": event.data})
            return
        handler = _HANDLERS.get(event.event)
        if handler is None or not isinstance(data, dict):
            if event.event != "ping":
                self.result.unknown_events.append({"event": event.event, "data": data})
            return
        try:
            handler(self, data)
        except (TypeError, ValueError, AttributeError):  # an index that is no number, a delta that is no object
            self.result.unknown_events.append({"event": event.event, "data": data})

    def _message_start(self, data: dict[str, Any]) -> None:
        message = dict(data.get("message") or {})
        self.result.usage = dict(message.get("usage") or {})
        message["content"] = []
        self.result.message = message
        self._sync_message()

    def _block_start(self, data: dict[str, Any]) -> None:
        index = int(data.get("index", len(self._blocks)))
        block = dict(data.get("content_block") or {})
        self._blocks[index] = block
        for key in _TEXT_DELTAS.values():
            self._pieces.pop((index, key), None)  # a restarted block drops what its predecessor collected
        if block.get("type") in _JSON_INPUT_BLOCKS:
            self._partial_json[index] = []
        self._sync_message()

    def extend_text(self, index: int, key: str, pieces: list[str]) -> None:
        """What a run of `<key>_delta` events on one block adds, taken without parsing each (`MessageStream`)."""
        block = self._blocks.setdefault(index, {})
        if isinstance(block.setdefault(key, ""), str):
            self._pieces.setdefault((index, key), []).extend(pieces)
        else:
            block.setdefault("kgb_unknown_deltas", []).extend({"type": key + "_delta", key: piece} for piece in pieces)

    def _block_delta(self, data: dict[str, Any]) -> None:
        index = int(data.get("index", 0))
        block = self._blocks.setdefault(index, {})
        delta = data.get("delta") or {}
        kind = delta.get("type")
        key = _TEXT_DELTAS.get(kind, "") if isinstance(kind, str) else ""
        piece = delta.get(key, "")
        if key and isinstance(piece, str) and isinstance(block.get(key, ""), str):
            self.extend_text(index, key, [piece])
        elif kind == "input_json_delta":
            self._partial_json.setdefault(index, []).append(delta.get("partial_json", ""))
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))
        else:
            block.setdefault("kgb_unknown_deltas", []).append(delta)

    def _block_stop(self, data: dict[str, Any]) -> None:
        index = int(data.get("index", 0))
        fragments = self._partial_json.pop(index, None)
        if fragments:
            _set_json_input(self._blocks.setdefault(index, {}), "".join(fragments))

    def _message_delta(self, data: dict[str, Any]) -> None:
        delta = data.get("delta") or {}
        if self.result.message is None:
            self.result.message = {"content": []}
        self.result.message.update(delta)
        if "stop_reason" in delta:
            self.result.stop_reason = delta["stop_reason"]
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.result.usage = {**(self.result.usage or {}), **usage}
        self._sync_message()

    def _message_stop(self, data: dict[str, Any]) -> None:
        self._flush_partial_json()
        self.result.complete = True

    def _error(self, data: dict[str, Any]) -> None:
        error = data.get("error") or {}
        self.result.error_type = error.get("type", "unknown_error")
        self.result.error_message = error.get("message")

    def finish(self) -> Reassembled:
        """Close whatever the stream left open (an interrupted stream keeps its partial blocks)."""
        self._flush_partial_json()
        self._join_pieces()
        self._sync_message()
        return self.result

    def _join_pieces(self) -> None:
        for (index, key), pieces in self._pieces.items():
            block = self._blocks[index]
            block[key] = "".join([block[key], *pieces])
        self._pieces.clear()

    def _flush_partial_json(self) -> None:
        for index in list(self._partial_json):
            self._block_stop({"index": index})

    def _sync_message(self) -> None:
        if self.result.message is not None:
            self.result.message["content"] = [self._blocks[i] for i in sorted(self._blocks)]
            if self.result.usage is not None:
                self.result.message["usage"] = self.result.usage


def _set_json_input(block: dict[str, Any], text: str) -> None:
    """Parse the joined fragments; a stream cut mid-JSON keeps the raw text instead."""
    try:
        block["input"] = orjson.loads(text)
    except orjson.JSONDecodeError:
        block["kgb_partial_input"] = text


_HANDLERS = {
    "message_start": MessageAssembler._message_start,
    "content_block_start": MessageAssembler._block_start,
    "content_block_delta": MessageAssembler._block_delta,
    "content_block_stop": MessageAssembler._block_stop,
    "message_delta": MessageAssembler._message_delta,
    "message_stop": MessageAssembler._message_stop,
    "error": MessageAssembler._error,
}


# The head of a text or thinking delta exactly as Anthropic frames it, up to its string's opening quote.
_DELTA_HEAD = re.compile(
    r'event: content_block_delta\ndata: \{"type":"content_block_delta","index":(0|[1-9][0-9]*),'
    r'"delta":\{"type":"(text|thinking)_delta","\2":"'
)
_DELTA_END = '"}}\n\n'
# An unfinished event at a chunk's end waits for the next chunk up to this size; a longer one goes to the parser.
_CARRY_LIMIT = 4096


class MessageStream:
    """An `SSEParser` feeding a `MessageAssembler`, with a fast lane for the bulk of a long answer.

    Why: a long answer is mostly text or thinking deltas of one fixed shape, and
    parsing each as a generic event and then its JSON costs microseconds per
    20-byte delta, on the loop that relays every client's bytes. The lane takes
    only events of exactly that shape, between events, and reads the string out
    of them; anything else, or any doubt (an escape that does not decode, a raw
    control character, an event cut by the chunk's end), goes the general way,
    so the message is the same either way.
    """

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._assembler = MessageAssembler()
        self._carry = ""

    def feed(self, text: str) -> None:
        pending, self._carry = self._carry + text, ""
        pos, end = 0, len(pending)
        while pos < end:
            if self._parser.idle():
                pos = self._take_deltas(pending, pos)
                if pos == end:
                    return
                if end - pos <= _CARRY_LIMIT and pending.find("\n\n", pos) < 0:
                    self._carry = pending[pos:]
                    return
            cut = pending.find("\n\n", pos)
            stop = end if cut < 0 else cut + 2  # just past a blank line: the parser is between events again
            self._assemble(self._parser.feed(pending[pos:stop]))
            pos = stop

    def finish(self) -> Reassembled:
        self._assemble(self._parser.feed(self._carry) + self._parser.flush())
        self._carry = ""
        return self._assembler.finish()

    def _assemble(self, events: list[SSEEvent]) -> None:
        for event in events:
            self._assembler.feed(event)

    def _take_deltas(self, text: str, pos: int) -> int:
        """Take the run of same-block text or thinking deltas starting at `pos`; returns where it ends."""
        head = _DELTA_HEAD.match(text, pos)
        if head is None:
            return pos
        prefix, pieces = head.group(), []
        size, starts, find = len(prefix), text.startswith, text.find  # bound once: this loop runs per delta
        while starts(prefix, pos):
            start = pos + size
            close = find("\n", start) - 3
            if close < start or not starts(_DELTA_END, close):
                break
            piece = text[start:close]
            if '"' in piece or "\\" in piece or not piece.isprintable():
                try:
                    piece = orjson.loads(f'"{piece}"')
                except orjson.JSONDecodeError:
                    break
            pieces.append(piece)
            pos = close + len(_DELTA_END)
        if pieces:
            self._assembler.extend_text(int(head[1]), head[2], pieces)
        return pos


def reassemble(text: str) -> Reassembled:
    """The whole-body convenience: parse and assemble a complete stream at once."""
    stream = MessageStream()
    stream.feed(text)
    return stream.finish()
