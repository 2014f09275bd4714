"""The proxy against the fake Anthropic API and a real Kafka broker.

Each test drives the proxy with a plain aiohttp client (so it sees raw bytes
and headers), then reads the published events back from the topic.
"""

from __future__ import annotations

import asyncio
import io
import dataclasses
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.app import HOP_BY_HOP, build_app
from proxy.logformat import Kind
from proxy.logreader import LogReader, Position
from proxy.settings import ProxySettings
from tests.fakes.anthropic import (
    FakeAnthropic,
    disconnect_stream,
    error_mid_stream,
    error_reply,
    json_message,
    text_stream,
    tool_use_stream,
)
from tests.capture import Served, serve_captured
from tests.services import free_port
from tests.topic import by_exchange, read_events

API_KEY = "sk-ant-api03-" + "Zz9" * 30 + "-KEEPOUT"
SESSION = "11111111-2222-4333-8444-555555555555"

HEADERS = {
    "x-api-key": API_KEY,
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
    "X-Claude-Code-Session-Id": SESSION,
    "x-claude-code-agent-id": "agent-7",
    "User-Agent": "claude-cli/2.1.3 (external, cli)",
}


def body(stream: bool = True, **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
            **extra,
        }
    )


@dataclasses.dataclass
class Stack:
    url: str
    fake: FakeAnthropic
    topic: str
    bootstrap: str

    async def events(self, count: int) -> dict[str, dict[str, dict[str, Any]]]:
        return by_exchange(await read_events(self.bootstrap, self.topic, count))


def settings_for(upstream: str, bootstrap: str, topic: str, spool: Path, **overrides: Any) -> ProxySettings:
    env = {
        "KGB_UPSTREAM_URL": upstream,
        "KGB_KAFKA_BOOTSTRAP": bootstrap,
        "KGB_TOPIC": topic,
        "KGB_SPOOL_DIR": str(spool),
        "KGB_FINGERPRINT_KEY": "test-fingerprint-key",
    }
    return dataclasses.replace(ProxySettings.from_env(env), **overrides)


async def serve(settings: ProxySettings) -> tuple[str, Served]:
    served = await serve_captured(build_app(settings), settings)
    return f"http://127.0.0.1:{served.port}", served


