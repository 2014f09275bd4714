"""A fake Anthropic Messages API on 127.0.0.1 that speaks the real wire protocol.

Why it exists: the proxy, the end-to-end tests (the `anthropic` SDK, the Claude
Code CLI) and the benchmarks need an upstream that sends exactly the bytes
Anthropic sends, including the awkward ones (paced deltas, mid-stream `error`,
empty streams, cut connections, gzip), and that records exactly what arrived.

In a test::

    async with FakeAnthropic() as fake:
        fake.enqueue(tool_use_stream(name="Bash", input={"command": "ls"}), text_stream("Done."))
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-ant-test")
        ...
        assert fake.requests[0].json()["stream"] is True

From another thread (the Claude Code CLI test) or another process (benchmarks)::

    with run_in_thread(deltas=44, pace=0.02) as running:    # running.url, running.fake
        ...
    python -m tests.fakes.anthropic --port 0 --deltas 44 --pace 0.02   # prints its URL
    python -m tests.fakes.anthropic --answer-bytes 4000000 --delta-bytes 20   # a long answer

Scripted replies are consumed in order per path (`enqueue(..., path=...)`,
`/v1/messages` by default); when a path's queue is empty the default answer
applies: a short streamed text for `"stream": true`, else the JSON message;
`{"input_tokens": N}` for count_tokens; a model list for `/v1/models`; 200 for
`HEAD /`; 404 `not_found_error` for anything else.

What a stream looks like on the wire (compact JSON, one event per write)::

    event: message_start
    data: {"type":"message_start","message":{"id":"msg_01...","type":"message","role":"assistant",
           "model":"...","content":[],"stop_reason":null,"stop_sequence":null,"usage":{...,"output_tokens":1}}}

    event: content_block_start
    data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

    event: ping
    data: {"type": "ping"}

    event: content_block_delta
    data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}

    event: content_block_stop
    data: {"type":"content_block_stop","index":0}

    event: message_delta
    data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},
           "usage":{...,"output_tokens":12}}

    event: message_stop
    data: {"type":"message_stop"}

(JSON wrapped here for reading; on the wire each `data:` is one line.) A
reply's `pace` is the sleep before every event after the first, so headers and
`message_start` leave at once. Benchmarks pass `record=False` (the command line
always does) so long runs keep no request bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip as gzip_module
import random
import signal
import socket
import string
import threading
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web
from typing_extensions import TypedDict, Unpack

DEFAULT_MODEL = "claude-sonnet-4-5-20250929"
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"

# Status -> Anthropic's error type, from https://docs.anthropic.com/en/api/errors.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

MODELS: tuple[tuple[str, str, str], ...] = (
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
)

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An id shaped like Anthropic's (`msg_01` + 22 base62 characters), unique per call."""
    return prefix + "01" + "".join(random.choices(_ALPHABET, k=22))


# --- SSE framing and the message envelope -------------------------------------------


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One event exactly as Anthropic frames it: `event:` line, compact JSON `data:` line, blank line."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# Anthropic writes the ping payload with a space after the colon, unlike every other event.
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer; `message_start` carries the initial ones, `message_delta` the final ones."""

    input_tokens: int = 25
    output_tokens: int = 12
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    web_search_requests: int = 0

    def initial(self) -> dict[str, Any]:
        """What `message_start` reports: input side known, one output token so far."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_input_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": 1,
            "service_tier": "standard",
        }

    def final(self) -> dict[str, Any]:
        """What the last `message_delta` reports: cumulative counts that override `message_start`'s."""
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.web_search_requests:
            usage["server_tool_use"] = {"web_search_requests": self.web_search_requests}
        return usage

    def whole(self) -> dict[str, Any]:
        """The usage of a non-streamed message: the final counts in `message_start`'s layout."""
        return {**self.initial(), **self.final()}


def message_start(model: str, usage: Usage, message_id: str) -> bytes:
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage.initial(),
    }
    return sse("message_start", {"type": "message_start", "message": message})


def message_end(stop_reason: str, usage: Usage) -> list[bytes]:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return [
        sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage.final()}),
        sse("message_stop", {"type": "message_stop"}),
    ]


# --- Content blocks: each returns its start, deltas and stop events ------------------


