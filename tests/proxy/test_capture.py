"""The events the proxy builds hold no secret in any field they store, whatever form the secret takes."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from common.documents import parse_json
from proxy.capture import (
    EVENT_NAMESPACE,
    Ending,
    RedactionPolicy,
    RequestRecord,
    ResponseRecorder,
    event_id,
    request_event,
    response_event,
)
from proxy.mcp.events import Message, message_fields
from proxy.redact import BUILTIN_RULES
from tests.proxy.planted import ANTHROPIC_KEY, SECRETS, escaped, sse, text_delta

POLICY = RedactionPolicy(BUILTIN_RULES, frozenset(), b"test-key")
COMPLETE = Ending(client_disconnected=False, upstream_complete=True, ttfb_ms=None, duration_ms=0.0, ended_at=0)
GITHUB = SECRETS["github_token"]


def request(*, path: str = "/v1/messages", headers: list[tuple[str, str]] | None = None, body: Any = None) -> RequestRecord:
    payload = body if body is not None else {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
    return RequestRecord(
        method="POST",
        path=path,
        query="",
        http_version="1.1",
        headers=headers or [("content-type", "application/json")],
        body=orjson.dumps(payload),
    )


def response(record: RequestRecord, body: bytes, *, sse_stream: bool = True) -> dict[str, Any]:
    content_type = "text/event-stream" if sse_stream else "application/json"
    recorder = ResponseRecorder(record, 200, [("content-type", content_type)])
    recorder.feed(body)
    finished = recorder.finish(COMPLETE)
    return response_event(record, finished, request_event(record, POLICY)[1], POLICY)


def stored_forms(value: Any) -> bytes:
    """Every string of the event as a reader gets it: as sent, and, where it is JSON or an
    event stream of JSON, decoded (escapes resolved) too, and so on down: a string of that JSON
    may be JSON again (a tool's streamed input in `partial_json`)."""
    if isinstance(value, dict):
        return b"\n".join(stored_forms(item) for item in value.values())
    if isinstance(value, list):
        return b"\n".join(stored_forms(item) for item in value)
    if not isinstance(value, (str, bytes)):
        return b""
    raw = value.encode() if isinstance(value, str) else value
    lines = [raw, *(line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:"))]
    documents = [parsed for parsed in map(parse_json, lines) if parsed is not None]
    return b"\n".join([raw, *map(decoded, documents), *map(stored_forms, documents)])


def decoded(document: Any) -> bytes:
    """The document written back with its escapes resolved; nothing for one too deep for orjson to write."""
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:
        return b""


def leaks(event: dict[str, Any], *secrets: str) -> list[str]:
    """The secrets, or a half of one, found in any stored form of the event."""
    forms = stored_forms(event)
    halves = [part for secret in secrets for part in (secret[: len(secret) // 2], secret[len(secret) // 2 :])]
    return [secret for secret in [*secrets, *halves] if secret.encode() in forms]


def test_a_secret_in_the_path_is_redacted_plain_and_percent_encoded() -> None:
    for path in (f"/v1/messages/{GITHUB}", "/v1/x/" + "".join(f"%{b:02X}" for b in GITHUB.encode())):
        event, _ = request_event(request(path=path), POLICY)
        assert leaks(event, GITHUB) == [] and "github_token" in event["redactions"]


def test_the_user_agent_is_stored_redacted_as_the_client() -> None:
    event, facts = request_event(request(headers=[("user-agent", f"tool/1.0 ({ANTHROPIC_KEY})")]), POLICY)
    assert facts.client == "tool/1.0 ([REDACTED:anthropic_key])" and event["client"] == facts.client


def test_a_secret_in_metadata_user_id_or_the_model_does_not_become_a_session_key() -> None:
    body = {"model": f"m-{GITHUB}", "metadata": {"user_id": f"me {ANTHROPIC_KEY}"}, "messages": []}
    event, _ = request_event(request(body=body), POLICY)
    assert leaks(event, GITHUB, ANTHROPIC_KEY) == []
    assert event["session_key"].endswith(":user:me [REDACTED:anthropic_key]")


def test_a_json_escaped_secret_in_the_request_body_is_redacted() -> None:
    record = request()
    record.body = b'{"messages": [{"role": "user", "content": "' + escaped(ANTHROPIC_KEY).encode() + b'"}]}'
    event, _ = request_event(record, POLICY)
    assert (
        leaks(event, ANTHROPIC_KEY) == []
        and orjson.loads(event["request"]["body"])["messages"][0]["content"] == "[REDACTED:anthropic_key]"
    )


def test_a_stream_error_message_is_redacted_in_the_field_and_the_body() -> None:
    body = (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"'
        + escaped(GITHUB).encode()
        + b'"}}\n\n'
    )
    event = response(request(), body)
    assert event["response"]["error_message"] == "[REDACTED:github_token]"
    assert leaks(event, GITHUB) == []


def test_a_secret_split_across_two_deltas_leaves_neither_half_in_the_body_or_message() -> None:
    body = sse(
        (
            "message_start",
            {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": []}},
        ),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        text_delta("key " + ANTHROPIC_KEY[:20]),
        text_delta(ANTHROPIC_KEY[20:]),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_stop", {"type": "message_stop"}),
    )
    event = response(request(), body)
    assert leaks(event, ANTHROPIC_KEY) == []
    assert orjson.loads(event["response"]["message"])["content"][0]["text"] == "key [REDACTED:anthropic_key]"


def test_a_json_error_response_with_an_escaped_secret_is_redacted() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"bad ' + escaped(GITHUB).encode() + b'"}}'
    event = response(request(), body, sse_stream=False)
    assert event["response"]["error_message"] == "bad [REDACTED:github_token]" and leaks(event, GITHUB) == []


def test_an_escaped_secret_in_an_mcp_payload_is_redacted() -> None:
    payload = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"key":"' + escaped(GITHUB).encode() + b'"}}}'
    (fields,) = message_fields(Message("CLIENT_TO_SERVER", payload), POLICY)
    assert "github_token" in fields["redactions"] and leaks(fields, GITHUB) == []


def test_a_request_nested_deeper_than_orjson_writes_still_makes_its_event() -> None:
    record = request()
    record.body = b'{"messages":' + b"[" * 300 + orjson.dumps(ANTHROPIC_KEY) + b"]" * 300 + b"}"
    event, _ = request_event(record, POLICY)
    assert leaks(event, ANTHROPIC_KEY) == [] and "anthropic_key" in event["redactions"]


def test_event_ids_are_the_uuid5_of_exchange_and_kind() -> None:
    """Ids are a contract across versions: a republished event must keep its id for consumers to drop it."""
    for exchange in ("00000000-0000-0000-0000-000000000001", str(uuid.uuid4()), "ünï"):
        for kind in ("REQUEST", "RESPONSE"):
            assert event_id(exchange, kind) == str(uuid.uuid5(EVENT_NAMESPACE, f"{exchange}/{kind}"))


def test_a_secret_behind_escapes_in_a_tool_s_streamed_input_leaves_the_body_and_message() -> None:
    text = '{"command": "echo sk-ant-' + escaped(ANTHROPIC_KEY[len("sk-ant-") :]) + '"}'
    body = sse(
        (
            "message_start",
            {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": []}},
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": "Bash", "input": {}},
            },
        ),
        *(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}},
            )
            for piece in (text[:40], text[40:])
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_stop", {"type": "message_stop"}),
    )
    event = response(request(), body)
    assert leaks(event, ANTHROPIC_KEY) == []
    stored = [orjson.loads(line[5:]) for line in event["response"]["body"].splitlines() if line.startswith(b"data:")]
    joined = "".join(data["delta"]["partial_json"] for data in stored if data["type"] == "content_block_delta")
    assert orjson.loads(joined) == {"command": "echo [REDACTED:anthropic_key]"}
    assert orjson.loads(event["response"]["message"])["content"][0]["input"] == orjson.loads(joined)


def test_a_secret_only_in_a_streams_other_events_is_still_taken_from_its_bytes() -> None:
    body = sse(text_delta("plain"), ("ping", {"type": "ping", "note": GITHUB}))
    event = response(request(), body)
    assert GITHUB.encode() not in event["response"]["body"] and "github_token" in event["redactions"]
