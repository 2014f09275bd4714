"""The Streamable HTTP relay at the byte level: a raw upstream, raw clients, what reaches each side and the topic.

The upstream here is a plain aiohttp app that records what it received and
answers what a test asks for (headers, an SSE stream with keep-alives, a
stream that dies, one that waits until its client leaves, a 401), so every
header of the 2026-07-28 transport and every failure can be checked exactly.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.capture import RedactionPolicy
from proxy.logreader import LogReader, Position
from proxy.mcp.assemble import McpAssembler
from proxy.mcp.http import target, well_known_target
from proxy.redact import BUILTIN_RULES
from proxy.upstream import Origin
from tests.e2e.scan import database_dump, hits, topic_bytes
from tests.mcp_pipeline import McpPipeline, mcp_pipeline, serving
from tests.proxy.test_app import API_KEY
from tests.topic import read_events

CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
RESULT = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "sunny"}], "isError": False}}
MODERN_HEADERS = {
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "=?base64?Z2V0X3dlYXRoZXI=?=",
    "Mcp-Param-Region": "eu-north-1",
    "Last-Event-ID": "stream-1:4",
    "Accept": "application/json, text/event-stream",
}
SSE_BODY = (
    b": keep-alive\n\n"
    b"id: s1:0\ndata:\n\n"
    b'id: s1:1\nevent: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}\n\n'
    b": keep-alive\r\n\r\n"
    b"id: s1:2\nretry: 500\ndata: " + orjson.dumps(RESULT) + b"\n\n"
)


@dataclass
class Upstream:
    """What the raw upstream received, and how its streams ended."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    left: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # a held compressed stream may end
    sent: list[bytes] = field(default_factory=list)  # the bytes of a compressed stream, as the upstream wrote them
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application(handler_args={"handler_cancellation": True})  # as servers do: a client gone cancels
        app.router.add_route("*", "/mcp", self.json)
        app.router.add_get("/mcp/session", self.listen)
        app.router.add_delete("/mcp/session", self.end_session)
        app.router.add_post("/mcp/sse", self.sse)
        app.router.add_post("/mcp/gzip", self.gzip_sse)
        app.router.add_post("/mcp/corrupt", self.corrupt_gzip_sse)
        app.router.add_post("/mcp/dies", self.dies)
        app.router.add_post("/mcp/dies-at-once", self.dies_at_once)
        app.router.add_post("/mcp/waits", self.waits)
        app.router.add_post("/mcp/thinks", self.thinks)
        app.router.add_post("/mcp/auth", self.auth)
        app.router.add_get("/.well-known/oauth-protected-resource/mcp", self.metadata)
        return app

    async def seen(self, request: web.Request) -> bytes:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, dict(request.headers), body))
        return body

    async def json(self, request: web.Request) -> web.Response:
        body = await self.seen(request)
        parsed = orjson.loads(body) if body.startswith(b"{") else None
        if parsed is None:
            return web.Response(
                status=400,
                body=b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}',
                content_type="application/json",
            )
        answer = {
            "jsonrpc": "2.0",
            "id": parsed.get("id"),
            "result": {"content": [{"type": "text", "text": parsed["params"]["arguments"]["city"]}]},
        }
        return web.Response(
            body=orjson.dumps(answer), content_type="application/json", headers={"Mcp-Session-Id": "sess-42", "X-Upstream": "yes"}
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        await self.seen(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        return response

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = await self.stream(request)
        for piece in (SSE_BODY[:20], SSE_BODY[20:77], SSE_BODY[77:]):
            await response.write(piece)
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    async def compressed(self, request: web.Request) -> web.StreamResponse:
        await self.seen(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"})
        await response.prepare(request)
        return response

    async def write(self, response: web.StreamResponse, data: bytes) -> None:
        self.sent.append(data)
        await response.write(data)

    async def gzip_sse(self, request: web.Request) -> web.StreamResponse:
        """SSE_BODY gzipped, flushed after each event as a streaming server does; held open until `release`."""
        response = await self.compressed(request)
        compressor = zlib.compressobj(wbits=31)
        for event in SSE_BODY.split(b"\n\n")[:-1]:
            await self.write(response, compressor.compress(event + b"\n\n") + compressor.flush(zlib.Z_SYNC_FLUSH))
        await self.release.wait()
        await self.write(response, compressor.flush())
        await response.write_eof()
        return response

    async def corrupt_gzip_sse(self, request: web.Request) -> web.StreamResponse:
        """Says gzip; one good event, then bytes no gzip decoder takes."""
        response = await self.compressed(request)
        compressor = zlib.compressobj(wbits=31)
        await self.write(response, compressor.compress(SSE_BODY[:20]) + compressor.flush(zlib.Z_SYNC_FLUSH))
        await asyncio.sleep(0.02)
        await self.write(response, b"\xff" * 64)
        await asyncio.sleep(0.02)
        await self.write(response, SSE_BODY[20:])
        await response.write_eof()
        return response

    async def listen(self, request: web.Request) -> web.StreamResponse:
        """The GET stream of a session: one notification, then the end."""
        response = await self.stream(request)
        await response.write(b": keep-alive\n\n" + SSE_BODY[SSE_BODY.index(b"id: s1:1") : SSE_BODY.index(b"}}\n\n") + 4])
        await response.write_eof()
        return response

    async def end_session(self, request: web.Request) -> web.Response:
        await self.seen(request)
        return web.Response(status=204, headers={"Mcp-Session-Id": request.headers["Mcp-Session-Id"]})

    async def dies(self, request: web.Request) -> web.StreamResponse:
        response = await self.stream(request)
        await response.write(SSE_BODY[: SSE_BODY.index(b"}}\n\n") + 4])
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def dies_at_once(self, request: web.Request) -> web.StreamResponse:
        """Head, an event and the connection's end in one write: the relay reads the event and the break together."""
        event = SSE_BODY[: SSE_BODY.index(b"}}\n\n") + 4]
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        assert request.transport is not None
        request.transport.write(head + b"%x\r\n" % len(event) + event + b"\r\n")
        request.transport.close()
        return web.StreamResponse()  # to a closed transport: aiohttp drops it

    async def waits(self, request: web.Request) -> web.StreamResponse:
        response = await self.stream(request)
        await response.write(b": keep-alive\n\n")
        try:
            await asyncio.sleep(60)
        finally:
            self.left.set()
        return response

    async def thinks(self, request: web.Request) -> web.Response:
        """A tool that takes its time: no answer, not even a head, until its client leaves."""
        await self.seen(request)
        try:
            await asyncio.sleep(60)
        finally:
            self.left.set()
        return web.Response()

    async def auth(self, request: web.Request) -> web.Response:
        await self.seen(request)
        challenge = f'Bearer resource_metadata="{self.url}/.well-known/oauth-protected-resource/mcp", scope="tools"'
        return web.Response(
            status=401,
            body=b'{"error":"invalid_token"}',
            content_type="application/json",
            headers={"WWW-Authenticate": challenge},
        )

    async def metadata(self, request: web.Request) -> web.Response:
        await self.seen(request)
        return web.json_response({"resource": f"{self.url}/mcp", "authorization_servers": ["http://127.0.0.1:1/"]})


@dataclass
class Relay:
    pipeline: McpPipeline
    upstream: Upstream

    async def events(self, count: int) -> list[dict[str, Any]]:
        return await read_events(self.pipeline.bootstrap, self.pipeline.mcp_topic, count, schema="mcp")


@pytest.fixture
async def relay(kafka, database: str, tmp_path: Path) -> AsyncIterator[Relay]:
    upstream = Upstream()
    async with serving(upstream.app()) as url:
        upstream.url = url
        upstreams = {"raw": f"{url}/mcp", "ws": "ws://127.0.0.1:9/", "down": "http://127.0.0.1:9/mcp"}
        async with mcp_pipeline(kafka.bootstrap, database, tmp_path / "spool", upstreams) as pipeline:
            yield Relay(pipeline, upstream)


def by_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


def assert_the_sse_answers_messages(messages: list[dict[str, Any]]) -> None:
    """The messages of a call answered with SSE_BODY: the request, then each event with data, its SSE fields kept."""
    assert [m["jsonrpc"][0]["kind"] for m in messages] == ["REQUEST", "NOTIFICATION", "RESPONSE"]
    assert [m["sse"] for m in messages[1:]] == [
        {"id": "s1:1", "event": "message", "retry": None},
        {"id": "s1:2", "event": "message", "retry": 500},
    ]
    assert orjson.loads(messages[2]["payload"]) == RESULT


async def test_2026_headers_pass_untouched_both_ways(relay: Relay) -> None:
    headers = {**MODERN_HEADERS, "Authorization": "Bearer " + "t0ken" * 6, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.pipeline.at("raw", "?tenant=a"), data=orjson.dumps(CALL), headers=headers) as response:
            body = await response.read()
            got = dict(response.headers)

    ((method, path, seen, sent),) = relay.upstream.requests
    assert (method, path, sent) == ("POST", "/mcp?tenant=a", orjson.dumps(CALL))
    for name, value in headers.items():
        assert seen[name] == value, name
    assert got["Mcp-Session-Id"] == "sess-42" and got["X-Upstream"] == "yes"
    assert orjson.loads(body)["result"]["content"][0]["text"] == "Oslo"

    events = await relay.events(3)
    request, answer = by_kind(events, "MESSAGE")
    (exchange,) = by_kind(events, "EXCHANGE")
    assert {e["session_key"] for e in events} == {"sess-42"}, "the session the server named, on every event"
    assert {e["_key"] for e in events} == {b"sess-42"}
    assert request["direction"] == "CLIENT_TO_UPSTREAM" and request["jsonrpc"][0]["method"] == "tools/call"
    assert [h["name"] for h in request["mcp_headers"]] == [
        "MCP-Protocol-Version",
        "Mcp-Method",
        "Mcp-Name",
        "Mcp-Param-Region",
        "Last-Event-ID",
    ]
    assert request["protocol_version"] == "2026-07-28" and request["transport"] == "STREAMABLE_HTTP"
    assert answer["mcp_headers"] == [{"name": "Mcp-Session-Id", "value": "sess-42"}]
    http = exchange["http"]
    assert (http["method"], http["path"], http["query"], http["status"]) == ("POST", "/mcp/raw", "tenant=a", 200)
    assert {h["name"]: h["value"] for h in http["request_headers"]}["Authorization"] == "[REDACTED]"


async def test_a_get_stream_and_a_delete_pass_with_their_session_and_no_body(relay: Relay) -> None:
    session_headers = {"Mcp-Session-Id": "sess-42", "MCP-Protocol-Version": "2025-06-18", "Last-Event-ID": "s1:0"}
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.pipeline.at("raw", "/session"), headers=session_headers) as response:
            streamed = await response.read()
            assert (response.status, response.headers["Content-Type"]) == (200, "text/event-stream")
        async with session.delete(relay.pipeline.at("raw", "/session"), headers=session_headers) as response:
            assert (response.status, response.headers["Mcp-Session-Id"], await response.read()) == (204, "sess-42", b"")
    assert streamed.startswith(b": keep-alive\n\nid: s1:1") and b"notifications/progress" in streamed
    (get, delete) = relay.upstream.requests
    assert [(method, path, body) for method, path, _, body in (get, delete)] == [
        ("GET", "/mcp/session", b""),
        ("DELETE", "/mcp/session", b""),
    ]
    for _, _, seen, _ in (get, delete):
        assert {name: seen[name] for name in session_headers} == session_headers
    assert "Content-Length" not in get[2] and "Transfer-Encoding" not in get[2], "no body the client did not send"
    assert delete[2]["Content-Length"] == "0", "the empty body the client framed (aiohttp's client does for DELETE)"


async def test_an_sse_answer_streams_byte_for_byte_and_each_event_is_a_message(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.pipeline.at("raw", "/sse"), data=orjson.dumps(CALL), headers=MODERN_HEADERS) as response:
            chunks = [chunk async for chunk in response.content.iter_any()]
            content_type = response.headers["Content-Type"]
    assert b"".join(chunks) == SSE_BODY, "keep-alive comments and priming events pass as sent"
    assert content_type == "text/event-stream"

    assert_the_sse_answers_messages(by_kind(await relay.events(4), "MESSAGE"))
    (call,) = await relay.pipeline.calls(1)
    assert call["result"] == RESULT["result"] and call["notifications"][0]["params"]["progress"] == 1


async def test_a_gzip_sse_answer_streams_compressed_byte_for_byte_and_its_open_state_is_saved(relay: Relay) -> None:
    """The relay logs the stream decoded: its events are the plain stream's, and while it is open the worker can
    save its state (so the checkpoint may pass its head), as for a plain stream: read from the relay's own log."""
    spool = Path(relay.pipeline.env["KGB_SPOOL_DIR"])
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(relay.pipeline.at("raw", "/gzip"), data=orjson.dumps(CALL), headers=MODERN_HEADERS) as response:
            events = await relay.events(3)  # the request and both events, published while the stream is open
            assembler = McpAssembler(RedactionPolicy(BUILTIN_RULES, frozenset(), b""))
            for read in LogReader(spool, Position(0, 0)).poll():
                assembler.feed(read)
            ((exchange, _),) = assembler.open_starts()
            assert assembler.snapshot(exchange) is not None, "the open compressed stream's state can be saved"
            relay.upstream.release.set()
            streamed = await response.read()
            assert response.headers["Content-Encoding"] == "gzip"
    assert streamed == b"".join(relay.upstream.sent), "the client gets the upstream's compressed bytes untouched"
    assert_the_sse_answers_messages(by_kind(events, "MESSAGE"))
    (exchange,) = by_kind(await relay.events(4), "EXCHANGE")
    assert exchange["http"]["response_body_size"] == len(streamed), "the body's size as it crossed"


async def test_a_corrupt_gzip_sse_answer_still_reaches_the_client_whole_and_is_captured(relay: Relay) -> None:
    """The relay's decoding stops at the bad bytes; the client's stream never breaks."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(
            relay.pipeline.at("raw", "/corrupt"), data=orjson.dumps(CALL), headers=MODERN_HEADERS
        ) as response:
            streamed = await response.read()
    assert streamed == b"".join(relay.upstream.sent)
    events = await relay.events(4)
    assert [m["jsonrpc"][0]["kind"] for m in by_kind(events, "MESSAGE")] == ["REQUEST", "NOTIFICATION", "RESPONSE"], (
        "the bytes after the break are taken as sent (here, plain SSE)"
    )
    (exchange,) = by_kind(events, "EXCHANGE")
    http = exchange["http"]
    assert (http["status"], http["upstream_complete"], http["response_body_size"]) == (200, True, len(streamed))
    assert exchange["error_type"] is None


async def test_an_unknown_name_gets_404_with_a_jsonrpc_error_and_is_captured(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        for name in ("nope", "ws"):
            async with session.post(relay.pipeline.at(name), data=orjson.dumps(CALL)) as response:
                assert response.status == 404
                answer = await response.json()
                assert answer["id"] == 7 and answer["error"]["data"]["type"] == "unknown_server"
                assert name in answer["error"]["message"]
    assert relay.upstream.requests == []
    exchanges = {e["upstream"]: e for e in by_kind(await relay.events(6), "EXCHANGE")}  # two sessions: any partition order
    assert {name: e["error_type"] for name, e in exchanges.items()} == {"nope": "unknown_server", "ws": "unknown_server"}
    assert "ws://HOST:PORT/?upstream=ws" in exchanges["ws"]["error_message"]
    calls = await relay.pipeline.calls(2)
    assert sorted((c["server"], c["is_error"]) for c in calls) == [("nope", True), ("ws", True)]


async def test_an_unreachable_upstream_gets_502(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.pipeline.at("down"), data=orjson.dumps(CALL)) as response:
            assert response.status == 502
            assert (await response.json())["error"]["data"]["type"] == "upstream_unreachable"
    (exchange,) = by_kind(await relay.events(3), "EXCHANGE")
    assert exchange["error_type"] == "upstream_unreachable" and exchange["upstream_url"] == "http://127.0.0.1:9/mcp"


async def test_a_body_that_is_not_json_is_relayed_and_flagged(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.pipeline.at("raw"), data=b"this is { not json") as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == -32700
    assert relay.upstream.requests[0][3] == b"this is { not json"
    sent, answer = by_kind(await relay.events(3), "MESSAGE")
    assert (sent["error_type"], sent["jsonrpc"], sent["payload"]) == ("not_json", [], b"this is { not json")
    assert answer["jsonrpc"][0]["kind"] == "ERROR"
    (row,) = await relay.pipeline.wait_for("SELECT flag, payload_text FROM mcp_messages WHERE flag IS NOT NULL", bool)
    assert (row["flag"], row["payload_text"]) == ("not_json", "this is { not json")


async def test_a_server_that_dies_mid_stream_cuts_the_client_and_what_came_is_kept(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.pipeline.at("raw", "/dies"), data=orjson.dumps(CALL)) as response:
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    events = await relay.events(3)
    (notification,) = [m for m in by_kind(events, "MESSAGE") if m["direction"] == "UPSTREAM_TO_CLIENT"]
    assert notification["jsonrpc"][0]["method"] == "notifications/progress"
    (exchange,) = by_kind(events, "EXCHANGE")
    assert exchange["error_type"] == "upstream_gone" and not exchange["http"]["upstream_complete"]


async def test_a_server_that_drops_the_stream_right_after_an_event_is_not_taken_for_its_end(relay: Relay) -> None:
    """The event and the connection's end leave the server in one write: the event goes on, and the client's
    answer is cut, not ended cleanly (a client that resumes, with Last-Event-ID, needs to see the break)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.post(relay.pipeline.at("raw", "/dies-at-once"), data=orjson.dumps(CALL)) as response:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
    exchanges = by_kind(await relay.events(15), "EXCHANGE")
    assert [(e["error_type"], e["http"]["upstream_complete"]) for e in exchanges] == [("upstream_gone", False)] * 5


async def test_a_client_that_leaves_mid_stream_closes_the_upstream_stream(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        response = await session.post(relay.pipeline.at("raw", "/waits"), data=orjson.dumps(CALL))
        assert await response.content.readline() == b": keep-alive\n"
        response.close()
    await asyncio.wait_for(relay.upstream.left.wait(), 30)
    (exchange,) = by_kind(await relay.events(2), "EXCHANGE")
    assert exchange["http"]["client_disconnected"] and exchange["http"]["status"] == 200


async def test_a_client_that_leaves_before_the_answer_cancels_upstream_and_the_exchange_ends(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        call = asyncio.create_task(session.post(relay.pipeline.at("raw", "/thinks"), data=orjson.dumps(CALL)))
        while not relay.upstream.requests:
            await asyncio.sleep(0.01)
        call.cancel()
    await asyncio.wait_for(relay.upstream.left.wait(), 30)
    events = await relay.events(2)
    (request,) = by_kind(events, "MESSAGE")
    (exchange,) = by_kind(events, "EXCHANGE")
    assert request["jsonrpc"][0]["method"] == "tools/call", "the request is kept though no answer came"
    assert exchange["http"]["client_disconnected"] and exchange["http"]["status"] is None


async def test_oauth_challenges_and_metadata_pass_through(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.pipeline.at("raw", "/auth"), data=orjson.dumps(CALL)) as response:
            assert response.status == 401
            challenge = response.headers["WWW-Authenticate"]
        async with session.get(f"{relay.pipeline.relay}/.well-known/oauth-protected-resource/mcp/raw") as response:
            metadata = await response.json()
    assert challenge.startswith('Bearer resource_metadata="') and 'scope="tools"' in challenge
    assert metadata["resource"] == f"{relay.upstream.url}/mcp"
    assert relay.upstream.requests[-1][:2] == ("GET", "/.well-known/oauth-protected-resource/mcp")
    exchanges = by_kind(await relay.events(4), "EXCHANGE")
    assert [e["http"]["status"] for e in exchanges] == [401, 200]


async def test_planted_secrets_reach_neither_the_topic_nor_the_database(relay: Relay) -> None:
    planted = {"Authorization": f"Bearer {API_KEY}", **MODERN_HEADERS}
    call = {**CALL, "params": {"name": "get_weather", "arguments": {"city": API_KEY}}}
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.pipeline.at("raw"), data=orjson.dumps(call), headers=planted) as response:
            echoed = await response.read()
    assert API_KEY.encode() in echoed, "the client gets the result untouched"
    assert relay.upstream.requests[0][2]["Authorization"] == f"Bearer {API_KEY}", "the upstream gets the key"
    (row,) = await relay.pipeline.calls(1)
    assert "[REDACTED:anthropic_key]" in orjson.dumps(row["arguments"]).decode()
    everything = b"".join(await topic_bytes(relay.pipeline.bootstrap, relay.pipeline.mcp_topic))
    assert hits(everything, API_KEY) == {}
    assert hits(await asyncio.to_thread(database_dump, relay.pipeline.database), API_KEY) == {}


def test_the_client_chooses_the_path_and_query_never_the_host() -> None:
    origin = Origin("http", "127.0.0.1", 8)
    assert target("http://127.0.0.1:8/mcp?token=s", "", "a=1") == (origin, "/mcp?token=s&a=1")
    assert target("http://127.0.0.1:8/mcp/", "/x/y", "") == (origin, "/mcp/x/y")
    assert target("http://127.0.0.1:8/mcp", "/@evil.example/..", "") == (origin, "/mcp/@evil.example/..")
    assert target("http://127.0.0.1:8/mcp", "/a b\rc", "") == (origin, "/mcp/a%20b%0Dc"), "a decoded tail goes encoded again"
    assert well_known_target("http://127.0.0.1:8/api/mcp", "oauth-protected-resource", "", "") == (
        origin,
        "/.well-known/oauth-protected-resource/api/mcp",
    )
