"""The fake Anthropic API proven against the real `anthropic` SDK and raw HTTP.

If the SDK pointed straight at the fake parses its streams and raises the right
error classes, the fake speaks the protocol well enough to stand in for the
real API in proxy and end-to-end tests.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anthropic
import httpx2
import orjson
import pytest

from tests.fakes.anthropic import (
    ERROR_TYPES,
    PING,
    FakeAnthropic,
    Usage,
    count_tokens,
    disconnect_stream,
    empty_stream,
    error_mid_stream,
    error_reply,
    json_message,
    long_text,
    run_in_thread,
    text_stream,
    thinking_stream,
    tool_use_stream,
    unknown_types_stream,
    web_search_stream,
)

ROOT = Path(__file__).resolve().parents[2]
SSE_EVENT = re.compile(rb"event: ([a-z_]+)\ndata: ([^\n]+)\n\n")
HELLO = [{"role": "user", "content": "say hello"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-ant-test-0000", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def events_of(payload: bytes) -> list[tuple[str, dict]]:
    """Parse SSE strictly: the body must be nothing but `event:`/`data:` frames."""
    frames = SSE_EVENT.findall(payload)
    assert b"".join(b"event: %s\ndata: %s\n\n" % frame for frame in frames) == payload
    return [(name.decode(), orjson.loads(data)) for name, data in frames]


# --- The SDK parses every stream shape -------------------------------------------------


async def test_default_json_answer_echoes_the_model(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(model="claude-opus-4-8", max_tokens=64, messages=HELLO)
    assert message.id.startswith("msg_01")
    assert message.model == "claude-opus-4-8"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert fake.requests[0].json()["messages"] == HELLO


async def test_default_stream_parses_event_by_event(client: anthropic.AsyncAnthropic) -> None:
    stream = await client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=HELLO, stream=True)
    kinds = [event.type async for event in stream]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_long_answer_mode_sends_the_bytes_in_small_deltas() -> None:
    async with FakeAnthropic(answer_bytes=100_000, delta_bytes=20) as server:
        async with anthropic.AsyncAnthropic(base_url=server.url, api_key="sk-ant-test-0000", max_retries=0) as sdk:
            stream = await sdk.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=HELLO, stream=True)
            deltas = [event.delta.text async for event in stream if event.type == "content_block_delta"]
    assert len(deltas) == 5000 and {len(delta) for delta in deltas} == {20}
    assert "".join(deltas) == long_text(100_000)
    assert long_text(100_000).startswith("word0000000 word0000001 ") and len(long_text(100_000).encode()) == 100_000


async def test_text_stream_final_message_has_final_usage(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    usage = Usage(input_tokens=7, output_tokens=42, cache_read_input_tokens=900, cache_creation_input_tokens=30)
    fake.enqueue(text_stream("Hello there, friend.", deltas=5, usage=usage, ping=True, pace=0.001))
    async with client.messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
        texts = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert len(texts) == 5 and "".join(texts) == "Hello there, friend."
    assert message.usage.output_tokens == 42
    assert message.usage.cache_read_input_tokens == 900
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 30


async def test_tool_use_input_survives_arbitrary_fragments(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    tool_input = {"command": 'echo "héllo\\n" | wc -c', "timeout": 1.5, "nested": {"list": [1, None, True]}}
    fake.enqueue(tool_use_stream("Bash", tool_input, fragments=9, tool_id="toolu_01abc"))
    async with client.messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["text", "tool_use"]
    tool = message.content[1]
    assert (tool.id, tool.name, tool.input) == ("toolu_01abc", "Bash", tool_input)


async def test_thinking_and_redacted_thinking(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.enqueue(thinking_stream("Let me think.", "Hi!", signature="sig-123", redacted=True))
    async with client.messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
        message = await stream.get_final_message()
    assert [block.type for block in message.content] == ["thinking", "redacted_thinking", "text"]
    assert (message.content[0].thinking, message.content[0].signature) == ("Let me think.", "sig-123")
    assert message.content[1].data and message.content[2].text == "Hi!"


async def test_web_search_blocks_and_citations(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.enqueue(web_search_stream("kraft", "No ZooKeeper.", url="https://kafka.apache.org/"))
    async with client.messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
        message = await stream.get_final_message()
    search, result, text = message.content
    assert (search.type, search.name, search.input) == ("server_tool_use", "web_search", {"query": "kraft"})
    assert result.type == "web_search_tool_result" and result.tool_use_id == search.id
    assert text.citations[0].url == "https://kafka.apache.org/" and text.text == "No ZooKeeper."
    assert message.usage.server_tool_use.web_search_requests == 1


async def test_unknown_types_reach_the_client_untouched(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    reply = unknown_types_stream()
    fake.enqueue(reply)
    async with http.post(f"{fake.url}/v1/messages", json={"stream": True}) as response:
        body = await response.read()
    assert body == reply.payload
    names = [name for name, _ in events_of(body)]
    assert "future_event" in names
    blocks = [data["content_block"]["type"] for name, data in events_of(body) if name == "content_block_start"]
    assert blocks == ["future_block", "text"]


# --- Failures the SDK must recognise -------------------------------------------------------


@pytest.mark.parametrize("status", sorted(ERROR_TYPES))
async def test_error_statuses_map_to_sdk_classes(status: int, fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    reply = error_reply(status, "scripted failure")
    fake.enqueue(reply)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await client.messages.create(model="m", max_tokens=8, messages=HELLO)
    error = caught.value
    assert error.status_code == status
    assert error.type == ERROR_TYPES[status] and error.api_message == "scripted failure"
    assert error.request_id == reply.request_id == error.body["request_id"]
    expected = {400: anthropic.BadRequestError, 401: anthropic.AuthenticationError, 429: anthropic.RateLimitError}
    assert isinstance(error, expected.get(status, anthropic.APIStatusError))
    if status == 429:
        assert error.response.headers["retry-after"] == "1"
    if status >= 500:
        assert isinstance(error, anthropic.InternalServerError)


async def test_sdk_retries_scripted_overloads_with_the_same_body(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    quick = (("retry-after-ms", "1"),)
    fake.enqueue(error_reply(529, headers=quick), error_reply(529, headers=quick), json_message("third time"))
    message = await client.with_options(max_retries=2).messages.create(model="m", max_tokens=8, messages=HELLO)
    assert message.content[0].text == "third time"
    assert len(fake.requests) == 3 and len({request.body for request in fake.requests}) == 1


async def test_error_event_after_the_200(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.enqueue(error_mid_stream())
    seen = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(model="m", max_tokens=8, messages=HELLO) as stream:
            seen = [event.type async for event in stream]
    assert caught.value.status_code == 200 and seen == []
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


async def test_empty_stream_is_a_bare_200(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    fake.enqueue(empty_stream())
    async with http.post(f"{fake.url}/v1/messages", json={"stream": True}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert await response.read() == b""


async def test_disconnect_cuts_the_chunked_body(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    """Mid-body, the SDK raises its connection error (older releases let their HTTP library's through): the
    events before the cut were parsed."""
    fake.enqueue(disconnect_stream(after=3))
    seen = []
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError), match="incomplete chunked read"):
        stream = await client.messages.create(model="m", max_tokens=8, messages=HELLO, stream=True)
        async for event in stream:
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta"]


async def test_slow_reply_trips_the_client_timeout(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.enqueue(json_message(delay=30))
    with pytest.raises(anthropic.APITimeoutError):
        await client.with_options(timeout=0.2).messages.create(model="m", max_tokens=8, messages=HELLO)


# --- Wire details ------------------------------------------------------------------------------


async def test_stream_bytes_are_exact_sse(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    reply = text_stream("abc", deltas=3, ping=True)
    fake.enqueue(reply)
    async with http.post(f"{fake.url}/v1/messages", json={"stream": True}) as response:
        body = await response.read()
        headers = response.headers
    assert body == reply.payload and PING in body
    assert headers["request-id"] == reply.request_id
    assert int(headers["anthropic-ratelimit-requests-remaining"]) > 0
    assert headers["Transfer-Encoding"] == "chunked"
    names = [name for name, _ in events_of(body)]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]


async def test_paced_stream_delivers_the_first_event_before_the_rest(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    """The next event is 60 s away: the first can only arrive if each write leaves at once."""
    reply = text_stream(pace=60)
    fake.enqueue(reply)
    async with http.post(f"{fake.url}/v1/messages", json={"stream": True}) as response:
        first = await response.content.readuntil(b"\n\n")
    assert first == reply.body[0]


async def test_a_client_hanging_up_mid_stream_is_reported(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    fake.enqueue(text_stream(pace=60))
    async with http.post(f"{fake.url}/v1/messages?beta=true", json={"stream": True}) as response:
        await response.content.readuntil(b"\n\n")
        response.close()
    gone = await fake.client_gone()
    assert (gone.path, gone.query) == ("/v1/messages", "beta=true")


async def test_gzip_stream_flushes_each_event(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    reply = text_stream(pace=60, gzip=True)
    fake.enqueue(reply)
    decoder = zlib.decompressobj(wbits=31)
    async with http.post(f"{fake.url}/v1/messages", json={"stream": True}) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        decoded = b""
        while not decoded.endswith(b"\n\n"):
            decoded += decoder.decompress(await response.content.readany())
    assert decoded == reply.body[0]


async def test_gzip_answers_decode_to_the_payload(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.enqueue(json_message("zipped", gzip=True), tool_use_stream(gzip=True))
    message = await client.messages.create(model="m", max_tokens=8, messages=HELLO)
    async with client.messages.stream(model="m", max_tokens=8, messages=HELLO) as stream:
        streamed = await stream.get_final_message()
    assert message.content[0].text == "zipped"
    assert streamed.content[1].input == {"command": "ls -la", "description": "List files"}


async def test_requests_are_recorded_as_sent(fake: FakeAnthropic) -> None:
    """A hand-written request: path, query, header order and case, and body must come back verbatim."""
    body = b'{"model":"m","max_tokens":1,"messages":[]}'
    head = (
        b"POST /v1/messages/count_tokens?beta=true HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: sk-ant-x\r\n"
        b"anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\nx-app: cli\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    fake.enqueue(count_tokens(9598), path="/v1/messages/count_tokens")
    reader, writer = await asyncio.open_connection(*fake.url.removeprefix("http://").split(":"))
    writer.write(head + body)
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b'{"input_tokens":9598}')
    received = fake.requests[0]
    assert (received.method, received.path, received.query, received.body) == (
        "POST",
        "/v1/messages/count_tokens",
        "beta=true",
        body,
    )
    assert [name for name, _ in received.headers] == [
        "Host",
        "X-Api-Key",
        "anthropic-version",
        "Content-Type",
        "x-app",
        "Content-Length",
        "Connection",
    ]
    assert received.header("x-api-key") == "sk-ant-x"


async def test_other_endpoints_answer_plausibly(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    tokens = await client.messages.count_tokens(model="m", messages=HELLO)
    models = [model.id async for model in client.models.list()]
    one = await client.models.retrieve(models[0])
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("no-such-model")
    assert tokens.input_tokens > 0 and one.id == models[0] and len(models) >= 2


async def test_head_root_and_bad_json(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    async with http.head(f"{fake.url}/") as response:
        assert response.status == 200
    async with http.post(f"{fake.url}/v1/messages", data=b"{not json") as response:
        assert response.status == 400
        assert orjson.loads(await response.read())["error"]["type"] == "invalid_request_error"


# --- Outside the test's event loop -------------------------------------------------------------


def test_run_in_thread_serves_the_sync_sdk() -> None:
    with run_in_thread(deltas=4) as running:
        running.fake.enqueue(tool_use_stream("Read", {"path": "/etc/hosts"}))
        with anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0) as sdk:
            with sdk.messages.stream(model="m", max_tokens=8, messages=HELLO) as stream:
                tool = stream.get_final_message().content[1]
            chunks = [e.type for e in sdk.messages.create(model="m", max_tokens=8, messages=HELLO, stream=True)]
    assert tool.input == {"path": "/etc/hosts"}
    assert chunks.count("content_block_delta") == 4
    assert len(running.fake.requests) == 2


def test_command_line_prints_its_url_and_serves() -> None:
    command = [sys.executable, "-m", "tests.fakes.anthropic", "--port", "0", "--deltas", "2"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as server:
        try:
            url = server.stdout.readline().strip()
            with anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0) as sdk:
                message = sdk.messages.create(model="claude-x", max_tokens=8, messages=HELLO)
        finally:
            server.terminate()
    assert url.startswith("http://127.0.0.1:") and message.model == "claude-x"
    assert server.returncode == 0
