"""The MCP WebSocket relay against the fake MCP server and a real Kafka broker.

Clients are real WebSocket clients (aiohttp, and a raw socket for a client that
vanishes without a close frame); events are read back from the topic and
decoded with the codec.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType

from common.config import SettingsError
from proxy.mcp.app import build_mcp_app
from proxy.capture import RedactionPolicy
from common.jsonrpc import jsonrpc_messages
from proxy.mcp.events import recorded_url
from proxy.redact import BUILTIN_RULES
from proxy.mcp.websocket import Ending, peer_close, reason_bytes
from proxy.settings import ProxySettings, parse_upstreams
from schemas.codec import fingerprint, history, raw_schema
from tests.e2e.scan import hits, topic_bytes
from tests.fakes.mcp_server import PROTOCOL_VERSION, FakeMcpServer
from tests.proxy.test_app import API_KEY
from tests.capture import Served, serve_captured
from tests.services import free_port
from tests.test_cli import KGB, start_proxy, wait_healthy
from tests.topic import read_events

BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrZ2ItdGVzdCJ9.c2lnbmF0dXJlLXNlY3JldA"


def request(ident: int, method: str, **params: Any) -> str:
    return orjson.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params}).decode()


SCRIPT = [
    request(1, "initialize", protocolVersion=PROTOCOL_VERSION, capabilities={}, clientInfo={"name": "t", "version": "1"}),
    orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).decode(),
    request(2, "tools/list"),
    request(3, "tools/call", name="echo", arguments={"text": "hello"}),
]


@dataclasses.dataclass
class Stack:
    url: str
    server: FakeMcpServer
    topic: str
    bootstrap: str
    runner: Served

    def at(self, name: str | None, path: str = "/") -> str:
        return self.url + path + (f"?upstream={name}" if name is not None else "")

    async def events(self, count: int) -> list[dict[str, Any]]:
        return await read_events(self.bootstrap, self.topic, count, schema="mcp")


def settings_for(upstreams: str, bootstrap: str, topic: str, spool: Path) -> ProxySettings:
    return ProxySettings.from_env(
        {
            "KGB_MCP_UPSTREAMS": upstreams,
            "KGB_KAFKA_BOOTSTRAP": bootstrap,
            "KGB_MCP_TOPIC": topic,
            "KGB_SPOOL_DIR": str(spool),
        }
    )


async def serve(settings: ProxySettings) -> tuple[str, Served]:
    served = await serve_captured(build_mcp_app(settings), settings)
    return f"ws://127.0.0.1:{served.port}", served


@pytest.fixture
async def stack(kafka, topic: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with FakeMcpServer() as server:
        upstreams = f"fake={server.url},down=ws://127.0.0.1:{free_port()}"
        url, runner = await serve(settings_for(upstreams, kafka.bootstrap, topic, tmp_path / "spool"))
        try:
            yield Stack(url, server, topic, kafka.bootstrap, runner)
        finally:
            await runner.cleanup()


async def converse(session: aiohttp.ClientSession, url: str, frames: list[str | bytes], **kw: Any) -> list[tuple[WSMsgType, Any]]:
    """Send each frame; collect what comes back (nothing for a notification), then close normally."""
    replies = []
    async with session.ws_connect(url, protocols=("mcp",), **kw) as ws:
        assert ws.protocol == "mcp"
        for frame in frames:
            await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
            if isinstance(frame, bytes) or '"id"' in frame:
                message = await ws.receive()
                replies.append((message.type, message.data))
    return replies


async def closing(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    message = await ws.receive()
    assert message.type is WSMsgType.CLOSE, message
    return message


# --- relaying --------------------------------------------------------------------------


async def test_round_trip_is_identical_to_direct(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        direct = await converse(session, stack.server.url, SCRIPT)
        relayed = await converse(session, stack.at("fake", "/any/path"), SCRIPT)

    assert relayed == direct
    assert [kind for kind, _ in relayed] == [WSMsgType.TEXT] * 3
    assert orjson.loads(relayed[0][1])["result"]["protocolVersion"] == PROTOCOL_VERSION
    assert orjson.loads(relayed[1][1])["result"]["tools"][0]["name"] == "echo"
    assert orjson.loads(relayed[2][1])["result"]["content"][0]["text"] == '{"text":"hello"}'
    first, second = stack.server.connections
    assert second.frames == first.frames
    await asyncio.wait_for(second.ended.wait(), 30)
    assert second.close_code == 1000


async def test_binary_frame_passes_untouched(stack: Stack) -> None:
    payload = bytes(range(256)) * 64 + b"\xff\x00"
    async with aiohttp.ClientSession() as session:
        replies = await converse(session, stack.at("fake"), [payload])
    assert replies == [(WSMsgType.BINARY, payload)]
    assert stack.server.connections[0].frames == [(WSMsgType.BINARY, payload)]


@pytest.mark.parametrize(("name", "said"), [("nope", "'nope'"), (None, "?upstream=NAME")])
async def test_unknown_or_missing_upstream_is_refused_with_4001(stack: Stack, name: str | None, said: str) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(stack.at(name)) as ws:
        refused = await closing(ws)
    assert refused.data == 4001
    assert said in refused.extra
    assert stack.server.connections == []
    opened, closed = await stack.events(2)
    assert (opened["kind"], closed["kind"]) == ("OPEN", "CLOSE")
    assert closed["close_code"] == 4001 and closed["error_type"] == "unknown_upstream"
    assert closed["upstream"] == (name or "") and closed["upstream_url"] is None


async def test_unreachable_upstream_closes_with_1011_and_is_captured(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(stack.at("down")) as ws:
        failed = await closing(ws)
    assert failed.data == 1011
    assert "down" in failed.extra
    _, closed = await stack.events(2)
    assert closed["close_code"] == 1011
    assert closed["error_type"] == "upstream_unreachable" and closed["error_message"]
    assert closed["upstream_url"].startswith("ws://127.0.0.1:")


async def test_upstream_close_code_reaches_the_client(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(stack.at("fake")) as ws:
        await ws.send_str(request(9, "fake/close", code=4000, reason="session expired"))
        closed = await closing(ws)
    assert (closed.data, closed.extra) == (4000, "session expired")
    *_, event = await stack.events(3)
    assert (event["kind"], event["direction"], event["close_code"]) == ("CLOSE", "UPSTREAM_TO_CLIENT", 4000)
    assert event["close_reason"] == "session expired"


async def test_client_close_code_reaches_the_upstream(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(stack.at("fake")) as ws:
        await ws.send_str(SCRIPT[0])
        await ws.receive()
        await ws.close(code=4100, message=b"client done")
    (seen,) = stack.server.connections
    await asyncio.wait_for(seen.ended.wait(), 30)
    assert seen.close_code == 4100


# --- a client that vanishes: a raw socket that drops without a close frame ------------


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.2), for payloads under 64 KiB."""
    mask = os.urandom(4)
    length = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_server_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(length)


