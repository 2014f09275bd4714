"""A JSON-RPC 2.0 client for Dewey's MCP tools over one WebSocket.

The connection opens on the first call (``initialize``, then the
``notifications/initialized`` notification MCP expects) and again on the
next call after any failure, so a Dewey that restarts costs one failed call.
Calls are one at a time: the consumer needs each answer before its next step.

Outside failures become `DeweyUnavailable` here, in one place
(`consumers.dewey.errors` says why an answer and its absence differ).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import orjson

from consumers.dewey.errors import DeweyRejected, DeweyUnavailable
from schemas.errors import clip

PROTOCOL_VERSION = "2024-11-05"
CLIENT_INFO = {"name": "kgb-dewey", "version": "0.1.0"}
# get_conversation answers a whole conversation in one frame.
MAX_FRAME_BYTES = 256 * 1024 * 1024

# ConnectionError (the peer closed mid-call) is an OSError.
_NO_ANSWER = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def request(ident: int | None, method: str, params: dict[str, Any]) -> str:
    """A JSON-RPC request; without an id, a notification."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if ident is not None:
        message["id"] = ident
    return orjson.dumps(message).decode()


def tool_result(reply: dict[str, Any]) -> Any:
    """A ``tools/call`` answer's payload: the JSON in its first text content; an error raises."""
    if "error" in reply:
        error = reply["error"] if isinstance(reply["error"], dict) else {"message": str(reply["error"])}
        code = error.get("code")  # an integer by JSON-RPC, and so in dewey_dead_letters.error_code
        raise DeweyRejected(code if isinstance(code, int) else None, str(error.get("message", "")), error.get("data"))
    result = reply.get("result") or {}
    texts = [c.get("text", "") for c in result.get("content") or [] if isinstance(c, dict) and c.get("type") == "text"]
    if result.get("isError"):
        raise DeweyRejected(None, "\n".join(texts))
    if not texts:
        return result.get("structuredContent")
    try:
        return orjson.loads(texts[0])
    except orjson.JSONDecodeError:
        return texts[0]


class DeweyClient:
    """Owns its WebSocket, not the HTTP session it rides on (the caller's, closed by it)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float) -> None:
        self._session = session
        self._url = url
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """Run one tool; `DeweyRejected` if Dewey refuses it, `DeweyUnavailable` if it does not answer."""
        reply = await self._exchange("tools/call", {"name": tool, "arguments": arguments})
        return tool_result(reply)

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def _exchange(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._timeout):
                ws = self._ws or await self._connect()
                return await self._ask(ws, method, params)
        except _NO_ANSWER as exc:
            await self.close()
            raise DeweyUnavailable(f"{method} on {self._url}: {type(exc).__name__}: {clip(str(exc))}") from exc

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        ws = await self._session.ws_connect(self._url, max_msg_size=MAX_FRAME_BYTES, protocols=("mcp",))
        try:
            tool_result(
                await self._ask(
                    ws,
                    "initialize",
                    {
                        "protocolVersion": PROTOCOL_VERSION,
                        "capabilities": {},
                        "clientInfo": CLIENT_INFO,
                    },
                )
            )
            await ws.send_str(request(None, "notifications/initialized", {}))
        except BaseException:
            await ws.close()
            raise
        self._ws = ws
        return ws

    async def _ask(self, ws: aiohttp.ClientWebSocketResponse, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one request and read until its answer; server notifications are skipped."""
        ident = next(self._ids)
        await ws.send_str(request(ident, method, params))
        async for frame in ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                continue
            reply = orjson.loads(frame.data)
            if isinstance(reply, dict) and reply.get("id") == ident:
                return reply
        raise ConnectionError(f"Dewey closed the connection (code {ws.close_code})")