def split(text: str, pieces: int) -> list[str]:
    """Cut `text` into `pieces` non-empty parts at evenly spaced, content-blind points."""
    pieces = max(1, min(pieces, len(text)))
    return [text[i * len(text) // pieces : (i + 1) * len(text) // pieces] for i in range(pieces)]


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def block_stop(index: int) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def text_block(index: int, text: str, deltas: int) -> list[bytes]:
    parts = [block_delta(index, {"type": "text_delta", "text": part}) for part in split(text, deltas)]
    return [block_start(index, {"type": "text", "text": ""}), *parts, block_stop(index)]


def tool_use_block(index: int, tool_id: str, name: str, tool_input: dict[str, Any], fragments: int) -> list[bytes]:
    """Like the API: the input starts as `{}`, then an empty `partial_json`, then fragments cut anywhere."""
    start = block_start(index, {"type": "tool_use", "id": tool_id, "name": name, "input": {}})
    joined = orjson.dumps(tool_input).decode()
    parts = ["", *split(joined, fragments)]
    deltas = [block_delta(index, {"type": "input_json_delta", "partial_json": part}) for part in parts]
    return [start, *deltas, block_stop(index)]


def thinking_block(index: int, thinking: str, signature: str, deltas: int) -> list[bytes]:
    start = block_start(index, {"type": "thinking", "thinking": "", "signature": ""})
    parts = [block_delta(index, {"type": "thinking_delta", "thinking": part}) for part in split(thinking, deltas)]
    sign = block_delta(index, {"type": "signature_delta", "signature": signature})
    return [start, *parts, sign, block_stop(index)]


def redacted_thinking_block(index: int, data: str) -> list[bytes]:
    """Arrives whole in its start event; no deltas."""
    return [block_start(index, {"type": "redacted_thinking", "data": data}), block_stop(index)]


def web_search_blocks(index: int, query: str, url: str, title: str) -> list[bytes]:
    """server_tool_use (its query streamed as input_json_delta), then the web_search_tool_result."""
    tool_id = new_id("srvtoolu_")
    result = {
        "type": "web_search_result",
        "url": url,
        "title": title,
        "encrypted_content": "EqgfCioIARgBIiQ3YTAwMjY1Mi1mZjM5LTQ1NGUtODgxNC1kNjNjNTk1ZWI3Y2Y",
        "page_age": "April 30, 2025",
    }
    search = tool_use_block(index, tool_id, "web_search", {"query": query}, fragments=2)
    search[0] = block_start(index, {"type": "server_tool_use", "id": tool_id, "name": "web_search", "input": {}})
    outcome = {"type": "web_search_tool_result", "tool_use_id": tool_id, "content": [result]}
    return [*search, block_start(index + 1, outcome), block_stop(index + 1)]


def cited_text_block(index: int, text: str, url: str, title: str) -> list[bytes]:
    """A text block whose citation arrives as a `citations_delta` before its text."""
    citation = {
        "type": "web_search_result_location",
        "url": url,
        "title": title,
        "encrypted_index": "Eo8BCioIAhgBIiQyYjQ0OWJmZi1lNm",
        "cited_text": text,
    }
    start = block_start(index, {"type": "text", "text": "", "citations": []})
    cite = block_delta(index, {"type": "citations_delta", "citation": citation})
    words = block_delta(index, {"type": "text_delta", "text": text})
    return [start, cite, words, block_stop(index)]


# --- Replies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted answer: the status, headers and exact body bytes, and how to send them.

    `body` is a tuple of chunks; a streamed reply writes them one at a time
    (one SSE event per chunk), sleeping `pace` seconds between chunks.
    `request_id` is drawn when the reply is built, so enqueue a fresh reply per
    request if distinct ids matter.
    """

    status: int = 200
    body: tuple[bytes, ...] = ()
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    streamed: bool = False
    pace: float = 0.0
    delay: float = 0.0
    gzip: bool = False
    disconnect: bool = False
    request_id: str = field(default_factory=lambda: new_id("req_"))

    @property
    def payload(self) -> bytes:
        """The body as the client sees it once decoded (before any gzip)."""
        return b"".join(self.body)

    def json(self) -> Any:
        return orjson.loads(self.payload)


class ReplyOptions(TypedDict, total=False):
    """Switches every builder accepts: `pace` between chunks, `delay` before the
    headers (for timeout tests), `gzip` the whole body, extra `headers`."""

    pace: float
    delay: float
    gzip: bool
    headers: tuple[tuple[str, str], ...]


def _stream(
    blocks: Sequence[bytes],
    *,
    model: str,
    usage: Usage,
    stop_reason: str,
    ping: bool,
    **options: Unpack[ReplyOptions],
) -> Reply:
    """Wrap content-block events in message_start ... message_stop; a ping goes after the first block start."""
    events = [message_start(model, usage, new_id("msg_")), *blocks, *message_end(stop_reason, usage)]
    if ping:
        events.insert(2, PING)
    return Reply(body=tuple(events), content_type=SSE, streamed=True, **options)


def default_text(deltas: int) -> str:
    """A sentence long enough to give every requested delta a few characters."""
    sentence = "Hello! This is the fake Anthropic API answering. "
    return (sentence * (1 + 4 * deltas // len(sentence)))[: max(4 * deltas, len(sentence.strip()))]


def long_text(size: int) -> str:
    """`size` bytes of ASCII text (so bytes and characters agree), numbered so a misplaced piece shows."""
    words = "".join(f"word{n:07d} " for n in range(size // 12 + 1))
    return words[:size]


def text_stream(
    text: str | None = None,
    *,
    deltas: int = 3,
    model: str = DEFAULT_MODEL,
    usage: Usage = Usage(),
    stop_reason: str = "end_turn",
    ping: bool = False,
    **options: Unpack[ReplyOptions],
) -> Reply:
    """A streamed text answer in `deltas` text_delta events (6 + deltas events in all)."""
    blocks = text_block(0, text if text is not None else default_text(deltas), deltas)
    return _stream(blocks, model=model, usage=usage, stop_reason=stop_reason, ping=ping, **options)


def tool_use_stream(
    name: str = "Bash",
    input: dict[str, Any] | None = None,
    *,
    fragments: int = 4,
    text: str | None = "Let me run that.",
    tool_id: str | None = None,
    model: str = DEFAULT_MODEL,
    usage: Usage = Usage(),
    ping: bool = False,
    **options: Unpack[ReplyOptions],
) -> Reply:
    """An optional text block, then a tool_use whose input JSON arrives cut into `fragments`; stop_reason tool_use."""
    tool_input = input if input is not None else {"command": "ls -la", "description": "List files"}
    lead = text_block(0, text, 2) if text else []
    tool = tool_use_block(1 if lead else 0, tool_id or new_id("toolu_"), name, tool_input, fragments)
    return _stream([*lead, *tool], model=model, usage=usage, stop_reason="tool_use", ping=ping, **options)


def thinking_stream(
    thinking: str = "The user wants a greeting. I should answer briefly.",
    text: str = "Hello!",
    *,
    deltas: int = 3,
    signature: str = "ErUBCkYIBRgCIkBx7P1bXvcWwYYh9CAm2Jf3",
    redacted: bool = False,
    model: str = DEFAULT_MODEL,
    usage: Usage = Usage(),
    ping: bool = False,
    **options: Unpack[ReplyOptions],
) -> Reply:
    """Extended thinking: a thinking block (thinking_delta + signature_delta), with
    `redacted=True` a redacted_thinking block after it, then the text answer."""
    blocks = thinking_block(0, thinking, signature, deltas)
    if redacted:
        blocks += redacted_thinking_block(1, "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP")
    blocks += text_block(2 if redacted else 1, text, deltas)
    return _stream(blocks, model=model, usage=usage, stop_reason="end_turn", ping=ping, **options)


def web_search_stream(
    query: str = "kafka kraft mode",
    text: str = "KRaft removes the need for ZooKeeper.",
    *,
    url: str = "https://kafka.apache.org/documentation/#kraft",
    title: str = "Apache Kafka documentation",
    model: str = DEFAULT_MODEL,
    ping: bool = False,
    **options: Unpack[ReplyOptions],
) -> Reply:
    """Server tools: server_tool_use + web_search_tool_result blocks, then text carrying a citations_delta."""
    blocks = [*web_search_blocks(0, query, url, title), *cited_text_block(2, text, url, title)]
    usage = Usage(web_search_requests=1)
    return _stream(blocks, model=model, usage=usage, stop_reason="end_turn", ping=ping, **options)


def unknown_types_stream(*, model: str = DEFAULT_MODEL, **options: Unpack[ReplyOptions]) -> Reply:
    """Types the API may add tomorrow: an unknown event, an unknown block with an unknown delta, then text.

    Proves pass-through: a proxy must forward and keep these untouched.
    """
    novel = [
        sse("future_event", {"type": "future_event", "detail": {"kept": True}}),
        block_start(0, {"type": "future_block", "payload": {"x": 1}}),
        block_delta(0, {"type": "future_delta", "fragment": "abc"}),
        block_stop(0),
    ]
    blocks = [*novel, *text_block(1, "Still here.", 2)]
    return _stream(blocks, model=model, usage=Usage(), stop_reason="end_turn", ping=False, **options)


def error_mid_stream(
    error_type: str = "overloaded_error",
    message: str = "Overloaded",
    *,
    model: str = DEFAULT_MODEL,
    **options: Unpack[ReplyOptions],
) -> Reply:
    """A 200 whose stream fails: message_start, then an `error` event, then the end of the body."""
    error = {"type": "error", "error": {"type": error_type, "message": message}}
    events = (message_start(model, Usage(), new_id("msg_")), sse("error", error))
    return Reply(body=events, content_type=SSE, streamed=True, **options)


def empty_stream(**options: Unpack[ReplyOptions]) -> Reply:
    """200 with text/event-stream and not a single event; Claude Code retries without `stream`."""
    return Reply(content_type=SSE, streamed=True, **options)


def disconnect_stream(after: int = 3, *, deltas: int = 10, **options: Unpack[ReplyOptions]) -> Reply:
    """A text stream cut after its first `after` events: the TCP connection closes mid chunked body."""
    whole = text_stream(deltas=deltas, **options)
    return replace(whole, body=whole.body[:after], disconnect=True)


def json_message(
    text: str = "Hello! How can I help you today?",
    *,
    content: list[dict[str, Any]] | None = None,
    model: str = DEFAULT_MODEL,
    usage: Usage = Usage(),
    stop_reason: str = "end_turn",
    **options: Unpack[ReplyOptions],
) -> Reply:
    """The non-streamed answer: the whole message as one JSON body (`content` overrides `text`)."""
    message = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content if content is not None else [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage.whole(),
    }
    return Reply(body=(orjson.dumps(message),), **options)


def count_tokens(input_tokens: int = 311, **options: Unpack[ReplyOptions]) -> Reply:
    """The answer to POST /v1/messages/count_tokens."""
    return Reply(body=(orjson.dumps({"input_tokens": input_tokens}),), **options)


def error_reply(
    status: int,
    message: str | None = None,
    *,
    error_type: str | None = None,
    retry_after: int | None = None,
    **options: Unpack[ReplyOptions],
) -> Reply:
    """Anthropic's error JSON for `status`; 429 carries `retry-after` (default 1 s) as the API's does."""
    kind = error_type or ERROR_TYPES.get(status, "api_error")
    request_id = new_id("req_")
    body = {"type": "error", "error": {"type": kind, "message": message or kind}, "request_id": request_id}
    if status == 429 and retry_after is None:
        retry_after = 1
    extra = (("retry-after", str(retry_after)),) if retry_after is not None else ()
    headers = (*extra, *options.pop("headers", ()))
    return Reply(status=status, body=(orjson.dumps(body),), headers=headers, request_id=request_id, **options)


def models_list(**options: Unpack[ReplyOptions]) -> Reply:
    """GET /v1/models: one page holding every model the fake knows."""
    data = [model_info(model_id) for model_id, _, _ in MODELS]
    page = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
    return Reply(body=(orjson.dumps(page),), **options)


def model_info(model_id: str) -> dict[str, Any]:
    _, name, created = next(model for model in MODELS if model[0] == model_id)
    return {"type": "model", "id": model_id, "display_name": name, "created_at": created}


# --- The server --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedRequest:
    """A request exactly as it arrived: raw path and query, headers in wire order with their case, raw body."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name`, matched without case."""
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    def json(self) -> Any:
        return orjson.loads(self.body)


def ratelimit_headers() -> list[tuple[str, str]]:
    """The rate-limit headers Anthropic attaches to every answer, which clients read."""
    reset = "2030-01-01T00:00:00Z"
    return [
        ("anthropic-ratelimit-requests-limit", "4000"),
        ("anthropic-ratelimit-requests-remaining", "3999"),
        ("anthropic-ratelimit-requests-reset", reset),
        ("anthropic-ratelimit-input-tokens-limit", "2000000"),
        ("anthropic-ratelimit-input-tokens-remaining", "2000000"),
        ("anthropic-ratelimit-input-tokens-reset", reset),
        ("anthropic-ratelimit-output-tokens-limit", "400000"),
        ("anthropic-ratelimit-output-tokens-remaining", "400000"),
        ("anthropic-ratelimit-output-tokens-reset", reset),
        ("anthropic-ratelimit-tokens-limit", "2400000"),
        ("anthropic-ratelimit-tokens-remaining", "2400000"),
        ("anthropic-ratelimit-tokens-reset", reset),
    ]


def response_headers(reply: Reply) -> list[tuple[str, str]]:
    headers = [("Content-Type", reply.content_type), ("request-id", reply.request_id), *ratelimit_headers()]
    if reply.streamed:
        headers.append(("Cache-Control", "no-cache"))
    if reply.gzip:
        headers.append(("Content-Encoding", "gzip"))
    return [*headers, *reply.headers]


async def send(request: web.Request, reply: Reply) -> web.StreamResponse:
    """Write `reply`: whole with Content-Length, or streamed chunk by chunk with chunked encoding."""
    if reply.delay:
        await asyncio.sleep(reply.delay)
    if not reply.streamed:
        body = gzip_module.compress(reply.payload, mtime=0) if reply.gzip else reply.payload
        return web.Response(status=reply.status, body=body, headers=response_headers(reply))
    response = web.StreamResponse(status=reply.status, headers=response_headers(reply))
    await response.prepare(request)
    await write_paced(response, reply)
    if reply.disconnect:
        return hang_up(request, response)
    await response.write_eof()
    return response


async def write_paced(response: web.StreamResponse, reply: Reply) -> None:
    """One write per chunk, `pace` seconds apart; gzip is one stream flushed per chunk so each still leaves at once.

    A cut connection never sends the gzip trailer, as a crashed upstream would not.
    """
    compressor = zlib.compressobj(wbits=31) if reply.gzip else None
    for number, chunk in enumerate(reply.body):
        if number and reply.pace:
            await asyncio.sleep(reply.pace)
        await response.write(compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH) if compressor else chunk)
    if compressor and not reply.disconnect:
        await response.write(compressor.flush())


def hang_up(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Close the TCP connection without the terminating chunk, as a crashed upstream would.

    `close()` (not `abort()`) so the events already buffered still reach the client.
    """
    assert request.transport is not None
    request.transport.close()
    response.force_close()
    return response


class FakeAnthropic:
    """The fake API as an async context manager; `url`, `requests`, `enqueue` and `client_gone` are its interface.

    `deltas`, `pace` and `gzip` shape the default streamed answer (benchmarks set
    them); `answer_bytes` makes it a long answer instead, that many bytes of text
    in `delta_bytes`-byte deltas (its events are built once, so building them is
    not timed with each answer); `record=False` keeps no requests, so long
    benchmark runs hold no bodies.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        deltas: int = 3,
        pace: float = 0.0,
        gzip: bool = False,
        record: bool = True,
        answer_bytes: int = 0,
        delta_bytes: int = 20,
    ):
        self.requests: list[ReceivedRequest] = []
        self.deltas, self.pace, self.gzip, self.record = deltas, pace, gzip, record
        self._long_blocks = text_block(0, long_text(answer_bytes), answer_bytes // delta_bytes) if answer_bytes else None
        self._port = port
        self._queues: dict[str, deque[Reply]] = {}
        self._gone: asyncio.Queue[ReceivedRequest] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def enqueue(self, *replies: Reply, path: str = "/v1/messages") -> None:
        """Script the next answers to `path`, consumed in order, one per request."""
        self._queues.setdefault(path, deque()).extend(replies)

    async def __aenter__(self) -> FakeAnthropic:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)  # a %0A in the path is a newline: `.*` would 404
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        # handler_cancellation: a client that leaves during a slow reply stops its handler.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = ReceivedRequest(
            method=request.method,
            path=request.rel_url.raw_path,
            query=request.rel_url.raw_query_string,
            headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers],
            body=await request.read(),
        )
        if self.record:
            self.requests.append(received)
        queue = self._queues.get(received.path)
        try:
            return await send(request, queue.popleft() if queue else self.default_reply(received))
        except (asyncio.CancelledError, ConnectionError):
            self._gone.put_nowait(received)
            raise

    async def client_gone(self) -> ReceivedRequest:
        """Wait for a request whose client hung up before its reply was finished.

        Why: a proxy must close its upstream request when its own client leaves;
        this is how a test sees the upstream side of that close.
        """
        return await self._gone.get()

    def default_reply(self, received: ReceivedRequest) -> Reply:
        """What the fake answers when nothing is scripted for the path."""
        route = (received.method, received.path)
        if route == ("HEAD", "/"):
            return Reply()
        if route == ("POST", "/v1/messages"):
            return self._default_message(received)
        if route == ("POST", "/v1/messages/count_tokens"):
            return count_tokens(max(1, len(received.body) // 4))
        if route == ("GET", "/v1/models"):
            return models_list()
        known = {f"/v1/models/{model_id}" for model_id, _, _ in MODELS}
        if received.method == "GET" and received.path in known:
            return Reply(body=(orjson.dumps(model_info(received.path.rsplit("/", 1)[1])),))
        return error_reply(404, "Not Found")

    def _default_message(self, received: ReceivedRequest) -> Reply:
        try:
            body = received.json()
        except orjson.JSONDecodeError:
            return error_reply(400, "There was an error parsing the body of your request")
        model = body.get("model", DEFAULT_MODEL) if isinstance(body, dict) else DEFAULT_MODEL
        if isinstance(body, dict) and body.get("stream") is True:
            if self._long_blocks is not None:
                return _stream(
                    self._long_blocks,
                    model=model,
                    usage=Usage(),
                    stop_reason="end_turn",
                    ping=False,
                    pace=self.pace,
                    gzip=self.gzip,
                )
            return text_stream(deltas=self.deltas, model=model, pace=self.pace, gzip=self.gzip)
        return json_message(model=model, gzip=self.gzip)


# --- Running it outside the test's event loop ---------------------------------------------


@dataclass
class RunningFake:
    """A fake serving from its own thread and event loop; `stop()` (or leaving `with`) ends it."""

    fake: FakeAnthropic
    url: str
    stop: Callable[[], None]

    def __enter__(self) -> RunningFake:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_in_thread(**settings: Any) -> RunningFake:
    """Start a FakeAnthropic(**settings) on its own event loop in a daemon thread; returns once it listens.

    `enqueue` from the calling thread is safe (a deque append); read `requests` after `stop()`.
    """
    fake = FakeAnthropic(**settings)
    loop = asyncio.new_event_loop()
    listening, stopping = threading.Event(), asyncio.Event()

    async def serve_until_stopped() -> None:
        try:
            async with fake:
                listening.set()
                await stopping.wait()
        finally:
            listening.set()  # a failed start must not leave the caller waiting

    thread = threading.Thread(target=loop.run_until_complete, args=(serve_until_stopped(),), daemon=True)
    thread.start()
    listening.wait()
    if not fake.url:
        thread.join()
        raise RuntimeError("the fake Anthropic server failed to start; see the thread's traceback")

    def stop() -> None:
        loop.call_soon_threadsafe(stopping.set)
        thread.join()
        loop.close()

    return RunningFake(fake=fake, url=fake.url, stop=stop)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM; print the URL first so a parent process can wait for it."""
    stopped = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stopped.set)
    fake = FakeAnthropic(
        port=args.port,
        deltas=args.deltas,
        pace=args.pace,
        gzip=args.gzip,
        record=False,
        answer_bytes=args.answer_bytes,
        delta_bytes=args.delta_bytes,
    )
    async with fake:
        print(fake.url, flush=True)
        await stopped.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Anthropic Messages API on 127.0.0.1 (default answers only).")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port; the URL is printed")
    parser.add_argument("--deltas", type=int, default=3, help="text_delta events per streamed answer")
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between streamed events")
    parser.add_argument("--gzip", action="store_true", help="gzip every answer")
    parser.add_argument("--answer-bytes", type=int, default=0, help="streamed answers are this many bytes of text instead")
    parser.add_argument("--delta-bytes", type=int, default=20, help="with --answer-bytes: bytes of text per text_delta")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