async def test_vanishing_client_closes_the_upstream_and_is_captured(stack: Stack) -> None:
    port = int(stack.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /?upstream=fake HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    writer.write(client_frame(0x1, SCRIPT[0].encode()))
    reply = await read_server_frame(reader)
    writer.close()
    await writer.wait_closed()

    assert orjson.loads(reply)["result"]["protocolVersion"] == PROTOCOL_VERSION
    (seen,) = stack.server.connections
    await asyncio.wait_for(seen.ended.wait(), 30)
    assert seen.close_code == 1001
    events = await stack.events(4)
    assert [e["kind"] for e in events] == ["OPEN", "MESSAGE", "MESSAGE", "CLOSE"]
    closed = events[-1]
    assert (closed["direction"], closed["close_code"], closed["error_type"]) == ("CLIENT_TO_UPSTREAM", None, "client_gone")


# --- capture ------------------------------------------------------------------------------


async def test_events_are_in_order_per_connection_with_secrets_redacted(stack: Stack) -> None:
    call = request(3, "tools/call", name="echo", arguments={"text": f"key is {API_KEY}"})
    headers = {"Authorization": BEARER, "Cookie": "session=cookie-secret-value", "X-Trace": "t-1"}
    async with aiohttp.ClientSession() as session:
        replies = await converse(
            session, stack.at("fake") + "&token=query-secret", [SCRIPT[0], call, b"\x00bin"], headers=headers
        )
    assert API_KEY in orjson.loads(replies[1][1])["result"]["content"][0]["text"], "the client gets the reply untouched"
    assert stack.server.connections[0].headers["Authorization"] == BEARER, "handshake headers reach the upstream"

    events = await stack.events(8)
    (key,) = {e["_key"] for e in events}
    assert key == events[0]["connection_id"].encode()
    assert [e["sequence"] for e in events] == list(range(8))
    assert [e["kind"] for e in events] == ["OPEN"] + ["MESSAGE"] * 6 + ["CLOSE"]
    assert [e["direction"] for e in events[1:7]] == ["CLIENT_TO_UPSTREAM", "UPSTREAM_TO_CLIENT"] * 3
    assert [e["frame_type"] for e in events[1:7]] == ["TEXT"] * 4 + ["BINARY"] * 2
    assert {e["upstream"] for e in events} == {"fake"}

    handshake = events[0]["handshake"]
    assert handshake["subprotocol"] == "mcp"
    header = {h["name"].lower(): h["value"] for h in handshake["headers"]}
    assert header["authorization"] == header["cookie"] == "[REDACTED]"
    assert header["x-trace"] == "t-1"
    assert "query-secret" not in handshake["query"]

    assert [(m["kind"], m["method"], m["id"]) for e in events[1:5] for m in e["jsonrpc"]] == [
        ("REQUEST", "initialize", "1"),
        ("RESPONSE", None, "1"),
        ("REQUEST", "tools/call", "3"),
        ("RESPONSE", None, "3"),
    ]
    for frame in events[3:5]:
        assert b"[REDACTED:anthropic_key]" in frame["payload"] and "anthropic_key" in frame["redactions"]
        assert frame["payload_size"] > len(frame["payload"])
    assert events[5]["payload"] == events[6]["payload"] == b"\x00bin"
    assert events[5]["error_type"] == "binary_frame" and events[5]["jsonrpc"] == []
    assert {(e["transport"], e["session_key"]) for e in events} == {("WEBSOCKET", events[0]["connection_id"])}
    assert events[2]["protocol_version"] == events[3]["protocol_version"] == PROTOCOL_VERSION
    assert events[1]["protocol_version"] is None
    assert (events[7]["close_code"], events[7]["direction"]) == (1000, "CLIENT_TO_UPSTREAM")

    everything = b"".join(await topic_bytes(stack.bootstrap, stack.topic))
    for secret in (API_KEY, BEARER.split()[1], "cookie-secret-value", "query-secret"):
        assert hits(everything, secret) == {}, secret


async def test_shutdown_closes_relays_with_1001_and_flushes_their_close(kafka, topic: str, tmp_path: Path) -> None:
    async with FakeMcpServer() as server:
        url, runner = await serve(settings_for(f"fake={server.url}", kafka.bootstrap, topic, tmp_path / "spool"))
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url + "/?upstream=fake") as ws:
                await ws.send_str(SCRIPT[0])
                await ws.receive()
                stopping = asyncio.create_task(runner.cleanup())
                closed = await closing(ws)
            await stopping
        (seen,) = server.connections
        await asyncio.wait_for(seen.ended.wait(), 30)
    assert (closed.data, seen.close_code) == (1001, 1001)
    *_, event = await read_events(kafka.bootstrap, topic, 4, schema="mcp")
    assert (event["kind"], event["direction"], event["close_code"]) == ("CLOSE", None, 1001)


