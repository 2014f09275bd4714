"""A fake MCP server on 127.0.0.1: JSON-RPC 2.0 over a real WebSocket, like Dewey or Fiedler.

Why it exists: the MCP relay needs an upstream that answers what MCP clients
send and can end a connection the ways real servers do, and that records what
arrived so a test can compare it with what the client sent.

Methods: ``initialize`` answers protocolVersion ``2024-11-05``; ``tools/list``
lists one tool, ``echo``; ``tools/call`` of ``echo`` answers MCP's
``{"content": [{"type": "text", "text": <the arguments as JSON>}]}``; unknown
methods get error -32601, unknown tools -32602; notifications get no answer.
``fake/close {"code": C, "reason": R}`` makes the server close the connection
with that code. A binary frame is echoed back as binary. The subprotocol
``mcp`` is accepted when offered.

In a test::

    async with FakeMcpServer() as server:          # server.url: ws://127.0.0.1:PORT
        ...
        (seen,) = server.connections               # seen.frames, seen.headers, await seen.ended.wait(), seen.close_code
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

PROTOCOL_VERSION = "2024-11-05"
ECHO_TOOL = {
    "name": "echo",
    "description": "Answers with its arguments.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
}


@dataclass
class Connection:
    """What one client connection brought: handshake headers, frames in order, how it ended."""

    headers: dict[str, str]
    frames: list[tuple[WSMsgType, bytes | str]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None


def answer(request: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON-RPC reply to one message; None for a notification."""
    if "id" not in request:
        return None
    method, params = request.get("method"), request.get("params") or {}
    if method == "initialize":
        result: Any = {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fake-mcp", "version": "1.0"},
        }
    elif method == "tools/list":
        result = {"tools": [ECHO_TOOL]}
    elif method == "tools/call" and params.get("name") == "echo":
        result = {"content": [{"type": "text", "text": orjson.dumps(params.get("arguments") or {}).decode()}]}
    elif method == "tools/call":
        return error(request["id"], -32602, f"unknown tool {params.get('name')!r}")
    else:
        return error(request["id"], -32601, f"method not found: {method}")
    return {"jsonrpc": "2.0", "id": request["id"], "result": result}


def error(ident: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": message}}


class FakeMcpServer:
    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeMcpServer:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("mcp",))
        await ws.prepare(request)
        seen = Connection(dict(request.headers))
        self.connections.append(seen)
        try:
            async for message in ws:
                seen.frames.append((message.type, message.data))
                if message.type is WSMsgType.BINARY:
                    await ws.send_bytes(message.data)
                elif message.type is WSMsgType.TEXT:
                    await self._text(ws, orjson.loads(message.data))
        finally:
            seen.close_code = ws.close_code
            seen.ended.set()
        return ws

    async def _text(self, ws: web.WebSocketResponse, request: dict[str, Any]) -> None:
        if request.get("method") == "fake/close":
            params = request["params"]
            await ws.close(code=params["code"], message=params.get("reason", "").encode())
            return
        reply = answer(request)
        if reply is not None:
            await ws.send_str(orjson.dumps(reply).decode())
