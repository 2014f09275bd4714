"""The processes a benchmark run starts: the fake upstreams, nginx and `kgb proxy`, each on 127.0.0.1.

Each runs as its own OS process so its CPU time and peak RSS can be read alone
(`Measured`), and every one is stopped by the `ExitStack` that started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


class BenchError(RuntimeError):
    """A benchmark process could not start or misbehaved; the message says which and why."""


@dataclass(frozen=True)
class Measured:
    """The processes whose CPU and memory count as one target: these and every process they started.

    The tree is read anew at each call, so a worker `kgb proxy` starts (or restarts) is
    counted from when it appears; nginx's master lists its worker too, counted once.
    The first pid is the relay; the rest of the tree are its helpers. `tree=False`
    counts the listed pids alone (the bench's own process, whose children are the targets).
    """

    pids: tuple[int, ...]
    tree: bool = True

    def processes(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for pid in self.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(pid)
                for process in (root, *(root.children(recursive=True) if self.tree else ())):
                    found.setdefault(process.pid, process)
        return list(found.values())

    def role(self, process: psutil.Process) -> str:
        """`relay` for the first pid, else the process's name: what a row reports it under."""
        if process.pid == self.pids[0]:
            return "relay"
        with contextlib.suppress(psutil.Error):
            return process.name()
        return f"pid {process.pid}"

    def cpu_by_pid(self) -> dict[int, tuple[str, float]]:
        """Each live process's role and CPU seconds so far; one that exits between two readings loses its share."""
        times = {}
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times[process.pid] = (self.role(process), sum(process.cpu_times()[:2]))
        return times

    def cpu_seconds(self) -> float:
        return sum(cpu for _, cpu in self.cpu_by_pid().values())

    def reset_peak_rss(self) -> None:
        """Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each scenario gets its own peak."""
        for process in self.processes():
            with contextlib.suppress(OSError):
                Path(f"/proc/{process.pid}/clear_refs").write_text("5")

    def peak_rss_by_process(self) -> dict[str, float]:
        """Peak RSS in MB per role (processes of one role summed: nginx's master and worker are one role each)."""
        peaks: dict[str, float] = {}
        for process in self.processes():
            with contextlib.suppress(OSError, BenchError):
                role = self.role(process)
                peaks[role] = peaks.get(role, 0.0) + _status_kb(process.pid, "VmHWM") / 1024
        return peaks

    def peak_rss_mb(self) -> float:
        return sum(self.peak_rss_by_process().values())


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


@dataclass(frozen=True)
class Target:
    """Something a load generator sends to: `fast` for unpaced answers, `paced` for 20 ms-paced streams."""

    name: str
    fast: str
    paced: str
    measured: dict[str, Measured]  # route ("fast"/"paced") -> the processes serving it; empty for direct


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM first so kgb proxy flushes its publisher; SIGKILL only if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _spawn(
    stack: contextlib.ExitStack,
    cmd: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    *,
    chatty: bool = False,
    cwd: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """`chatty`: the process prints as it works (a line per flow), so its stdout goes to the log, not a pipe it would fill.
    `cwd`: `python -m` imports from there first, ahead of PYTHONPATH, so it chooses the tree whose code runs."""
    handle = stack.enter_context(log.open("wb"))
    process = subprocess.Popen(cmd, cwd=cwd, stdout=handle if chatty else subprocess.PIPE, stderr=handle, env=env)
    stack.callback(_stop, process)
    return process


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-30:])


