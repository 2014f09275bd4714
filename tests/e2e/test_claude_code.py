"""The real Claude Code CLI through the pipeline, against the fake upstream.

The CLI comes from `$KGB_CLAUDE_BIN` or where scripts/install-claude-code.sh
puts it; without it the tests fail, they never skip. It runs with a throwaway
HOME, a fake key, and telemetry, non-essential traffic and the auto-updater
off, so it talks to nothing but the proxy.

What the CLI sends besides its main-thread requests depends on its version
(2.1.331 with CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 sends no `HEAD /` at
all; without that switch it sends `HEAD /api/hello`; older ones sent `HEAD /`
and title generation). So the scripted answers go to main-thread requests only
(the ones offering the Bash tool), everything else gets the fake's default,
and the tests check that every request the upstream received was captured.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Pipeline
from tests.fakes.anthropic import FakeAnthropic, ReceivedRequest, Reply, text_stream, tool_use_stream

INSTALLED = Path.home() / ".cache" / "kgb" / "claude-code" / "node_modules" / ".bin" / "claude"
FAKE_KEY = "sk-ant-api03-" + "CLIfake0" * 10 + "-e2eAA"
RUN_LIMIT = 180.0  # a hung CLI fails the test instead of the whole suite; not a speed requirement


class MainThreadFake(FakeAnthropic):
    """Scripted answers for main-thread requests, in order; side requests get the default answers.

    Why a subclass: the fake's queues are per path, and side requests share
    `/v1/messages` with the main thread, so the order they come in would
    decide who gets the tool_use.
    """

    def __init__(self) -> None:
        super().__init__()
        self.main_thread: deque[Reply] = deque()

    def default_reply(self, received: ReceivedRequest) -> Reply:
        if is_main_thread(received) and self.main_thread:
            return self.main_thread.popleft()
        return super().default_reply(received)


def is_main_thread(received: ReceivedRequest) -> bool:
    """Main-thread requests offer the full tool set; title generation and the like offer none."""
    if (received.method, received.path) != ("POST", "/v1/messages"):
        return False
    return any(tool.get("name") == "Bash" for tool in received.json().get("tools") or [])


@pytest.fixture
def upstream() -> MainThreadFake:
    return MainThreadFake()


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


def claude_binary() -> str:
    path = os.environ.get("KGB_CLAUDE_BIN") or str(INSTALLED)
    if not os.access(path, os.X_OK):
        pytest.fail(f"Claude Code CLI not found at {path}: run scripts/install-claude-code.sh or set KGB_CLAUDE_BIN")
    return path


def cli_env(proxy_url: str, home: Path) -> dict[str, str]:
    """Only what the CLI needs: nothing of the developer's own Anthropic settings may leak in."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": proxy_url,
        "ANTHROPIC_API_KEY": FAKE_KEY,
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }


async def run_claude(proxy_url: str, tmp_path: Path, *args: str) -> Finished:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    process = await asyncio.create_subprocess_exec(
        claude_binary(),
        *args,
        env=cli_env(proxy_url, home),
        cwd=work,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_LIMIT):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"claude {' '.join(args)} did not finish within {RUN_LIMIT:.0f}s")
    return Finished(process.returncode or 0, out.decode(), err.decode())


def main_requests(pipeline: Pipeline) -> list[ReceivedRequest]:
    return [received for received in pipeline.fake.requests if is_main_thread(received)]


async def captured_whole(pipeline: Pipeline) -> list[dict[str, Any]]:
    """Every request the upstream got is a complete row, and nothing else is; the rows, oldest first."""
    received = pipeline.fake.requests
    rows = [dict(row) for row in await pipeline.wait_for_exchanges(len(received))]
    assert sorted((row["method"], row["path"], row["query"]) for row in rows) == sorted(
        (request.method, request.path, request.query) for request in received
    )
    assert await pipeline.dead_letters() == []
    return rows


def main_rows(rows: list[dict[str, Any]], session: str) -> list[dict[str, Any]]:
    """The main-thread rows, checked to carry the CLI's session id and a redacted key."""
    found = [row for row in rows if row["path"] == "/v1/messages" and "Bash" in (row["request_body"] or "")]
    for row in found:
        assert (row["session_key"], row["session_source"], row["status"]) == (session, "header", 200)
        assert json.loads(row["request_headers"])["x-api-key"] == "[REDACTED]"
    return found


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of a request body's last message, where the CLI answers a tool_use."""
    last = body["messages"][-1]
    blocks = last["content"] if isinstance(last["content"], list) else []
    return [block for block in blocks if block.get("type") == "tool_result"]


async def test_print_mode_answer_is_relayed_and_captured(pipeline: Pipeline, tmp_path: Path) -> None:
    answer = "Hello from the fake upstream, through KGB."
    pipeline.fake.main_thread.append(text_stream(answer, deltas=5))

    done = await run_claude(pipeline.url, tmp_path, "-p", "say hello")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == answer
    (request,) = main_requests(pipeline)
    assert request.query == "beta=true" and request.header("x-api-key") == FAKE_KEY
    session = request.header("x-claude-code-session-id")
    assert session
    (row,) = main_rows(await captured_whole(pipeline), session)
    assert json.loads(row["request_body"]) == request.json()
    assert row["stop_reason"] == "end_turn"
    assert json.loads(row["message"])["content"][0]["text"] == answer


async def test_a_bash_tool_turn_is_captured_with_its_result(pipeline: Pipeline, tmp_path: Path) -> None:
    command = {"command": "echo kgb-tool-ok", "description": "Print a marker"}
    pipeline.fake.main_thread.extend(
        [
            tool_use_stream(name="Bash", input=command, tool_id="toolu_01KGBe2eToolTurnAbcdef"),
            text_stream("The command printed kgb-tool-ok."),
        ]
    )

    done = await run_claude(pipeline.url, tmp_path, "-p", "Run echo kgb-tool-ok with Bash", "--allowedTools", "Bash")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "The command printed kgb-tool-ok."
    first, second = main_requests(pipeline)
    (result,) = tool_results(second.json())
    assert result["tool_use_id"] == "toolu_01KGBe2eToolTurnAbcdef" and not result.get("is_error")
    assert "kgb-tool-ok" in json.dumps(result["content"])

    tool_row, answer_row = main_rows(await captured_whole(pipeline), first.header("x-claude-code-session-id") or "")
    assert tool_row["stop_reason"] == "tool_use"
    assert json.loads(tool_row["message"])["content"][-1]["input"] == command
    assert tool_results(json.loads(answer_row["request_body"])) == [result]
    assert answer_row["stop_reason"] == "end_turn"
