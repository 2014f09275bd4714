"""scripts/dev.sh as a user runs it: a real run of every service, and its setup step on its own."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
BANNER_TIMEOUT = 400.0  # first runs install the project and format Kafka's storage


def test_the_project_is_installed_again_only_when_pyproject_changes(tmp_path: Path) -> None:
    """install_project with a stand-in venv python that records what it is asked to run."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    calls = tmp_path / "calls"
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$@" >>{calls}\n')
    python.chmod(0o755)
    script = f"source {ROOT}/scripts/setup.sh; docker_usable() {{ return 1; }}; install_project test"

    def install() -> str:
        return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    install()
    assert "install -q -e .[test]" in calls.read_text()
    calls.unlink()
    assert "pyproject.toml unchanged since the last install: not reinstalling" in install()
    assert not calls.exists()
    with (tmp_path / "pyproject.toml").open("a") as out:
        out.write("\n# a new dependency, say\n")
    install()
    assert "install -q -e .[test]" in calls.read_text()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def dev_env() -> Iterator[dict[str, str]]:
    """Straight from mkdtemp, not under pytest's 0700 tmp_path: as root, PostgreSQL runs as its own user."""
    run_dir = Path(tempfile.mkdtemp(prefix="kgb-dev-"))
    run_dir.chmod(0o755)
    ports = {
        name: str(free_port())
        for name in (
            "KGB_DEV_KAFKA_PORT",
            "KGB_DEV_POSTGRES_PORT",
            "KGB_PROXY_PORT",
            "KGB_MCP_PORT",
            "KGB_METRICS_PORT",
            "KGB_WEB_PORT",
        )
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("KGB_")}
    yield {**env, **ports, "KGB_DEV_DIR": str(run_dir)}
    shutil.rmtree(run_dir, ignore_errors=True)


def test_a_real_run_banner_lock_and_supervision(dev_env: dict[str, str], tmp_path: Path) -> None:
    out, err = tmp_path / "dev.out", tmp_path / "dev.err"
    with out.open("w") as stdout, err.open("w") as stderr:  # the child writes through descriptors of its own
        first = subprocess.Popen(
            [str(ROOT / "scripts" / "dev.sh")], env=dev_env, stdout=stdout, stderr=stderr, start_new_session=True
        )
    try:
        banner = wait_for_banner(first, out, err)
        database = f"postgresql://postgres@127.0.0.1:{dev_env['KGB_DEV_POSTGRES_PORT']}/winni"
        assert f"export KGB_DATABASE_URL={database}\n" in banner
        assert f"export KGB_KAFKA_BOOTSTRAP=127.0.0.1:{dev_env['KGB_DEV_KAFKA_PORT']}\n" in banner
        assert f"export ANTHROPIC_BASE_URL=http://127.0.0.1:{dev_env['KGB_PROXY_PORT']}\n" in banner
        (psql_url,) = re.findall(r"psql '([^']+)'", banner)
        query = subprocess.run(
            ["psql", psql_url, "-XtAc", "SELECT count(*) FROM conversations"], capture_output=True, text=True, timeout=60
        )
        assert query.stdout.strip() == "0", query.stderr  # unqualified: the URL sets search_path
        assert "not reinstalling" in banner or "virtualenv and the project" in banner

        second = subprocess.run([str(ROOT / "scripts" / "dev.sh")], env=dev_env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"already running from {dev_env['KGB_DEV_DIR']} (pid {first.pid})" in second.stderr
        assert first.poll() is None and listening(int(dev_env["KGB_PROXY_PORT"]))

        kafka_pid = int((Path(dev_env["KGB_DEV_DIR"]) / "kafka" / "kafka.pid").read_text())
        os.kill(kafka_pid, signal.SIGKILL)
        assert first.wait(120) == 1
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGTERM)
            first.wait(120)
    said = err.read_text()
    assert "dev.sh: Kafka exited" in said and "dev.sh: stopped" in said
    assert "Traceback" not in said, said[-3000:]
    for port in ("KGB_PROXY_PORT", "KGB_METRICS_PORT", "KGB_WEB_PORT", "KGB_DEV_POSTGRES_PORT"):
        assert not listening(int(dev_env[port])), f"{port} still listening"


def wait_for_banner(process: subprocess.Popen[bytes], out: Path, err: Path) -> str:
    deadline = time.monotonic() + BANNER_TIMEOUT
    while "Press Ctrl-C to stop everything." not in out.read_text():
        assert process.poll() is None, err.read_text()[-3000:]
        assert time.monotonic() < deadline, "no banner:\n" + out.read_text() + err.read_text()[-3000:]
        time.sleep(0.5)
    return out.read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM], ids=lambda s: s.name)
def test_a_run_under_tee_stops_cleanly_however_it_is_stopped(
    dev_env: dict[str, str], tmp_path: Path, sig: signal.Signals
) -> None:
    """`scripts/dev.sh | tee`, its process group sent the signal as a terminal sends Ctrl-C (SIGINT, to the whole
    foreground group, tee included) or closing it (SIGHUP); SIGTERM as a supervisor sends it."""
    out, err = tmp_path / "dev.out", tmp_path / "dev.err"
    shell = subprocess.Popen(
        ["bash", "-c", f"{ROOT / 'scripts' / 'dev.sh'} 2>{err} | tee {out} >/dev/null"], env=dev_env, start_new_session=True
    )
    err.touch()
    out.touch()
    try:
        wait_for_banner(shell, out, err)
        kafka_pid = int((Path(dev_env["KGB_DEV_DIR"]) / "kafka" / "kafka.pid").read_text())
        os.killpg(shell.pid, sig)
        shell.wait(120)
        deadline = time.monotonic() + 120
        while "dev.sh: stopped" not in err.read_text():  # dev.sh outlives the shell and tee that started it
            assert time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
    said = err.read_text()
    assert "Traceback" not in said, said[-3000:]
    assert not alive(kafka_pid)
    for port in ("KGB_PROXY_PORT", "KGB_METRICS_PORT", "KGB_WEB_PORT", "KGB_DEV_POSTGRES_PORT", "KGB_DEV_KAFKA_PORT"):
        assert not listening(int(dev_env[port])), f"{port} still listening"