async def test_oversized_message_closes_its_sender_with_1009_and_the_other_side_learns_why(
    kafka, topic: str, tmp_path: Path
) -> None:
    async with FakeMcpServer() as server:
        settings = settings_for(f"fake={server.url}", kafka.bootstrap, topic, tmp_path / "spool")
        url, runner = await serve(dataclasses.replace(settings, mcp_max_message_bytes=1024))
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(url + "/?upstream=fake") as ws:
                await ws.send_bytes(b"x" * 2048)
                refused = await closing(ws)
            (seen,) = server.connections
            await asyncio.wait_for(seen.ended.wait(), 30)
        finally:
            await runner.cleanup()
    assert refused.data == 1009
    assert seen.frames == [] and seen.close_code == 1001
    *_, closed = await read_events(kafka.bootstrap, topic, 2, schema="mcp")
    assert (closed["error_type"], closed["direction"]) == ("protocol_error", "CLIENT_TO_UPSTREAM")
    assert "1024" in closed["error_message"]


async def test_plain_http_gets_status_pages_426_at_the_root_and_a_json_404_elsewhere(stack: Stack) -> None:
    base = stack.url.replace("ws://", "http://")
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/ready") as ready:
            assert ready.status == 200
        async with session.get(base + "/metrics") as metrics:
            assert "kgb_spool_bytes" in await metrics.text()
        async with session.get(base + "/?upstream=fake") as other:
            assert other.status == 426
        for method, path in (("GET", "/any/path"), ("POST", "/v1/messages"), ("GET", "/mcp")):
            async with session.request(method, base + path) as nowhere:
                answer = await nowhere.json()
            assert nowhere.status == 404 and answer["error"]["data"]["type"] == "no_route"
            assert f"{method} {path}" in answer["error"]["message"] and "/mcp/NAME" in answer["error"]["message"]
    assert stack.server.connections == []


# --- `kgb proxy` as users run it ------------------------------------------------------------


