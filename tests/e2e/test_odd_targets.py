"""Every request the proxy answers is captured, whatever its request line looks like (issue 13, item 12).

A `%0A` in a path decodes to a newline the router's `.*` did not match, and a
CONNECT's `host:port` or an OPTIONS `*` is no path at all: each got aiohttp's
bare 404, and no event. Sent here as raw request lines (no client library
would send them), then looked for on the topic and in winni.
"""

from __future__ import annotations

import asyncio

import orjson

from tests.e2e.conftest import Pipeline
from tests.topic import by_exchange, read_events

BODY = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})


async def send_raw(url: str, request_line: str, body: bytes = b"") -> bytes:
    """One request on its own connection; returns the status line."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = f"{request_line}\r\nHost: {host}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    return answer.split(b"\r\n", 1)[0]


async def test_odd_request_targets_are_answered_and_captured(pipeline: Pipeline) -> None:
    sent = [
        ("GET /v1/models%0A HTTP/1.1", b""),
        ("POST /v1/messages%0D%0AX-Injected:%201 HTTP/1.1", BODY),
        ("CONNECT evil.example:443 HTTP/1.1", b""),
        ("OPTIONS * HTTP/1.1", b""),
    ]
    statuses = [await send_raw(pipeline.url, line, body) for line, body in sent]
    assert statuses == [
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 400 Bad Request",
    ]
    # The two paths went upstream still encoded (no header was injected); the other two went nowhere.
    assert [(r.method, r.path) for r in pipeline.fake.requests] == [
        ("GET", "/v1/models%0A"),
        ("POST", "/v1/messages%0D%0AX-Injected:%201"),
    ]
    assert all(r.header("x-injected") is None for r in pipeline.fake.requests)

    exchanges = by_exchange(await read_events(pipeline.bootstrap, pipeline.topic, 2 * len(sent)))
    captured = {(e["REQUEST"]["request"]["method"], e["REQUEST"]["request"]["path"]): e for e in exchanges.values()}
    assert set(captured) == {
        ("GET", "/v1/models%0A"),
        ("POST", "/v1/messages%0D%0AX-Injected:%201"),
        ("CONNECT", "evil.example:443"),
        ("OPTIONS", "*"),
    }
    assert captured["POST", "/v1/messages%0D%0AX-Injected:%201"]["REQUEST"]["request"]["body"] == BODY
    refused = captured["CONNECT", "evil.example:443"]["RESPONSE"]["response"]
    assert (refused["status"], refused["error_type"]) == (400, "target_not_relayed")

    rows = await pipeline.wait_for_exchanges(len(sent))
    assert sorted((row["method"], row["path"], row["status"]) for row in rows) == [
        ("CONNECT", "evil.example:443", 400),
        ("GET", "/v1/models%0A", 404),
        ("OPTIONS", "*", 400),
        ("POST", "/v1/messages%0D%0AX-Injected:%201", 404),
    ]
    assert await pipeline.dead_letters() == []
