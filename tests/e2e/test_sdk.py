"""The real `anthropic` SDK through the whole pipeline.

Three promises: a client gets through the proxy exactly what it gets from the
API directly (status, body bytes, end-to-end headers); every exchange lands in
PostgreSQL; and a planted API key, sent as the client's credential (this SDK
sends `Authorization: Bearer`), inside the prompt, and echoed in answers and an
error message, appears nowhere on the topic or in the database.

Direct and proxied calls get the same `Reply` object, so even the message and
request ids match and the comparison can be byte for byte.
"""

from __future__ import annotations

import dataclasses
import gzip
import secrets
from typing import Any

import anthropic
import pytest

from proxy.app import HOP_BY_HOP
from tests.e2e.conftest import Pipeline
from tests.e2e.scan import database_dump, hits, topic_bytes
from tests.fakes.anthropic import Reply, error_reply, json_message, text_stream, tool_use_stream

PLANTED = "sk-ant-api03-PLANTED" + secrets.token_urlsafe(64) + "-KGBe2eAA"
MODEL = "claude-opus-4-8"  # as in the samples; a model the SDK does not flag as deprecated
NOT_COMPARED = HOP_BY_HOP | {"date", "server"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One kind of answer; `reply` is what the fake sends, `stream` what the client asks for."""

    name: str
    reply: Reply
    stream: bool
    stop_reason: str | None = None
    error_type: str | None = None


def cases() -> list[Case]:
    """The answers the SDK must see unchanged; the key rides inside some of them, whole or split over deltas."""
    return [
        Case("stream-text", text_stream(f"Noted your key {PLANTED} here.", deltas=1), True, "end_turn"),
        Case("stream-text-split", text_stream(f"Split key {PLANTED} over deltas.", deltas=7), True, "end_turn"),
        Case("stream-tool", tool_use_stream(name="Bash", input={"command": "echo kgb"}), True, "tool_use"),
        Case("json", json_message(f"Plain answer quoting {PLANTED}."), False, "end_turn"),
        Case("json-gzip", gzipped(json_message("Compressed answer.")), False, "end_turn"),
        Case("error-400", error_reply(400, f"x-api-key {PLANTED} is malformed"), False, error_type="invalid_request_error"),
        Case("error-529", error_reply(529), True, error_type="overloaded_error"),
    ]


def gzipped(reply: Reply) -> Reply:
    """Compressed once, here: the fake's own `gzip=True` compresses per send with the current mtime in
    the gzip header, so two sends a second apart differ in bytes 4-7 and could not be compared."""
    body = gzip.compress(reply.payload, mtime=0)
    return dataclasses.replace(reply, body=(body,), headers=(("Content-Encoding", "gzip"),))


@dataclasses.dataclass(frozen=True)
class Seen:
    """A response as the client's socket delivered it: body bytes still compressed if they were."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def client(base_url: str) -> anthropic.AsyncAnthropic:
    """No retries: a retried 529 would take a second scripted reply and hide what the first call saw.
    Used as ``async with``, which closes its connections while the test's event loop still runs."""
    return anthropic.AsyncAnthropic(base_url=base_url, api_key=PLANTED, max_retries=0)


def params(stream: bool, **extra: Any) -> dict[str, Any]:
    prompt = f"My API key is {PLANTED}; say hello."
    return {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": prompt}], "stream": stream, **extra}


def end_to_end(headers: Any) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in headers.multi_items() if name.lower() not in NOT_COMPARED]


async def raw_call(sdk: anthropic.AsyncAnthropic, stream: bool) -> Seen:
    """The SDK's own request, its response read raw; error statuses arrive as the SDK's exceptions."""
    try:
        async with sdk.messages.with_streaming_response.create(**params(stream)) as response:
            body = b"".join([chunk async for chunk in response.http_response.aiter_raw()])
            return Seen(response.status_code, end_to_end(response.headers), body)
    except anthropic.APIStatusError as error:
        return Seen(error.status_code, end_to_end(error.response.headers), error.response.content)


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
async def test_the_sdk_sees_through_the_proxy_what_it_sees_directly(pipeline: Pipeline, case: Case) -> None:
    pipeline.fake.enqueue(case.reply, case.reply)
    async with client(pipeline.fake.url) as to_fake, client(pipeline.url) as to_proxy:
        direct = await raw_call(to_fake, case.stream)
        proxied = await raw_call(to_proxy, case.stream)

    assert proxied.status == direct.status == case.reply.status
    assert proxied.body == direct.body
    assert proxied.headers == direct.headers

    (row,) = await pipeline.wait_for_exchanges(1)
    assert (row["method"], row["path"], row["status"], row["model"]) == ("POST", "/v1/messages", case.reply.status, MODEL)
    assert (row["stop_reason"], row["error_type"]) == (case.stop_reason, case.error_type)
    assert row["session_source"] == "api_key" and row["api_key_fingerprint"]
    assert pipeline.fake.requests[1].header("authorization") == f"Bearer {PLANTED}"  # this SDK sends the key as a bearer token


async def test_the_sdk_parses_what_the_proxy_relays(pipeline: Pipeline) -> None:
    streamed, plain = text_stream("Hello through KGB.", deltas=4), json_message("Plain hello through KGB.")
    pipeline.fake.enqueue(streamed, streamed, plain, plain, error_reply(529), error_reply(529))
    async with client(pipeline.fake.url) as direct, client(pipeline.url) as proxied:
        assert await final_message(proxied) == await final_message(direct)
        assert (await proxied.messages.create(**params(False))).model_dump() == (
            await direct.messages.create(**params(False))
        ).model_dump()
        for sdk in (direct, proxied):
            with pytest.raises(anthropic.OverloadedError):
                await sdk.messages.create(**params(True))

    rows = await pipeline.wait_for_exchanges(3)
    assert [row["status"] for row in rows] == [200, 200, 529]
    assert [row["stream"] for row in rows] == [True, False, True]
    assert rows[0]["message"] is not None and "Hello through KGB." in rows[0]["message"]
    assert rows[1]["message"] is not None and "Plain hello through KGB." in rows[1]["message"]


async def final_message(sdk: anthropic.AsyncAnthropic) -> dict[str, Any]:
    async with sdk.messages.stream(**stream_params()) as stream:
        return (await stream.get_final_message()).model_dump()


def stream_params() -> dict[str, Any]:
    """`messages.stream` sets `stream` itself."""
    return {key: value for key, value in params(True).items() if key != "stream"}


async def test_a_planted_key_reaches_neither_the_topic_nor_the_database(pipeline: Pipeline) -> None:
    every = cases()
    pipeline.fake.enqueue(*(case.reply for case in every))
    for case in every:
        async with client(pipeline.url) as sdk:
            await raw_call(sdk, case.stream)
    rows = await pipeline.wait_for_exchanges(len(every))
    assert len(rows) == len(every)
    assert all("anthropic_key" in (row["request_redactions"] or []) for row in rows)

    assert pipeline.fake.requests[0].header("authorization") == f"Bearer {PLANTED}"  # the upstream still gets the real key
    on_topic = b"\n".join(await topic_bytes(pipeline.bootstrap, pipeline.topic))
    assert len(on_topic) > 0
    assert hits(on_topic, PLANTED) == {}, "the planted key is on the topic"
    dump = database_dump(pipeline.database)
    assert b"kgb.exchanges" in dump
    assert hits(dump, PLANTED) == {}, "the planted key is in the database"
