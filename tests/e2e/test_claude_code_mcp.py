"""The real Claude Code CLI calling MCP tools through KGB: one server over Streamable HTTP through the relay,
one over stdio through `kgb mcp stdio`, against the fake Anthropic upstream answering with their tool uses.

Claude Code names the tools ``mcp__web__echo`` and ``mcp__tools__count`` (its
``--mcp-config`` names the servers as KGB does), calls them, and sends their
results back; `tool_calls.mcp_call_id` must then link each of those tool uses
to the `mcp_calls` row of the ``tools/call`` that served it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.e2e.test_claude_code import MainThreadFake, is_main_thread, run_claude, tool_results
from tests.fakes import mcp_sdk
from tests.fakes.anthropic import text_stream, tool_use_stream
from tests.mcp_pipeline import mcp_pipeline
from tests.test_cli import KGB

ECHO, COUNT = "toolu_01KGBmcpHttpEchoAbcdefg", "toolu_01KGBmcpStdioCountAbcde"
REPO = str(Path(__file__).resolve().parents[2])


async def test_claude_code_calls_mcp_tools_through_kgb_and_each_call_is_linked(kafka, database: str, tmp_path: Path) -> None:
    fake = MainThreadFake()
    fake.main_thread.extend(
        [
            tool_use_stream(name="mcp__web__echo", input={"text": "from Claude Code"}, tool_id=ECHO),
            tool_use_stream(name="mcp__tools__count", input={"steps": 2}, tool_id=COUNT),
            text_stream("Both MCP tools answered."),
        ]
    )
    with mcp_sdk.serving() as url:
        async with fake, mcp_pipeline(kafka.bootstrap, database, tmp_path / "spool", {"web": url}, fake.url) as pipeline:
            stdio = [*KGB, "mcp", "stdio", "tools", "--", sys.executable, "-m", "tests.fakes.mcp_sdk"]
            config = {
                "mcpServers": {
                    "web": {"type": "http", "url": pipeline.at("web")},
                    "tools": {
                        "type": "stdio",
                        "command": stdio[0],
                        "args": stdio[1:],
                        "env": {**pipeline.env, "PYTHONPATH": REPO},
                    },
                }
            }
            (tmp_path / "mcp.json").write_text(json.dumps(config))
            assert pipeline.api is not None
            done = await run_claude(
                pipeline.api,
                tmp_path,
                "-p",
                "Use the MCP tools",
                "--mcp-config",
                str(tmp_path / "mcp.json"),
                "--strict-mcp-config",
                "--allowedTools",
                "mcp__web__echo,mcp__tools__count",
            )
            linked = await pipeline.wait_for(
                "SELECT t.tool_use_id, t.name, c.server, c.name AS tool, c.arguments, c.result, c.tool_use_id AS served,"
                "       s.transport"
                " FROM tool_calls t JOIN mcp_calls c ON c.call_id = t.mcp_call_id JOIN mcp_sessions s USING (session_key)"
                " ORDER BY t.used_at",
                lambda rows: len(rows) >= 2,
            )
            unlinked = await pipeline.query("SELECT tool_use_id FROM tool_calls WHERE name LIKE 'mcp%' AND mcp_call_id IS NULL")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Both MCP tools answered."
    _first, second, third = [request for request in fake.requests if is_main_thread(request)]
    ((echo_result,), (count_result,)) = tool_results(second.json()), tool_results(third.json())
    assert echo_result["tool_use_id"] == ECHO and "echo: from Claude Code" in json.dumps(echo_result["content"])
    assert count_result["tool_use_id"] == COUNT and "counted 2" in json.dumps(count_result["content"])
    assert [(r["tool_use_id"], r["served"], r["server"], r["tool"], r["transport"]) for r in linked] == [
        (ECHO, ECHO, "web", "echo", "streamable_http"),
        (COUNT, COUNT, "tools", "count", "stdio"),
    ]
    assert linked[0]["arguments"] == {"text": "from Claude Code"}
    assert linked[1]["result"]["content"][0]["text"] == "counted 2"
    assert unlinked == []
