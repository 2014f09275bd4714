"""The official MCP Python SDK, as client and server, through the KGB relays, into the tables.

Each case runs the same script against the server directly and through KGB:
the client must get the same results both ways, and winni must hold every
call of the relayed run once, answered, with its notifications. Over
Streamable HTTP: 2025-11-25 with a session and its GET stream (SSE and JSON
answers), 2026-07-28 stateless (SSE and JSON), and a stream resumed with
Last-Event-ID. Over stdio: through `kgb mcp stdio`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests.fakes import mcp_sdk
from tests.mcp_pipeline import mcp_pipeline
from tests.test_cli import KGB


async def script(client: Client, legacy: bool) -> list[Any]:
    """Calls of every kind, and what came back."""
    results = [
        await client.call_tool("echo", {"text": "hello through KGB"}),
        await client.call_tool("count", {"steps": 3}, progress_callback=lambda *_: asyncio.sleep(0)),
        await client.call_tool("fail", {}),
    ]
    if legacy:
        results.append(await client.call_tool("announce", {}))
        await asyncio.sleep(0.3)  # the GET stream's notification
    tools = await client.list_tools()
    return [r.model_dump(exclude={"meta"}) for r in results] + [sorted(t.name for t in tools.tools)]


async def run(target: Any, mode: str) -> tuple[list[Any], list[str]]:
    """The script's results, and the notifications the client saw."""
    seen: list[str] = []

    async def on_message(message: Any) -> None:
        seen.append(str(getattr(message, "method", type(message).__name__)))

    async with Client(target, mode=mode, message_handler=on_message) as client:
        return await script(client, mode == "legacy"), sorted(seen)


def ended(rows: list[Any]) -> bool:
    """A 2025-11-25 client ends its session with a DELETE, relayed as the client closes: wait for it too."""
    return bool(rows) and all(row["end_reason"] is not None for row in rows)


CASES = {
    "2025-11-25 session, SSE": ({}, "legacy"),
    "2025-11-25 session, JSON": ({"json_response": True}, "legacy"),
    "2026-07-28 stateless, SSE": ({"stateless": True}, "auto"),
    "2026-07-28 stateless, JSON": ({"stateless": True, "json_response": True}, "auto"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_streamable_http_through_the_relay_is_what_the_server_sends(
    kafka, database: str, tmp_path: Path, case: str
) -> None:
    server_options, mode = CASES[case]
    with mcp_sdk.serving(**server_options) as url:
        direct = await run(url, mode)
        async with mcp_pipeline(kafka.bootstrap, database, tmp_path / "spool", {"sdk": url}) as pipeline:
            relayed = await run(pipeline.at("sdk"), mode)
            calls = await pipeline.calls(len(direct[0]) - 1, "tools/call")
            sessions = await pipeline.wait_for("SELECT * FROM mcp_sessions", ended if mode == "legacy" else bool)
            deleted = (lambda rows: any(r["method"] == "DELETE" for r in rows)) if mode == "legacy" else bool
            http = await pipeline.wait_for("SELECT method, status, error_type FROM mcp_http_requests", deleted)

    assert relayed == direct
    tool_calls = [c for c in calls if c["method"] == "tools/call"]
    assert [c["name"] for c in tool_calls] == ["echo", "count", "fail"] + (["announce"] if mode == "legacy" else [])
    assert all(c["response_event_id"] is not None for c in tool_calls), "every call answered once"
    assert [c["is_error"] for c in tool_calls[:3]] == [False, False, True]
    assert tool_calls[0]["arguments"] == {"text": "hello through KGB"}
    assert tool_calls[0]["tool_use_name"] == "mcp__sdk__echo"
    assert tool_calls[0]["result"]["content"] == [{"type": "text", "text": "echo: hello through KGB"}]
    progress = [n["method"] for n in tool_calls[1]["notifications"]]
    sent = relayed[1].count("notifications/progress")
    assert sent == (0 if server_options.get("json_response") else 3)
    assert progress == ["notifications/progress"] * sent, "progress joins its call by token"
    assert {s["transport"] for s in sessions} == {"streamable_http"}
    assert all(s["server_info"]["name"] == "kgb-test-server" for s in sessions)
    assert all(h["status"] in (200, 202) and h["error_type"] is None for h in http)
    if mode == "legacy":
        (session,) = sessions
        assert session["mcp_session_id"] and session["session_key"] == session["mcp_session_id"]
        assert session["protocol_version"] == "2025-11-25" and session["client_info"]["name"]
        assert {h["method"] for h in http} >= {"POST", "GET", "DELETE"}
        assert session["end_reason"] == "deleted"
        assert "notifications/tools/list_changed" in relayed[1], "the GET stream's notification reached the client"
    else:
        assert all(s["session_key"].startswith("stateless:") and s["mcp_session_id"] is None for s in sessions)
        assert {s["protocol_version"] for s in sessions} == {"2026-07-28"}


async def test_a_dropped_stream_resumes_with_last_event_id_through_the_relay(kafka, database: str, tmp_path: Path) -> None:
    with mcp_sdk.serving(resumable=True) as url:
        async with mcp_pipeline(kafka.bootstrap, database, tmp_path / "spool", {"sdk": url}) as pipeline:
            async with Client(pipeline.at("sdk"), mode="legacy") as client:
                result = await client.call_tool("pause", {"steps": 3})
            (call,) = [c for c in await pipeline.calls(1, "tools/call") if c["method"] == "tools/call"]
            resumed = await pipeline.query(
                "SELECT request_headers FROM mcp_http_requests WHERE method = 'GET' AND request_headers ? 'last-event-id'"
            )

    assert result.content[0].text == "resumed after 3"
    assert call["name"] == "pause" and call["result"]["content"][0]["text"] == "resumed after 3"
    assert resumed, "the client resumed through the relay with Last-Event-ID"
    assert resumed[0]["request_headers"]["last-event-id"].startswith(call_stream_prefix(resumed[0]))


def call_stream_prefix(row: Any) -> str:
    """The SDK fake's event ids are '<stream id>:<n>'."""
    return row["request_headers"]["last-event-id"].split(":")[0]


async def test_stdio_through_the_shim_is_what_the_server_sends(kafka, database: str, tmp_path: Path) -> None:
    server = [sys.executable, "-m", "tests.fakes.mcp_sdk"]
    direct = await run(StdioServerParameters(command=server[0], args=server[1:], cwd=str(Path.cwd())), "auto")
    async with mcp_pipeline(kafka.bootstrap, database, tmp_path / "spool", {}) as pipeline:
        shim = StdioServerParameters(
            command=KGB[0],
            args=[*KGB[1:], "mcp", "stdio", "tools", "--", *server],
            env={**pipeline.env, "PATH": "/usr/bin:/bin"},
            cwd=str(Path.cwd()),
        )
        relayed = await run(shim, "auto")
        calls = await pipeline.calls(len(direct[0]) - 1, "tools/call")
        (session,) = await pipeline.wait_for("SELECT * FROM mcp_sessions WHERE ended_at IS NOT NULL", bool)

    assert relayed == direct
    tool_calls = [c for c in calls if c["method"] == "tools/call"]
    assert [(c["name"], c["is_error"]) for c in tool_calls] == [("echo", False), ("count", False), ("fail", True)]
    assert [n["method"] for n in tool_calls[1]["notifications"]] == ["notifications/progress"] * 3
    assert (session["transport"], session["server"], session["end_reason"]) == ("stdio", "tools", "exit 0")
    assert session["command"] == server
