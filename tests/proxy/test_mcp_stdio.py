"""`kgb mcp stdio NAME -- COMMAND`: bytes through untouched, every line an event, the server's exit code, bad servers.

The servers here are small Python scripts, so each test controls exactly what
the server writes, how it exits and which signals it sees; the SDK server
through the shim is in test_mcp_sdk.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson
import psutil
import pytest

from proxy.mcp.stdio import LineSplitter, claim_spool, exit_status
from proxy.logformat import Kind
from proxy.logreader import LogReader, Position
from tests.services import free_port
from tests.test_cli import KGB
from tests.topic import read_events

ECHO = """
import sys
for line in sys.stdin:
    sys.stdout.write(line.replace("ping", "pong"))
    sys.stdout.flush()
sys.stderr.write("server: stdin closed\\n")
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""
TERMED = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (sys.stdout.write('{"jsonrpc":"2.0","method":"bye"}\\n'), sys.stdout.flush(), sys.exit(42)))
sys.stdout.write("ready\\n"); sys.stdout.flush()
time.sleep(60)
"""


def shim_env(tmp_path: Path, bootstrap: str, topic: str) -> dict[str, str]:
    return {**os.environ, "KGB_KAFKA_BOOTSTRAP": bootstrap, "KGB_MCP_TOPIC": topic, "KGB_SPOOL_DIR": str(tmp_path / "spool")}


async def shim(env: dict[str, str], *command: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *KGB,
        "mcp",
        "stdio",
        "files",
        "--",
        *command,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_bytes_pass_untouched_and_each_line_is_an_event(kafka, topic: str, tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"é": "ünïcode"}}) + b"\n",
        b"not json at all\r\n",
        orjson.dumps([{"jsonrpc": "2.0", "method": "ping/a"}, {"jsonrpc": "2.0", "method": "ping/b"}]) + b"\n",
    ]
    process = await shim(shim_env(tmp_path, kafka.bootstrap, topic), sys.executable, "-c", ECHO, "3")
    out, err = await asyncio.wait_for(process.communicate(b"".join(lines)), 60)

    assert out == b"".join(line.replace(b"ping", b"pong") for line in lines)
    assert b"server: stdin closed" in err, "stderr passes through"
    assert process.returncode == 3, "the server's exit code"
    events = await read_events(kafka.bootstrap, topic, 10, schema="mcp")
    assert [e["kind"] for e in events] == ["OPEN"] + ["MESSAGE"] * 8 + ["CLOSE"]
    assert {e["transport"] for e in events} == {"STDIO"} and {e["upstream"] for e in events} == {"files"}
    assert len({e["session_key"] for e in events}) == 1 and events[0]["session_key"] == events[0]["connection_id"]
    sent = [e for e in events if e["direction"] == "CLIENT_TO_UPSTREAM"]
    assert [e["error_type"] for e in sent] == [None, "not_json", None, None]
    assert sent[1]["payload"] == b"not json at all", "the line, without its CR LF"
    assert [(e["batch_index"], e["batch_size"]) for e in sent[2:]] == [(0, 2), (1, 2)]
    assert events[0]["process"]["command"][-1] == "3" and events[0]["process"]["pid"]
    assert events[-1]["process"]["exit_code"] == 3


async def test_a_server_that_will_not_start_says_why_and_exits_127(kafka, topic: str, tmp_path: Path) -> None:
    process = await shim(shim_env(tmp_path, kafka.bootstrap, topic), str(tmp_path / "no-such-server"), "--flag")
    out, err = await asyncio.wait_for(process.communicate(b""), 60)
    assert process.returncode == 127 and out == b""
    assert b"kgb mcp stdio files: cannot start" in err and b"no-such-server" in err
    opened, closed = await read_events(kafka.bootstrap, topic, 2, schema="mcp")
    assert (opened["kind"], closed["kind"], closed["error_type"]) == ("OPEN", "CLOSE", "server_failed_to_start")


async def test_signals_reach_the_server_and_its_exit_code_comes_back(kafka, topic: str, tmp_path: Path) -> None:
    process = await shim(shim_env(tmp_path, kafka.bootstrap, topic), sys.executable, "-c", TERMED)
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 60) == b"ready\n"
    process.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert out == b'{"jsonrpc":"2.0","method":"bye"}\n'
    assert process.returncode == 42
    *_, closed = await read_events(kafka.bootstrap, topic, 4, schema="mcp")
    assert closed["process"]["exit_code"] == 42


async def test_a_dead_broker_costs_the_relay_nothing_and_the_events_wait_in_the_log(tmp_path: Path) -> None:
    env = shim_env(tmp_path, f"127.0.0.1:{free_port()}", "kgb-unused")
    process = await shim(env, sys.executable, "-c", ECHO)
    out, _ = await asyncio.wait_for(process.communicate(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n'), 60)
    assert out == b'{"jsonrpc":"2.0","id":1,"method":"pong"}\n' and process.returncode == 0
    log = tmp_path / "spool" / "mcp-stdio" / "0"
    kinds = [read.record.kind for read in LogReader(log, Position(0, 0)).poll()]
    assert kinds.count(Kind.EVENT) == 4, "OPEN, both messages and CLOSE wait in the shim's capture log"


def test_each_running_shim_gets_its_own_spool_slot(tmp_path: Path) -> None:
    first, lock = claim_spool(tmp_path)
    second, other = claim_spool(tmp_path)
    assert (first.name, second.name) == ("0", "1")
    os.close(lock)
    again, _ = claim_spool(tmp_path)
    assert again.name == "0", "a slot is free again once its shim is gone, and its spool is delivered by the next"
    os.close(other)


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b'{"a":1}\n{"b"', b":2}\n"], [b'{"a":1}', b'{"b":2}']),
        ([b"x\r", b"\ny\n\n"], [b"x", b"y"]),
        ([b"no newline"], []),
    ],
)
def test_lines_are_split_wherever_chunks_end(chunks: list[bytes], lines: list[bytes]) -> None:
    splitter = LineSplitter()
    assert [line for chunk in chunks for line in splitter.feed(chunk)] == lines


def test_exit_status_follows_the_shell() -> None:
    assert (exit_status(0), exit_status(3), exit_status(-signal.SIGTERM)) == (0, 3, 128 + signal.SIGTERM)


async def test_the_capture_worker_is_a_child_process_and_publishes_even_when_the_shim_is_killed(
    kafka, topic: str, tmp_path: Path
) -> None:
    """The worker runs beside the relay, not on its loop; a shim killed outright (no chance to stop it)
    closes the worker's pipe, and the worker publishes what the log holds and exits."""
    process = await shim(shim_env(tmp_path, kafka.bootstrap, topic), sys.executable, "-c", ECHO)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
    assert await asyncio.wait_for(process.stdout.readline(), 60) == b'{"jsonrpc":"2.0","id":1,"method":"pong"}\n'
    workers = await asyncio.wait_for(capture_workers(process.pid), 60)
    assert len(workers) == 1 and workers[0].environ()["KGB_SPOOL_DIR"] == str(tmp_path / "spool" / "mcp-stdio" / "0")
    process.kill()
    await process.wait()
    events = await read_events(kafka.bootstrap, topic, 3, schema="mcp")
    assert [e["kind"] for e in events] == ["OPEN", "MESSAGE", "MESSAGE"]
    await asyncio.to_thread(workers[0].wait, 60)  # not our child: psutil gives no exit code, only its end
    assert not workers[0].is_running(), "it stops by itself once the log is published"


async def capture_workers(pid: int) -> list[psutil.Process]:
    while not (found := [c for c in psutil.Process(pid).children() if "capture-worker" in c.cmdline()]):
        await asyncio.sleep(0.01)
    return found
