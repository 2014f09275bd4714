"""A real MCP server, from the official ``mcp`` SDK, for the relays' tests: over Streamable HTTP or stdio.

Why the SDK and not a fake: the relays must pass what real servers send
(sessions, GET streams, SSE priming events, resumption, the 2026-07-28
envelope), and the SDK is the reference implementation of both revisions.

Tools: ``echo {text}`` answers ``echo: <text>``; ``count {steps}`` reports
``steps`` progress notifications, then answers; ``fail`` answers a result
with ``isError``; ``announce`` sends ``notifications/tools/list_changed``
outside any request (on the GET stream, 2025-11-25 stateful only);
``pause {steps}`` closes its SSE stream after the first progress
notification, so the client resumes it with ``Last-Event-ID`` (needs
``resumable``).

In a test::

    with serving(stateless=True, json_response=True) as url:      # http://127.0.0.1:PORT/mcp
        ...
    python -m tests.fakes.mcp_sdk                                  # the same server over stdio
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Iterator

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage

from tests.services import free_port


def build_server() -> MCPServer:
    server = MCPServer("kgb-test-server", version="1.0")

    @server.tool()
    def echo(text: str) -> str:
        """Answers with its text."""
        return f"echo: {text}"

    @server.tool()
    async def count(steps: int, ctx: Context) -> str:
        """Reports progress `steps` times, then answers."""
        for step in range(steps):
            await ctx.report_progress(step + 1, steps, f"step {step + 1}")
        return f"counted {steps}"

    @server.tool()
    def fail() -> str:
        """Always fails."""
        raise ValueError("this tool always fails")

    @server.tool()
    async def announce(ctx: Context) -> str:
        """Tells the client, outside this request, that the tool list changed."""
        await ctx.session.send_tool_list_changed()
        return "announced"

    @server.tool()
    async def pause(steps: int, ctx: Context) -> str:
        """Drops its SSE stream after the first step; the client resumes it."""
        for step in range(steps):
            await ctx.report_progress(step + 1, steps)
            if step == 0:
                await asyncio.sleep(0.1)  # the SDK's SSE writer sends the priming event and this step first
                await ctx.close_sse_stream()
                await asyncio.sleep(0.3)
        return f"resumed after {steps}"

    return server


class MemoryEventStore(EventStore):
    """Every event of every stream, so a client can resume after any of them."""

    def __init__(self) -> None:
        self._events: list[tuple[StreamId, EventId, JSONRPCMessage | None]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = f"{stream_id}:{next(self._ids)}"
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        stream = next((s for s, e, _ in self._events if e == last_event_id), None)
        if stream is None:
            return None
        after = False
        for stream_id, event_id, message in list(self._events):
            if after and stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream


@contextlib.contextmanager
def serving(*, stateless: bool = False, json_response: bool = False, resumable: bool = False) -> Iterator[str]:
    """The server on a free port of 127.0.0.1 in a thread of its own; yields its MCP endpoint's URL."""
    port = free_port()
    app = build_server().streamable_http_app(
        stateless_http=stateless,
        json_response=json_response,
        event_store=MemoryEventStore() if resumable else None,
        retry_interval=100 if resumable else None,
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the MCP SDK server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(30)


if __name__ == "__main__":
    build_server().run("stdio")
