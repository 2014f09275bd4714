"""Real Claude Code requests (tests/data/samples) replayed through the pipeline.

Each sample is sent as recorded (method, path, query, headers in wire order,
body) with the fake scripted to answer as the recording's stand-in did, one
at a time so rows and samples pair up by arrival. Every one must reach
`kgb.exchanges` with its session and agent ids, its status and its whole body.

Two recordings' `stub_response` field names the stand-in's default, not what
it actually sent: the samples README says 055 got an empty stream (hence the
non-streaming retry 056) and 062 an SSE `error` after `message_start` (hence
the identical retry 063). `ACTUAL` follows the README for those two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict

from tests.e2e.conftest import Pipeline
from tests.claude_samples import sample_files
from tests.fakes.anthropic import (
    Reply,
    count_tokens,
    empty_stream,
    error_mid_stream,
    error_reply,
    json_message,
    text_stream,
    tool_use_stream,
)

ACTUAL = {"055": "empty stream", "062": "stream error"}
NOT_REPLAYED = frozenset({"content-length"})  # the body is re-serialised from its parsed form; aiohttp counts it again


@dataclass(frozen=True)
class Sample:
    name: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: Any
    stub: str

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name), None)

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    def wire_body(self) -> bytes | None:
        """Compact like the CLI's JSON.stringify, so sizes stay close to the recorded ones."""
        return None if self.body is None else json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


def load_samples() -> list[Sample]:
    """Every recording, in arrival order; a missing directory fails the run rather than testing nothing."""
    return [sample_from(path.stem, json.loads(path.read_text())) for path in sample_files()]


def sample_from(name: str, raw: dict[str, Any]) -> Sample:
    return Sample(
        name=name,
        method=raw["method"],
        path=raw["path"],
        query=raw["query"],
        headers=[(key, value) for key, value in raw["headers"]],
        body=raw["body"],
        stub=ACTUAL.get(name, raw["stub_response"]),
    )


def scripted(sample: Sample) -> Reply:
    """What the stand-in answered this sample, rebuilt with the fake's builders."""
    model = sample.model or "claude-opus-4-8"
    kind, _, detail = sample.stub.partition(" ")
    replies = {
        "404": lambda: error_reply(404, "unhandled"),
        "stream": lambda: stream_reply(detail, model),
        "empty": lambda: empty_stream(),
        "json": lambda: json_message(model=model),
        "count_tokens": lambda: count_tokens(int(detail)),
        "injected": lambda: error_reply(int(detail.split()[1]), error_type=detail.split()[2]),
    }
    assert kind in replies, f"sample {sample.name}: no reply for stub_response {sample.stub!r}"
    return replies[kind]()


def stream_reply(detail: str, model: str) -> Reply:
    return {
        "text": lambda: text_stream(model=model),
        "tool": lambda: tool_use_stream(model=model),
        "error": lambda: error_mid_stream(model=model),
    }[detail]()


def expected_session(sample: Sample) -> tuple[str, str] | None:
    """(session id, source) the capture must carry, as the header or metadata.user_id names it."""
    if session := sample.header("x-claude-code-session-id"):
        return session, "header"
    user_id = (sample.body or {}).get("metadata", {}).get("user_id")
    return (json.loads(user_id)["session_id"], "metadata_json") if user_id else None


async def replay(session: aiohttp.ClientSession, base: str, sample: Sample) -> tuple[int, bytes]:
    url = base + sample.path + (f"?{sample.query}" if sample.query else "")
    headers = CIMultiDict((key, value) for key, value in sample.headers if key.lower() not in NOT_REPLAYED)
    async with session.request(sample.method, url, headers=headers, data=sample.wire_body()) as response:
        return response.status, await response.read()


def client_session() -> aiohttp.ClientSession:
    """Sends only the recorded headers (no aiohttp User-Agent or Accept) and keeps bodies as they came."""
    skip = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
    return aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=skip)


async def test_every_sample_is_captured_with_its_session_agent_and_status(pipeline: Pipeline) -> None:
    samples = load_samples()
    statuses: list[int] = []
    async with client_session() as session:
        for sample in samples:
            reply = scripted(sample)
            pipeline.fake.enqueue(reply, path=sample.path)
            status, body = await replay(session, pipeline.url, sample)
            assert (sample.name, status) == (sample.name, reply.status)
            assert sample.method == "HEAD" or body == reply.payload, f"sample {sample.name}: body changed on the way"
            statuses.append(status)

    rows = await pipeline.wait_for_exchanges(len(samples))
    assert len(rows) == len(samples)
    for sample, status, row in zip(samples, statuses, rows, strict=True):
        check_row(sample, status, dict(row))
    assert await pipeline.dead_letters() == []


def check_row(sample: Sample, status: int, row: dict[str, Any]) -> None:
    where = f"sample {sample.name}"
    assert (row["method"], row["path"], row["query"], row["status"]) == (sample.method, sample.path, sample.query, status), where
    assert (row["agent_id"], row["parent_agent_id"]) == (
        sample.header("x-claude-code-agent-id"),
        sample.header("x-claude-code-parent-agent-id"),
    ), where
    session = expected_session(sample)
    if session is None:  # HEAD / carries neither a session nor a key
        assert row["session_source"] == "anonymous", where
    else:
        assert (row["session_key"], row["session_source"]) == session, where
    assert row["model"] == sample.model, where
    check_body_and_secrets(sample, row)
    check_outcome(sample, row)


def check_body_and_secrets(sample: Sample, row: dict[str, Any]) -> None:
    """The body whole (nothing truncated), credentials only as [REDACTED]."""
    where = f"sample {sample.name}"
    if sample.body is not None:
        assert json.loads(row["request_body"]) == sample.body, where
    headers = json.loads(row["request_headers"])
    for name in ("x-api-key", "authorization"):
        if sample.header(name) is not None:
            assert headers[name] == "[REDACTED]", where


def check_outcome(sample: Sample, row: dict[str, Any]) -> None:
    where = f"sample {sample.name}"
    if sample.stub == "stream tool":
        assert row["stop_reason"] == "tool_use" and json.loads(row["message"])["content"][-1]["type"] == "tool_use", where
    elif sample.stub in ("stream text", "json text"):
        assert row["stop_reason"] == "end_turn" and json.loads(row["message"])["content"][0]["type"] == "text", where
    elif sample.stub == "stream error":
        assert (row["error_type"], row["error_in_stream"]) == ("overloaded_error", True), where
    elif sample.stub.startswith("injected"):
        assert row["error_type"] == "overloaded_error", where
    elif sample.stub.startswith("count_tokens"):
        assert json.loads(row["response_body"]) == {"input_tokens": int(sample.stub.split()[1])}, where