def start_fake(
    stack: contextlib.ExitStack, workdir: Path, name: str, deltas: int, pace: float, options: tuple[str, ...] = ()
) -> tuple[str, Measured]:
    """tests/fakes/anthropic.py in its own process (`options`: more of its flags); it prints its URL once it listens."""
    log = workdir / f"{name}.log"
    cmd = [sys.executable, "-m", "tests.fakes.anthropic", "--port", "0", "--deltas", str(deltas), "--pace", str(pace), *options]
    process = _spawn(stack, cmd, log)
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    if not url.startswith("http://"):
        raise BenchError(f"fake upstream {name} did not start:\n{_tail(log)}")
    return url, Measured((process.pid,))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, expect: int = 200) -> None:
    """Poll `url` until it answers `expect`; a process that exits meanwhile fails with its log."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{process.args[0]} exited with {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == expect:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(f"{url} did not answer {expect} within {START_TIMEOUT_S:.0f}s:\n{_tail(log)}")


def nginx_binary() -> str:
    """Debian's nginx; installed on the spot when missing (the bench is run by hand, as root, on a dev box)."""
    found = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError("nginx not found: apt-get install -y nginx-light (or nginx)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "nginx-light"], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    )
    return "/usr/sbin/nginx"


def nginx_conf(workdir: Path, routes: dict[int, str]) -> str:
    """One worker (like kgb's one event loop), no buffering either way that would delay a chunk, pooled upstream connections.

    `client_body_buffer_size` keeps 500 KB bodies in memory, as kgb does, rather than in a temp file.
    """
    user = "user root;\n" if os.geteuid() == 0 else ""
    upstreams, servers = [], []
    for number, (port, url) in enumerate(routes.items()):
        upstreams.append(f"  upstream u{number} {{ server {url.removeprefix('http://')}; keepalive 256; }}")
        servers.append(
            f"  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ proxy_pass http://u{number};"
            ' proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } }'
        )
    return f"""{user}worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_max_body_size 64m;
  client_body_buffer_size 1m;
  client_body_temp_path {workdir}/nginx-body;
  proxy_temp_path {workdir}/nginx-proxy;
  keepalive_requests 100000;
{chr(10).join(upstreams)}
{chr(10).join(servers)}
}}
"""


def start_nginx(stack: contextlib.ExitStack, workdir: Path, fast: str, paced: str) -> Target:
    ports = {free_port(): fast, free_port(): paced}
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, ports))
    log = workdir / "nginx.log"
    process = _spawn(stack, [nginx_binary(), "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx-error.log")], log)
    fast_url, paced_url = (f"http://127.0.0.1:{port}" for port in ports)
    wait_http(fast_url + "/v1/models", process, log)
    workers = tuple(child.pid for child in psutil.Process(process.pid).children())
    measured = Measured((*workers, process.pid))  # the worker relays: it is the row's "relay"
    return Target("nginx", fast_url, paced_url, {"fast": measured, "paced": measured})


def kgb_command() -> list[str]:
    """`kgb` from the tree the bench runs in (processes start with cwd=ROOT): the venv's console script
    would import whichever tree the venv was installed from, which for a worktree is another one."""
    return [sys.executable, "-m", "kgb"]


def start_kgb(
    stack: contextlib.ExitStack, workdir: Path, name: str, upstream: str, bootstrap: str, topic: str, source: Path | None = None
) -> tuple[str, Measured]:
    """`kgb proxy` with capture and publishing on, its own spool directory, logging only warnings;
    `source`: the kgb of that source tree (another commit's checkout), run from it, in place of the bench's own."""
    port = free_port()
    spool = workdir / f"{name}-spool"
    env = {
        **os.environ,
        "KGB_KAFKA_BOOTSTRAP": bootstrap,
        "KGB_TOPIC": topic,
        "KGB_SPOOL_DIR": str(spool),
        # The MCP relay idles in the bench, but two proxies must not both claim :9000.
        "KGB_MCP_PORT": str(free_port()),
        "KGB_MCP_TOPIC": topic + "-mcp",
    }
    cmd = [*kgb_command(), "--log-level", "WARNING", "proxy", "--port", str(port), "--upstream", upstream]
    log = workdir / f"{name}.log"
    process = _spawn(stack, cmd, log, env, cwd=source or ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/ready", process, log)
    return url, Measured((process.pid,))


def workdir(stack: contextlib.ExitStack, keep: bool) -> Path:
    """Logs, nginx config and spools; world-readable so nginx's worker can use it, removed unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix="kgb-bench-"))
    path.chmod(0o755)
    if not keep:
        stack.callback(shutil.rmtree, path, True)
    return path
