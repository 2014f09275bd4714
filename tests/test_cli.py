"""`kgb` as users run it: a real process, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.fakes.anthropic import FakeAnthropic
from tests.proxy.test_app import HEADERS, SESSION, body
from tests.services import free_port
from tests.topic import by_exchange, read_events

KGB = [sys.executable, "-c", "from kgb.cli import main; main()"]


def test_help_names_every_command() -> None:
    out = subprocess.run([*KGB, "--help"], capture_output=True, text=True, check=True).stdout
    assert "proxy" in out and "consume" in out
    winni = subprocess.run([*KGB, "consume", "winni", "--help"], capture_output=True, text=True, check=True).stdout
    assert "PostgreSQL" in winni


def test_bad_setting_is_a_clear_error() -> None:
    env = {**os.environ, "KGB_PROXY_PORT": "eighty"}
    result = subprocess.run([*KGB, "proxy"], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "KGB_PROXY_PORT must be an integer" in result.stderr


async def wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        while process.returncode is None:
            try:
                async with session.get(url + "/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError(f"kgb proxy exited with {process.returncode} before answering /health")


async def test_proxy_process_serves_then_flushes_on_sigterm(kafka, topic: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "KGB_KAFKA_BOOTSTRAP": kafka.bootstrap, "KGB_TOPIC": topic, "KGB_SPOOL_DIR": str(tmp_path)}
    async with FakeAnthropic() as fake:
        process = await asyncio.create_subprocess_exec(
            *KGB, "proxy", "--port", str(port), "--mcp-port", str(free_port()), "--upstream", fake.url, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        url = f"http://127.0.0.1:{port}"
        await asyncio.wait_for(wait_healthy(url, process), 60)
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/messages", data=body(), headers=HEADERS) as response:
                assert response.status == 200
                await response.read()
        process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert f"ANTHROPIC_BASE_URL=http://127.0.0.1:{port}" in stdout.decode()
    (exchange,) = by_exchange(await read_events(kafka.bootstrap, topic, 2)).values()
    assert exchange["RESPONSE"]["session_key"] == SESSION
