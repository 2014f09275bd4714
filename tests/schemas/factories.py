"""Records of the current ExchangeEvent schema, built with keyword switches.

Every field is spelt out, defaults included, so a decoded record can be compared
with `==` to what was encoded.
"""

from __future__ import annotations

import copy
from typing import Any

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in microseconds


def headers(**pairs: str) -> list[dict[str, str]]:
    return [{"name": k.replace("_", "-"), "value": v} for k, v in pairs.items()]


def request_event(*, body_size: int = 1024, model: str | None = "claude-sonnet-4-5", **over: Any) -> dict:
    body = b'{"messages":[' + b"x" * max(body_size - 15, 0) + b"]}"
    record = {
        "event_id": "6f1c1d6e-0000-4000-8000-000000000001",
        "exchange_id": "6f1c1d6e-0000-4000-8000-0000000000aa",
        "kind": "REQUEST",
        "occurred_at": T0 + 5,
        "session_key": "0b9e4a52-1111-4222-8333-444455556666",
        "session_source": "header",
        "agent_id": None,
        "parent_agent_id": None,
        "api_key_fingerprint": "ab" * 32,
        "client": "claude-cli/2.1.3 (external, cli)",
        "redactions": ["x-api-key"],
        "request": {
            "method": "POST",
            "path": "/v1/messages",
            "query": "beta=true",
            "http_version": "1.1",
            "headers": headers(x_api_key="[REDACTED]", anthropic_version="2023-06-01"),
            "body": body,
            "body_size": len(body),
            "model": model,
            "stream": True,
            "received_at": T0,
            "body_complete": True,
        },
        "response": None,
        "fragment": None,
    }
    return {**record, **over}


def response_event(*, status: int = 200, is_sse: bool = True, **over: Any) -> dict:
    record = {
        "event_id": "6f1c1d6e-0000-4000-8000-000000000002",
        "exchange_id": "6f1c1d6e-0000-4000-8000-0000000000aa",
        "kind": "RESPONSE",
        "occurred_at": T0 + 900_000,
        "session_key": "0b9e4a52-1111-4222-8333-444455556666",
        "session_source": "header",
        "agent_id": "agent-1",
        "parent_agent_id": None,
        "api_key_fingerprint": None,
        "client": None,
        "redactions": [],
        "request": None,
        "response": {
            "status": status,
            "headers": headers(content_type="text/event-stream", request_id="req_01"),
            "body": b"event: message_stop\ndata: {}\n\n",
            "content_encoding": "gzip",
            "is_sse": is_sse,
            "message": '{"role":"assistant","content":[{"type":"text","text":"hi"}]}',
            "usage": '{"input_tokens":10,"output_tokens":2}',
            "stop_reason": "end_turn",
            "error_type": None,
            "error_message": None,
            "error_in_stream": False,
            "started_at": T0,
            "ttfb_ms": 12.5,
            "duration_ms": 900.25,
            "client_disconnected": False,
            "upstream_complete": True,
        },
        "fragment": None,
    }
    return {**record, **over}


def without_fields(schema: dict, top: set[str], nested: dict[str, set[str]]) -> dict:
    """An older variant of a schema: the given defaulted fields removed.

    `nested` maps a top-level field whose type is ["null", record] to the
    record's fields to drop.
    """
    older = copy.deepcopy(schema)
    older["fields"] = [f for f in older["fields"] if f["name"] not in top]
    for field in older["fields"]:
        if field["name"] in nested:
            record = field["type"][1]
            record["fields"] = [f for f in record["fields"] if f["name"] not in nested[field["name"]]]
    return older


def with_field(schema: dict, field: dict) -> dict:
    """A newer variant of a schema: one more top-level field."""
    newer = copy.deepcopy(schema)
    newer["fields"].append(field)
    return newer
