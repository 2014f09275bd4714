"""A fake Dewey on 127.0.0.1: its MCP tools over a real WebSocket, JSON-RPC 2.0, state in memory.

Why it exists: `kgb consume dewey` must be proven exactly-once against a
Dewey that goes away, answers slowly, loses answers and refuses data, and a
test must read back what Dewey ended up holding.

The tools answer as Dewey's own do (``dewey/tools.py``): a result is MCP's
``{"content": [{"type": "text", "text": <JSON>}]}``; ``dewey_begin_conversation``
→ ``{conversation_id, session_id, created_at}``; ``dewey_store_message`` and
``dewey_store_messages_bulk`` (at most 1000, stored all or nothing, a message's
``turn_number`` kept when given, else the next one) → ids;
``dewey_get_conversation`` → the conversation with ``messages`` (``turn``,
``role``, ``content``, ``metadata``); ``dewey_list_conversations`` (by
``session_id``, ``limit`` ≤ 100, ``offset``). A tool's failure is a JSON-RPC
error with code -32000, an unknown tool -32601; roles are Dewey's four.

Switches a test flips at any time:
- ``delay``: seconds every ``tools/call`` waits, after applying, before answering;
- ``reject``: a marker; a begin or store whose arguments hold it is refused
  with ``reject_code`` (default -32603) and nothing of that call is stored;
- ``lose_answers``: that many next begins and stores are applied, then the
  connection is closed instead of answering (the answer lost on the way);
- ``stop()`` / ``start()``: Dewey away and back on the same port.

In a test::

    async with FakeDewey() as dewey:                       # dewey.url: ws://127.0.0.1:PORT
        ...
        dewey.conversations["<id>"].messages, dewey.calls
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import orjson
from aiohttp import WSMsgType, web

from tests.fakes.mcp_server import PROTOCOL_VERSION, error

TOOL_ERROR = -32000
MAX_BULK = 1000
ROLES = ("user", "assistant", "system", "tool")
TOOLS = (
    "dewey_begin_conversation",
    "dewey_store_message",
    "dewey_store_messages_bulk",
    "dewey_get_conversation",
    "dewey_list_conversations",
)
WRITES = ("dewey_begin_conversation", "dewey_store_message", "dewey_store_messages_bulk")


class ToolError(Exception):
    def __init__(self, message: str, code: int = TOOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class AnswerLost(Exception):
    """The call was applied; the connection is dropped instead of answering."""


@dataclass
class FakeConversation:
    id: str
    session_id: str | None
    metadata: dict[str, Any] | None
    created_at: str
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def turns(self) -> list[int]:
        return [m["turn"] for m in self.messages]


def now() -> str:
    return datetime.now(UTC).isoformat()


class FakeDewey:
    def __init__(self) -> None:
        self.conversations: dict[str, FakeConversation] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.delay = 0.0
        self.reject: str | None = None
        self.reject_code = -32603
        self.lose_answers = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._tools: dict[str, Callable[[dict[str, Any]], Any]] = {
            "dewey_begin_conversation": self._begin,
            "dewey_store_message": self._store_one,
            "dewey_store_messages_bulk": self._store_bulk,
            "dewey_get_conversation": self._get,
            "dewey_list_conversations": self._list,
        }

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen, on the port of the first start once there was one."""
        if not self.port:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Close the port and every connection; what was stored stays."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def by_kgb_id(self) -> dict[str, list[FakeConversation]]:
        """Dewey conversations grouped by the KGB conversation they were begun for."""
        found: dict[str, list[FakeConversation]] = {}
        for conversation in self.conversations.values():
            found.setdefault((conversation.metadata or {}).get("kgb_conversation_id"), []).append(conversation)
        return found

    def tool_calls(self, name: str) -> list[dict[str, Any]]:
        return [arguments for tool, arguments in self.calls if tool == name]

    # --- the wire -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("mcp",), max_msg_size=256 * 1024 * 1024)
        await ws.prepare(request)
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                continue
            try:
                reply = await self._answer(orjson.loads(frame.data))
            except AnswerLost:
                await ws.close()
                break
            if reply is not None:
                await ws.send_str(orjson.dumps(reply).decode())
        return ws

    async def _answer(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if "id" not in message:
            return None
        ident, method, params = message["id"], message.get("method"), message.get("params") or {}
        if method == "initialize":
            return _result(
                ident,
                {
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "fake-dewey", "version": "1.0"},
                },
            )
        if method == "tools/list":
            return _result(ident, {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in TOOLS]})
        if method != "tools/call":
            return error(ident, -32601, f"Method not found: {method}")
        return await self._call(ident, params.get("name"), params.get("arguments") or {})

    async def _call(self, ident: Any, name: Any, arguments: dict[str, Any]) -> dict[str, Any]:
        tool = self._tools.get(name)
        if tool is None:
            return error(ident, -32601, f"Unknown tool: {name}")
        self.calls.append((name, arguments))
        try:
            self._screen(name, arguments)
            result = tool(arguments)
        except ToolError as exc:
            return error(ident, exc.code, str(exc))
        if name in WRITES and self.lose_answers > 0:
            self.lose_answers -= 1
            raise AnswerLost
        if self.delay:
            await asyncio.sleep(self.delay)
        return _result(ident, {"content": [{"type": "text", "text": orjson.dumps(result).decode()}]})

    def _screen(self, name: str, arguments: dict[str, Any]) -> None:
        """Refuse a write whose arguments hold the marker, before anything of it is stored."""
        if name in WRITES and self.reject and self.reject.encode() in orjson.dumps(arguments):
            raise ToolError(f"Failed in {name}: the call holds {self.reject!r}", self.reject_code)

    # --- the tools ----------------------------------------------------------------

    def _begin(self, args: dict[str, Any]) -> dict[str, Any]:
        conversation = FakeConversation(str(uuid.uuid4()), args.get("session_id"), args.get("metadata"), now())
        self.conversations[conversation.id] = conversation
        return {"conversation_id": conversation.id, "session_id": conversation.session_id, "created_at": conversation.created_at}

    def _store_one(self, args: dict[str, Any]) -> dict[str, Any]:
        conversation = self._conversation(args.get("conversation_id"))
        (stored,) = self._store(conversation, [args])
        return {"message_id": stored["id"], "turn_number": stored["turn"], "created_at": stored["created_at"]}

    def _store_bulk(self, args: dict[str, Any]) -> dict[str, Any]:
        messages = args.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ToolError("Parameter 'messages' must be a non-empty list.")
        if len(messages) > MAX_BULK:
            raise ToolError(f"At most {MAX_BULK} messages per call, got {len(messages)}.")
        if args.get("conversation_id"):
            conversation = self._conversation(args["conversation_id"])
        else:
            conversation = self._conversation(self._begin(args)["conversation_id"])
        stored = self._store(conversation, messages)
        return {"conversation_id": conversation.id, "stored": len(stored), "message_ids": [m["id"] for m in stored]}

    def _store(self, conversation: FakeConversation, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """All or nothing, like Dewey's one transaction."""
        for message in messages:
            if message.get("role") not in ROLES:
                raise ToolError(f"Invalid role {message.get('role')!r}.")
            if not isinstance(message.get("content"), str):
                raise ToolError("content must be a string.")
        turn = max(conversation.turns, default=0) + 1
        stored = []
        for message in messages:
            given = message.get("turn_number")
            stored.append(
                {
                    "id": str(uuid.uuid4()),
                    "turn": given if isinstance(given, int) else turn,
                    "role": message["role"],
                    "content": message["content"],
                    "metadata": message.get("metadata"),
                    "created_at": now(),
                }
            )
            turn = stored[-1]["turn"] + 1
        conversation.messages += stored
        return stored

    def _get(self, args: dict[str, Any]) -> dict[str, Any]:
        conversation = self._conversation(args.get("conversation_id"))
        return {
            "conversation_id": conversation.id,
            "session_id": conversation.session_id,
            "created_at": conversation.created_at,
            "updated_at": conversation.created_at,
            "metadata": conversation.metadata,
            "messages": sorted(conversation.messages, key=lambda m: m["turn"]),
        }

    def _list(self, args: dict[str, Any]) -> dict[str, Any]:
        limit, offset = args.get("limit", 20), max(args.get("offset", 0), 0)
        limit = limit if 1 <= limit <= 100 else 20
        found = [c for c in self.conversations.values() if not args.get("session_id") or c.session_id == args["session_id"]]
        found.sort(key=lambda c: c.created_at, reverse=True)
        page = found[offset : offset + limit]
        return {
            "conversations": [
                {
                    "id": c.id,
                    "session_id": c.session_id,
                    "created_at": c.created_at,
                    "metadata": c.metadata,
                    "message_count": len(c.messages),
                }
                for c in page
            ],
            "total": len(found),
            "limit": limit,
            "offset": offset,
        }

    def _conversation(self, conversation_id: Any) -> FakeConversation:
        if conversation_id not in self.conversations:
            raise ToolError(f"Conversation with id '{conversation_id}' not found.")
        return self.conversations[conversation_id]


def _result(ident: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "result": result}