@pytest.fixture
async def stack(kafka, topic: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with FakeAnthropic() as fake:
        url, runner = await serve(settings_for(fake.url, kafka.bootstrap, topic, tmp_path / "spool"))
        try:
            yield Stack(url, fake, topic, kafka.bootstrap)
        finally:
            await runner.cleanup()


def end_to_end_headers(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    ignored = HOP_BY_HOP | {"date", "server"}
    return [(k, v) for k, v in response.headers.items() if k.lower() not in ignored]


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    """`data` as a body with no declared length: aiohttp sends it chunked, piece by piece."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def fetch(
    url: str, data: bytes | io.BytesIO | AsyncIterator[bytes], headers: dict[str, str] | None = None
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(url, data=data, headers=headers or HEADERS) as response:
            return response, await response.read()


async def test_streamed_answer_is_byte_identical_and_captured(stack: Stack) -> None:
    reply = tool_use_stream(name="Bash", input={"command": "ls -la"})
    stack.fake.enqueue(reply, reply)
    direct, direct_body = await fetch(stack.fake.url + "/v1/messages?beta=true", body())
    proxied, proxied_body = await fetch(stack.url + "/v1/messages?beta=true", body())

    assert proxied.status == direct.status == 200
    assert proxied_body == direct_body == reply.payload
    assert end_to_end_headers(proxied) == end_to_end_headers(direct)

    upstream_seen = stack.fake.requests[1]
    assert upstream_seen.query == "beta=true" and upstream_seen.body == body()
    assert upstream_seen.header("x-api-key") == API_KEY

    (exchange,) = (await stack.events(2)).values()
    request, response = exchange["REQUEST"], exchange["RESPONSE"]
    assert request["_key"] == SESSION.encode()
    assert (request["session_key"], request["session_source"], request["agent_id"]) == (SESSION, "header", "agent-7")
    assert request["request"]["path"] == "/v1/messages" and request["request"]["query"] == "beta=true"
    assert request["request"]["model"] == "claude-sonnet-4-5" and request["request"]["stream"] is True
    assert {"name": "x-api-key", "value": "[REDACTED]"} in request["request"]["headers"]
    assert request["api_key_fingerprint"] and API_KEY not in str(request)
    message = orjson.loads(response["response"]["message"])
    assert message["content"][-1]["input"] == {"command": "ls -la"}
    assert response["response"]["stop_reason"] == "tool_use"
    assert orjson.loads(response["response"]["usage"])["output_tokens"] > 0
    assert response["response"]["body"] == reply.payload
    assert response["response"]["upstream_complete"] and not response["response"]["client_disconnected"]
    assert response["response"]["ttfb_ms"] is not None and response["response"]["duration_ms"] >= response["response"]["ttfb_ms"]


async def test_gzip_answer_reaches_the_client_compressed_and_is_recorded_decoded(stack: Stack) -> None:
    reply = json_message("compressed hello", gzip=True)
    stack.fake.enqueue(reply)
    response, raw = await fetch(stack.url + "/v1/messages", body(stream=False))
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw) == reply.payload
    (exchange,) = (await stack.events(2)).values()
    recorded = exchange["RESPONSE"]["response"]
    assert recorded["body"] == reply.payload and recorded["content_encoding"] == "gzip"
    assert orjson.loads(recorded["message"])["content"][0]["text"] == "compressed hello"


async def test_upstream_error_json_and_headers_pass_through(stack: Stack) -> None:
    stack.fake.enqueue(error_reply(429, "slow down"))
    response, raw = await fetch(stack.url + "/v1/messages", body())
    assert response.status == 429 and response.headers["retry-after"] == "1"
    assert orjson.loads(raw)["error"]["type"] == "rate_limit_error"
    (exchange,) = (await stack.events(2)).values()
    recorded = exchange["RESPONSE"]["response"]
    assert (recorded["status"], recorded["error_type"], recorded["error_message"]) == (429, "rate_limit_error", "slow down")


async def test_error_event_after_200_is_recorded_as_a_stream_error(stack: Stack) -> None:
    stack.fake.enqueue(error_mid_stream())
    response, _ = await fetch(stack.url + "/v1/messages", body())
    assert response.status == 200
    (exchange,) = (await stack.events(2)).values()
    recorded = exchange["RESPONSE"]["response"]
    assert recorded["error_type"] == "overloaded_error" and recorded["error_in_stream"]
    assert not recorded["upstream_complete"]


async def test_body_over_the_limit_gets_413_json_and_is_captured(kafka, topic: str, tmp_path: Path) -> None:
    async with FakeAnthropic() as fake:
        url, runner = await serve(settings_for(fake.url, kafka.bootstrap, topic, tmp_path, max_body_bytes=1000))
        try:
            response, raw = await fetch(url + "/v1/messages", b"x" * 5000)
        finally:
            await runner.cleanup()
        assert fake.requests == []
    assert response.status == 413
    assert orjson.loads(raw)["error"]["type"] == "request_too_large"
    (exchange,) = by_exchange(await read_events(kafka.bootstrap, topic, 2)).values()
    assert exchange["RESPONSE"]["response"]["status"] == 413
    assert exchange["REQUEST"]["request"]["body"] == b""


async def test_over_the_limit_mid_stream_a_body_without_a_length_gets_413_and_never_reaches_upstream(
    kafka, topic: str, tmp_path: Path
) -> None:
    async with FakeAnthropic() as fake:
        url, runner = await serve(settings_for(fake.url, kafka.bootstrap, topic, tmp_path, max_body_bytes=1000))
        try:
            response, raw = await fetch(url + "/v1/messages", pieces(b"x" * 5000, 700))
        finally:
            await runner.cleanup()
        assert fake.requests == []
    assert response.status == 413 and orjson.loads(raw)["error"]["type"] == "request_too_large"
    (exchange,) = by_exchange(await read_events(kafka.bootstrap, topic, 2)).values()
    assert exchange["RESPONSE"]["response"]["status"] == 413
    assert exchange["REQUEST"]["request"]["body"] == b""


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_large_body_streams_upstream_byte_identical_and_its_event_holds_it_whole(stack: Stack, framing: str) -> None:
    large = body(stream=False, pad="".join(f"{n:07d}," for n in range(400_000)))  # 3.2 MB: several log records
    stack.fake.enqueue(json_message("got it"))
    sent = io.BytesIO(large) if framing == "content-length" else pieces(large, 65536)  # a BytesIO has a length
    response, _ = await fetch(stack.url + "/v1/messages", sent)
    assert response.status == 200
    (received,) = stack.fake.requests
    assert received.body == large
    framed = {name.lower(): value for name, value in received.headers}
    if framing == "content-length":
        assert framed["content-length"] == str(len(large)) and "transfer-encoding" not in framed
    else:
        assert framed["transfer-encoding"] == "chunked" and "content-length" not in framed
    (exchange,) = (await stack.events(2)).values()
    assert exchange["REQUEST"]["request"]["body"] == large
    assert exchange["RESPONSE"]["response"]["status"] == 200


async def test_a_client_leaving_mid_body_is_captured_with_what_it_sent_and_upstream_gets_nothing(stack: Stack) -> None:
    port = int(stack.url.rsplit(":", 1)[1])
    sent = b'{"model":"claude-sonnet-4-5","messages":[' + b" " * 30_000
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {API_KEY}\r\nContent-Length: 100000\r\n\r\n"
    writer.write(head.encode() + sent)
    await writer.drain()
    await asyncio.sleep(0.2)  # the proxy has begun forwarding it
    writer.close()
    await writer.wait_closed()
    (exchange,) = (await stack.events(2)).values()
    assert exchange["REQUEST"]["request"]["body"] == sent and exchange["REQUEST"]["request"]["body_complete"] is False
    recorded = exchange["RESPONSE"]["response"]
    assert recorded["client_disconnected"] and recorded["error_type"] == "client_disconnected"
    assert API_KEY not in repr(exchange)
    assert stack.fake.requests == []


async def test_unreachable_upstream_gets_502_json_and_is_captured(kafka, topic: str, tmp_path: Path) -> None:
    url, runner = await serve(settings_for(f"http://127.0.0.1:{free_port()}", kafka.bootstrap, topic, tmp_path))
    try:
        response, raw = await fetch(url + "/v1/messages", body())
    finally:
        await runner.cleanup()
    assert response.status == 502 and orjson.loads(raw)["error"]["type"] == "api_error"
    (exchange,) = by_exchange(await read_events(kafka.bootstrap, topic, 2)).values()
    recorded = exchange["RESPONSE"]["response"]
    assert (recorded["status"], recorded["error_type"]) == (502, "upstream_unreachable")
    assert exchange["REQUEST"]["request"]["body"] == body()


async def test_upstream_timeout_gets_504_json_and_is_captured(kafka, topic: str, tmp_path: Path) -> None:
    async with FakeAnthropic() as fake:
        fake.enqueue(text_stream(delay=5))
        url, runner = await serve(settings_for(fake.url, kafka.bootstrap, topic, tmp_path, read_timeout=0.3))
        try:
            response, raw = await fetch(url + "/v1/messages", body())
        finally:
            await runner.cleanup()
    assert response.status == 504 and orjson.loads(raw)["error"]["type"] == "timeout_error"
    (exchange,) = by_exchange(await read_events(kafka.bootstrap, topic, 2)).values()
    assert exchange["RESPONSE"]["response"]["error_type"] == "upstream_timeout"


async def test_client_leaving_mid_stream_is_flagged_with_the_partial_answer(stack: Stack) -> None:
    stack.fake.enqueue(text_stream(deltas=40, pace=0.05))
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.url + "/v1/messages", data=body(), headers=HEADERS) as response:
            first = await response.content.readany()
            assert b"message_start" in first
    (exchange,) = (await stack.events(2)).values()
    recorded = exchange["RESPONSE"]["response"]
    assert recorded["client_disconnected"] and not recorded["upstream_complete"]
    assert recorded["body"].startswith(b"event: message_start")
    assert b"message_stop" not in recorded["body"]


async def test_upstream_cut_mid_stream_breaks_the_client_stream_too(stack: Stack) -> None:
    stack.fake.enqueue(disconnect_stream(after=3))
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.url + "/v1/messages", data=body(), headers=HEADERS) as response:
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    (exchange,) = (await stack.events(2)).values()
    recorded = exchange["RESPONSE"]["response"]
    assert not recorded["upstream_complete"] and not recorded["client_disconnected"]
    assert orjson.loads(recorded["message"])["content"][0]["type"] == "text"


async def test_client_cannot_redirect_the_upstream(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("//evil.example/v1/models", "/v1/models"):
            async with session.get(stack.url + path, headers={"Host": "evil.example"}) as response:
                await response.read()
    assert [r.path for r in stack.fake.requests] == ["//evil.example/v1/models", "/v1/models"]
    assert all(r.header("host") == stack.fake.url.removeprefix("http://") for r in stack.fake.requests)


async def test_health_ready_and_metrics_are_answered_by_the_proxy(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.head(stack.url + "/") as head:
            assert head.status == 200
        async with session.get(stack.url + "/health") as health:
            assert (await health.json())["status"] == "healthy"
        async with session.get(stack.url + "/ready") as ready:
            assert ready.status == 200
        async with session.get(stack.url + "/metrics") as metrics:
            text = await metrics.text()
    assert 'kgb_requests_total{method="HEAD",status="200"} 1.0' in text
    assert [(r.method, r.path) for r in stack.fake.requests] == [("HEAD", "/")]


async def test_hop_by_hop_headers_are_not_forwarded(stack: Stack) -> None:
    headers = {**HEADERS, "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1", "Keep-Alive": "timeout=5", "TE": "trailers"}
    await fetch(stack.url + "/v1/messages", body(), headers)
    names = {name.lower() for name, _ in stack.fake.requests[0].headers}
    assert not names & {"x-drop-me", "keep-alive", "te"}
    assert "x-claude-code-session-id" in names


async def test_events_still_published_under_concurrency(stack: Stack) -> None:
    results = await asyncio.gather(*(fetch(stack.url + "/v1/messages", body()) for _ in range(20)))
    assert all(response.status == 200 for response, _ in results)
    exchanges = await stack.events(40)
    assert len(exchanges) == 20 and all(set(pair) == {"REQUEST", "RESPONSE"} for pair in exchanges.values())


async def test_passwords_in_urls_are_redacted_wherever_they_appear(stack: Stack) -> None:
    """In a user message, a tool result, a custom header, the query, a streamed and a JSON answer:
    the password goes, the URL around it stays readable."""
    password = "Hunter2-not-for-the-topic"
    dsn = f"postgresql://winni:{password}@db.internal:5432/winni"
    stack.fake.enqueue(text_stream(f"Connect with {dsn} then.", deltas=1), json_message(f"Or use {dsn}."))
    messages = [
        {"role": "user", "content": f"my database is {dsn}"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "env"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": f"DATABASE_URL={dsn}"}]},
    ]
    headers = {**HEADERS, "X-Upstream-Dsn": dsn}
    query = "beta=true&dsn=" + quote(dsn, safe="")
    for stream in (True, False):
        response, _ = await fetch(f"{stack.url}/v1/messages?{query}", body(stream=stream, messages=messages), headers)
        assert response.status == 200

    events = [event for exchange in (await stack.events(4)).values() for event in exchange.values()]
    assert password not in repr(events) and quote(password) not in repr(events)
    request = events[0]["request"]
    assert b"postgresql://winni:[REDACTED:url_password]@db.internal:5432/winni" in request["body"]
    assert {"name": "X-Upstream-Dsn", "value": "postgresql://winni:[REDACTED:url_password]@db.internal:5432/winni"} in request[
        "headers"
    ]
    assert "url_password" in events[0]["redactions"] and all("url_password" in e["redactions"] for e in events)


async def early_answer(status: int, *, read_first: int, hang_up: bool) -> tuple[aiohttp.web.AppRunner, str]:
    """An upstream that takes `read_first` bytes of a body and answers `status` while the client is still
    sending, the way a server refusing a body too large for it does; then hangs up, or reads the rest
    and drops it (aiohttp's lingering read)."""

    async def refuse(request: aiohttp.web.Request) -> aiohttp.web.Response:
        await request.content.readexactly(read_first)
        answer = aiohttp.web.json_response(
            {"type": "error", "error": {"type": "request_too_large", "message": "no"}}, status=status
        )
        if hang_up:
            answer.force_close()
        return answer

    app = aiohttp.web.Application()
    app.router.add_post("/v1/messages", refuse)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def slowly(piece: bytes, count: int, every: float) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield piece
        await asyncio.sleep(every)


@pytest.mark.parametrize(("status", "hang_up"), [(413, True), (400, True), (413, False)])
async def test_an_upstream_answering_before_the_body_ends_reaches_the_client_and_the_partial_body_is_flagged(
    kafka, topic: str, tmp_path: Path, status: int, hang_up: bool
) -> None:
    piece = b"y" * 4096
    upstream, upstream_url = await early_answer(status, read_first=len(piece), hang_up=hang_up)
    url, runner = await serve(settings_for(upstream_url, kafka.bootstrap, topic, tmp_path))
    try:
        response, raw = await asyncio.wait_for(fetch(url + "/v1/messages", slowly(piece, 40, 0.02)), 30)
    finally:
        await runner.cleanup()
        await upstream.cleanup()
    assert response.status == status
    assert orjson.loads(raw)["error"]["type"] == "request_too_large"
    (exchange,) = by_exchange(await read_events(kafka.bootstrap, topic, 2)).values()
    recorded, sent = exchange["RESPONSE"]["response"], exchange["REQUEST"]["request"]["body"]
    assert recorded["status"] == status and orjson.loads(recorded["body"])["error"]["type"] == "request_too_large"
    assert sent.startswith(piece) and set(sent) == {ord("y")} and len(sent) < 40 * len(piece)
    assert recorded["error_type"] == "capture_incomplete"


async def test_the_exchange_is_in_the_log_whole_by_the_time_the_client_has_the_answer(tmp_path: Path) -> None:
    """The last chunk and the END leave in one log write before the last bytes go on: a relay killed once the
    client has its answer has the exchange in its log, ended, however soon after (no worker runs here)."""
    spool = tmp_path / "spool"
    reader = LogReader(spool, Position(0, 0))
    async with FakeAnthropic() as fake:
        fake.enqueue(text_stream("streamed", deltas=20), json_message("whole"))
        runner = web.AppRunner(build_app(settings_for(fake.url, "127.0.0.1:1", "unused", spool)))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", free_port())
        await site.start()
        try:
            for stream in (True, False):
                proxied, answer = await fetch(site.name + "/v1/messages", body(stream=stream))
                assert proxied.status == 200 and answer
                records = [read.record for read in reader.poll() if read.record.kind is not Kind.WRITER_START]
                assert len({record.exchange for record in records}) == 1
                kinds = [record.kind for record in records]
                assert kinds[:4] == [Kind.REQUEST_HEAD, Kind.REQUEST_BODY, Kind.REQUEST_END, Kind.RESPONSE_HEAD]
                assert set(kinds[4:-1]) == {Kind.RESPONSE_CHUNK} and kinds[-1] is Kind.END
                assert b"".join(record.payload for record in records[4:-1]) == answer
        finally:
            await runner.cleanup()