async def test_kgb_proxy_serves_the_relay_and_flushes_it_on_sigterm(kafka, topic: str, tmp_path: Path) -> None:
    port, mcp_port = free_port(), free_port()
    async with FakeMcpServer() as server:
        env = {
            **os.environ,
            "KGB_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "KGB_MCP_TOPIC": topic,
            "KGB_SPOOL_DIR": str(tmp_path),
            "KGB_MCP_UPSTREAMS": f"fake={server.url}",
        }
        process = await start_proxy(env, port, mcp_port, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await asyncio.wait_for(wait_healthy(f"http://127.0.0.1:{mcp_port}", process), 60)
        async with aiohttp.ClientSession() as session:
            relayed = await converse(session, f"ws://127.0.0.1:{mcp_port}/?upstream=fake", SCRIPT[:1])
        process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert f"ws://127.0.0.1:{mcp_port}/?upstream=NAME" in stdout.decode()
    assert orjson.loads(relayed[0][1])["result"]["protocolVersion"] == PROTOCOL_VERSION
    events = await read_events(kafka.bootstrap, topic, 4, schema="mcp")
    assert [e["kind"] for e in events] == ["OPEN", "MESSAGE", "MESSAGE", "CLOSE"]


def test_kgb_proxy_says_which_port_it_cannot_take(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "KGB_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "KGB_SPOOL_DIR": str(tmp_path)}
        result = subprocess.run(
            [*KGB, "proxy", "--port", str(free_port()), "--mcp-port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} (KGB_MCP_PORT)" in result.stderr


# --- pure parts -----------------------------------------------------------------------------


def test_jsonrpc_messages_are_classified() -> None:
    batch = orjson.dumps(
        [
            {"jsonrpc": "2.0", "id": "a", "method": "tools/list"},
            {"jsonrpc": "2.0", "method": "notifications/progress"},
            {"jsonrpc": "2.0", "id": 7, "result": {}},
            {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}},
            {"jsonrpc": "2.0", "id": 8, "error": {"code": 2**63 - 1, "message": 5}},
            "not a message",
        ]
    ).replace(b"9223372036854775807", b"9223372036854775808")  # past Avro's long, which orjson still reads as an int
    assert [(m["kind"], m["method"], m["id"], m["error_code"], m["error_message"]) for m in jsonrpc_messages(batch)] == [
        ("REQUEST", "tools/list", '"a"', None, None),
        ("NOTIFICATION", "notifications/progress", None, None, None),
        ("RESPONSE", None, "7", None, None),
        ("ERROR", None, "null", -32700, "parse error"),
        ("ERROR", None, "8", None, None),
    ]
    assert jsonrpc_messages(b"plain text") == jsonrpc_messages(b"[1, 2]") == []


@pytest.mark.parametrize(
    ("ending", "sent"),
    [
        (Ending("upstream", 4000, "bye"), (4000, "bye")),
        (Ending("client", 1005), (1000, "")),
        (Ending("client", None, "", "client_gone", "gone"), (1001, "client: gone")),
        (Ending("upstream", None, "", "upstream_gone", "gone"), (1011, "upstream: gone")),
        (Ending("upstream", 1006), (1011, "upstream: closed with 1006")),
    ],
)
def test_peer_gets_the_same_close_or_one_that_says_what_happened(ending: Ending, sent: tuple[int, str]) -> None:
    assert peer_close(ending) == sent


def test_recorded_upstream_url_has_no_credentials() -> None:
    policy = RedactionPolicy(BUILTIN_RULES, frozenset(), b"k")
    assert recorded_url("wss://user:pw@127.0.0.1:9020/mcp", policy) == "wss://127.0.0.1:9020/mcp"
    assert (
        recorded_url("https://127.0.0.1:9020/mcp?token=s3cret&x=1", policy) == "https://127.0.0.1:9020/mcp?token=[REDACTED]&x=1"
    )


def test_close_reason_fits_a_close_frame() -> None:
    assert len(reason_bytes("é" * 100)) == 122
    assert reason_bytes("é" * 100).decode() == "é" * 61


def test_upstreams_setting() -> None:
    assert parse_upstreams(" dewey=ws://127.0.0.1:9020 , fiedler=wss://127.0.0.1:8080/mcp,gh=https://127.0.0.1/mcp") == {
        "dewey": "ws://127.0.0.1:9020",
        "fiedler": "wss://127.0.0.1:8080/mcp",
        "gh": "https://127.0.0.1/mcp",
    }
    for bad, said in [
        ("dewey", "name=ws://host:port"),
        ("a=ftp://127.0.0.1", "ws://, wss://, http:// or https://"),
        ("a/b=http://127.0.0.1", "one path segment"),
        ("a=ws://127.0.0.1,a=ws://127.0.0.1:2", "twice"),
    ]:
        with pytest.raises(SettingsError, match=said):
            ProxySettings.from_env({"KGB_MCP_UPSTREAMS": bad})


def test_current_mcp_schema_is_frozen_in_history() -> None:
    # Changing mcp.avsc without adding history/mcp.v<N+1>.avsc fails here, so every released version keeps decoding.
    assert fingerprint(raw_schema("mcp")) in {fingerprint(s) for s in history("mcp")}
