"""`kgb` as users run it: a real process, real signals."""

from __future__ import annotations

import asyncio
import re
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

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


async def start_proxy(
    env: Mapping[str, str], port: int, mcp_port: int, upstream: str | None = None, **options: Any
) -> asyncio.subprocess.Process:
    """`kgb proxy` in a process of its own on these ports; `options` as `create_subprocess_exec` takes them."""
    flags = ["--port", str(port), "--mcp-port", str(mcp_port), *(["--upstream", upstream] if upstream else [])]
    return await asyncio.create_subprocess_exec(*KGB, "proxy", *flags, env=env, **options)


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
        process = await start_proxy(
            env, port, free_port(), fake.url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
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


def run_kgb(*args: str, timeout: float = 120, **settings: str) -> subprocess.CompletedProcess[str]:
    """`kgb ARGS` to its end, with ``settings`` added to the environment and no stray KGB_* of the caller's."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KGB_")}
    return subprocess.run([*KGB, *args], capture_output=True, text=True, env={**env, **settings}, timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure's line: the last of stderr, and no traceback before it."""
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_version() -> None:
    result = run_kgb("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"kgb \d+\.\d+\.\d+\S*", result.stdout.strip())


def test_a_mistyped_setting_is_warned_about_with_the_closest_name() -> None:
    result = run_kgb("proxy", "--upstream", "http://", KGB_PROXY_PROT="28089", KGB_UPSTREM_URL="http://127.0.0.1:1")
    assert "KGB_PROXY_PROT is not a KGB setting and is ignored; did you mean KGB_PROXY_PORT?" in result.stderr
    assert "KGB_UPSTREM_URL is not a KGB setting and is ignored; did you mean KGB_UPSTREAM_URL?" in result.stderr
    assert result.returncode == 2  # the host-less --upstream stops it before it listens


def test_an_upstream_without_its_scheme_is_rejected_at_start() -> None:
    result = run_kgb("proxy", "--upstream", "127.0.0.1:18090")
    assert result.returncode == 2
    assert one_line(result) == (
        "kgb proxy: KGB_UPSTREAM_URL (kgb proxy --upstream) must be a http:// or https:// URL "
        "(like http://HOST:PORT), got '127.0.0.1:18090'"
    )


def test_a_bootstrap_with_a_scheme_is_rejected_at_start() -> None:
    result = run_kgb("consume", "winni", KGB_KAFKA_BOOTSTRAP="kafka://127.0.0.1:9092")
    assert result.returncode == 2
    assert "KGB_KAFKA_BOOTSTRAP must be HOST:PORT" in one_line(result)


DATABASE_COMMANDS = [("consume", "winni"), ("consume", "metrics"), ("consume", "dewey"), ("replay",), ("usage",), ("web",)]


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
def test_a_database_url_of_another_scheme_is_one_line(command: tuple[str, ...]) -> None:
    result = run_kgb(*command, KGB_DATABASE_URL="mysql://root@127.0.0.1/winni")
    assert result.returncode == 2
    assert one_line(result) == (
        f"kgb {' '.join(command)}: KGB_DATABASE_URL must be a postgresql:// or postgres:// URL "
        "(like postgresql://HOST:PORT), got 'mysql://root@127.0.0.1/winni'"
    )


@pytest.mark.parametrize("command", [c for c in DATABASE_COMMANDS if c != ("consume", "dewey")], ids=" ".join)
def test_a_database_that_does_not_exist_is_one_line(postgres, kafka, command: tuple[str, ...]) -> None:
    """Dewey reaches its database only once it has a conversation to forward, so it is not in this list."""
    url = postgres.admin_dsn.rsplit("/", 1)[0] + "/no_such_db"
    settings = {"KGB_DATABASE_URL": url, "KGB_KAFKA_BOOTSTRAP": kafka.bootstrap, "KGB_METRICS_PORT": str(free_port())}
    result = run_kgb(*command, *(["--port", str(free_port())] if command == ("web",) else []), **settings)
    assert result.returncode != 0
    line = one_line(result)
    assert line.startswith(f"kgb {' '.join(command)}: ") and "no_such_db" in line and "KGB_DATABASE_URL" in line


def test_debug_keeps_the_traceback(postgres) -> None:
    url = postgres.admin_dsn.rsplit("/", 1)[0] + "/no_such_db"
    result = run_kgb("--debug", "replay", KGB_DATABASE_URL=url)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "InvalidCatalogNameError" in result.stderr


def test_replay_with_no_broker_is_one_line(postgres) -> None:
    result = run_kgb("replay", KGB_DATABASE_URL=postgres.dsn, KGB_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "start the broker or fix KGB_KAFKA_BOOTSTRAP" in one_line(result)


def test_every_setting_the_tools_read_is_known() -> None:
    """The scripts' and tests' own names are not warned about; the product's are found in its code."""
    from kgb.checks import known_settings

    root = Path(__file__).resolve().parent.parent
    used = set()
    for folder in ("scripts", "tests", ".ci"):
        for path in (root / folder).rglob("*"):
            mistyped_here = path == Path(__file__).resolve()
            if path.is_file() and path.suffix in (".py", ".sh", "") and "__pycache__" not in path.parts and not mistyped_here:
                used |= set(re.findall(r"\b(KGB_[A-Z0-9_]*[A-Z0-9])\b", path.read_text(errors="replace")))
    assert "KGB_WINNI_PROCESSES" in known_settings()
    assert sorted(used - known_settings()) == []


async def test_the_proxy_without_its_broker_says_so_once_and_stays_ready(tmp_path: Path) -> None:
    """Kafka is the capture worker's: the relay is ready while the capture log has room, and the worker
    says once that Kafka is away, however often aiokafka retries."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KGB_")},
        "KGB_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "KGB_SPOOL_DIR": str(tmp_path),
    }
    log = tmp_path / "proxy.log"
    with log.open("w") as stderr:  # the child writes through a descriptor of its own
        process = await start_proxy(env, port, free_port(), stderr=stderr, stdout=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.wait_for(wait_healthy(url, process), 60)
        async with aiohttp.ClientSession() as session:
            while "Kafka (KGB_KAFKA_BOOTSTRAP) is away" not in log.read_text():
                await asyncio.sleep(0.1)
            async with session.get(url + "/ready") as response:
                ready = response.status, await response.json()
            await asyncio.sleep(3)  # aiokafka retries many times a second meanwhile
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
    assert ready == (200, {"status": "ready"})
    lines = log.read_text().splitlines()
    assert not [line for line in lines if "aiokafka" in line or "Traceback" in line], lines
    assert sum("Kafka (KGB_KAFKA_BOOTSTRAP) is away" in line for line in lines) == 1, lines


async def test_replay_in_a_shell_without_the_database_says_where_it_waits(tmp_path: Path) -> None:
    """As in a new shell without KGB_DATABASE_URL's export: one line naming the URL and the setting, however many retries."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/winni"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KGB_")},
        "KGB_DATABASE_URL": url,
        "KGB_WINNI_RETRY_MAX": "0.1",
    }
    log = tmp_path / "replay.log"
    with log.open("w") as stderr:  # the child writes through a descriptor of its own
        process = await asyncio.create_subprocess_exec(*KGB, "replay", env=env, stderr=stderr, stdout=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(60):
            while f"connecting to PostgreSQL at {url} (KGB_DATABASE_URL) is failing" not in log.read_text():
                assert process.returncode is None, log.read_text()
                await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # some twenty retries meanwhile
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
    assert sum("is failing" in line for line in log.read_text().splitlines()) == 1, log.read_text()
