"""Exchange events as the proxy publishes them, for consumer tests.

`request_event(**overrides)` and `response_event(**overrides)` return complete,
realistic records (the plain dicts `schemas.codec` encodes): a Claude Code
`POST /v1/messages?beta=true` with its headers and body, and the streamed answer
with its reassembled message and usage. A keyword overrides a field of the event
(``session_key=``, ``redactions=``) or of its request/response record
(``status=``, ``body=``, ``model=``); a misspelt keyword raises. Switches shape
the whole event: ``body_kb=`` pads the request body to a size, ``messages=``
sets the conversation, ``sse=False`` answers with JSON, ``error=(type, message)``
answers with Anthropic's error JSON (or an SSE ``error`` event with
``error_in_stream=True``).

`exchange(**switches)` gives a matching request/response pair; `encode` frames an
event the way the proxy does without a registry.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from schemas.codec import single_object_encoder

MODEL = "claude-opus-4-8"
CLIENT = "claude-cli/2.1.197 (external, cli)"
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit "

_encoder = single_object_encoder()


def encode(event: dict[str, Any]) -> bytes:
    return _encoder.encode(event)


def now_micros() -> int:
    return time.time_ns() // 1000


def _header_list(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


def request_headers(session_id: str, body_size: int, agent_id: str | None, parent_agent_id: str | None) -> list[dict[str, str]]:
    """What Claude Code sends, with the key already redacted by the proxy."""
    pairs = [
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        ("User-Agent", CLIENT),
        ("X-Claude-Code-Session-Id", session_id),
        ("X-Stainless-Lang", "js"),
        ("X-Stainless-Retry-Count", "0"),
        ("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14"),
        ("anthropic-version", "2023-06-01"),
        ("x-api-key", "[REDACTED]"),
        ("x-app", "cli"),
        ("Accept-Encoding", "gzip, deflate, br, zstd"),
        ("Content-Length", str(body_size)),
    ]
    if agent_id:
        pairs.append(("x-claude-code-agent-id", agent_id))
    if parent_agent_id:
        pairs.append(("x-claude-code-parent-agent-id", parent_agent_id))
    return _header_list(pairs)


def user_message(text: str = "say hello") -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}


def request_body(
    session_id: str,
    *,
    model: str = MODEL,
    stream: bool = True,
    messages: list[dict[str, Any]] | None = None,
    body_kb: int | None = None,
) -> bytes:
    """A Claude Code request body; ``body_kb`` grows the system prompt until the body has that size."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages if messages is not None else [user_message()],
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.1c0; cc_entrypoint=cli;"},
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "tools": [
            {
                "name": "Bash",
                "description": "Run a shell command.",
                "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
            },
        ],
        "metadata": {"user_id": orjson.dumps({"device_id": "cf7deb13", "account_uuid": "", "session_id": session_id}).decode()},
        "max_tokens": 64000,
        "thinking": {"type": "adaptive"},
    }
    if stream:
        body["stream"] = True
    raw = orjson.dumps(body)
    if body_kb is not None and len(raw) < body_kb * 1024:
        missing = body_kb * 1024 - len(raw) - len(',{"type":"text","text":""}')
        body["system"].append({"type": "text", "text": (FILLER * (missing // len(FILLER) + 1))[: max(missing, 0)]})
        raw = orjson.dumps(body)
    return raw


def request_event(
    *,
    session_id: str | None = None,
    agent_id: str | None = None,
    parent_agent_id: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    body_kb: int | None = None,
    stream: bool = True,
    model: str = MODEL,
    **overrides: Any,
) -> dict[str, Any]:
    session_id = session_id or str(uuid.uuid4())
    body = request_body(session_id, model=model, stream=stream, messages=messages, body_kb=body_kb)
    at = now_micros()
    event = {
        "event_id": str(uuid.uuid4()),
        "exchange_id": str(uuid.uuid4()),
        "kind": "REQUEST",
        "occurred_at": at,
        "session_key": session_id,
        "session_source": "header",
        "agent_id": agent_id,
        "parent_agent_id": parent_agent_id,
        "api_key_fingerprint": "9f2c" * 16,
        "client": CLIENT,
        "redactions": ["header:x-api-key"],
        "request": {
            "method": "POST",
            "path": "/v1/messages",
            "query": "beta=true",
            "http_version": "1.1",
            "headers": request_headers(session_id, len(body), agent_id, parent_agent_id),
            "body": body,
            "body_size": len(body),
            "model": model,
            "stream": stream,
            "received_at": at - 150,
            "body_complete": True,
        },
        "response": None,
    }
    return _override(event, "request", overrides)


def text_message(
    text: str = "Hello! How can I help you today?", *, model: str = MODEL, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": "msg_01" + uuid.uuid4().hex[:22],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage or default_usage(),
    }


def default_usage() -> dict[str, Any]:
    return {
        "input_tokens": 3,
        "cache_creation_input_tokens": 19056,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 19056, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 12,
        "service_tier": "standard",
    }


def sse_stream(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(data)) for name, data in events)


def sse_body(message: dict[str, Any], error: tuple[str, str] | None = None) -> bytes:
    """The stream that reassembles into ``message`` (text blocks), or breaks off with an ``error`` event."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    if error:
        return sse_stream([*events, ("error", {"type": "error", "error": {"type": error[0], "message": error[1]}})])
    for index, block in enumerate(message["content"]):
        events += [
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
            ),
            ("ping", {"type": "ping"}),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": block["text"]}},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return sse_stream(events)


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_011CTest"})


def response_event(
    *,
    request: dict[str, Any] | None = None,
    sse: bool = True,
    message: dict[str, Any] | None = None,
    error: tuple[str, str] | None = None,
    error_in_stream: bool = False,
    status: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The answer to ``request`` (a `request_event`; a fresh one when omitted): same exchange and session."""
    request = request or request_event()
    message = message or text_message(model=request["request"]["model"] or MODEL)
    failed = error is not None and not error_in_stream
    if failed:
        body, sse = error_body(*error), False
    elif sse:
        body = sse_body(message, error if error_in_stream else None)
    else:
        body = orjson.dumps(message)
    received = request["request"]["received_at"]
    at = now_micros()
    event = {
        **{
            k: request[k]
            for k in (
                "exchange_id",
                "session_key",
                "session_source",
                "agent_id",
                "parent_agent_id",
                "api_key_fingerprint",
                "client",
            )
        },
        "event_id": str(uuid.uuid4()),
        "kind": "RESPONSE",
        "occurred_at": at,
        "redactions": [],
        "request": None,
        "response": {
            "status": status or (_ERROR_STATUS.get(error[0], 500) if failed and error else 200),
            "headers": _header_list(
                [
                    ("content-type", "text/event-stream; charset=utf-8" if sse else "application/json"),
                    ("request-id", "req_011CTest"),
                    ("anthropic-ratelimit-requests-remaining", "3999"),
                ]
            ),
            "body": body,
            "content_encoding": None,
            "is_sse": sse,
            "message": None if failed or error_in_stream else orjson.dumps(message).decode(),
            "usage": None if failed else orjson.dumps(message["usage"]).decode(),
            "stop_reason": None if failed or error_in_stream else message["stop_reason"],
            "error_type": error[0] if error else None,
            "error_message": error[1] if error else None,
            "error_in_stream": error_in_stream,
            "started_at": received,
            "ttfb_ms": 412.5,
            "duration_ms": 1893.25,
            "client_disconnected": False,
            "upstream_complete": not error_in_stream,
        },
    }
    return _override(event, "response", overrides)


_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def exchange(**switches: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A request and its response; switches go to `request_event`, ``response=`` (a dict) to `response_event`."""
    response_switches = switches.pop("response", {})
    request = request_event(**switches)
    return request, response_event(request=request, **response_switches)


def _override(event: dict[str, Any], half: str, overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if key in event:
            event[key] = value
        elif key in event[half]:
            event[half][key] = value
        else:
            raise TypeError(f"{key!r} is neither an event field nor a {half} field")
    return event
