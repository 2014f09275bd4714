"""The proxies a user would pick instead of kgb, for the same run: mitmproxy and LiteLLM's Anthropic pass-through.

Each is installed on first use into a venv of its own under ~/.cache/kgb/peers (so
neither's dependencies touch the project's), pinned, and run offline on 127.0.0.1
in front of the same fake upstreams as the other targets (see /work/shared/PEERS-BENCH.md
for what running them offline takes).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import API_KEY
from bench.targets import BenchError, Measured, Target, _spawn, free_port, wait_http

PEERS_DIR = Path.home() / ".cache" / "kgb" / "peers"


@dataclass(frozen=True)
class Peer:
    """A pinned PyPI requirement, the console script it brings, and the distribution whose version is reported."""

    name: str
    requirement: str
    script: str
    distribution: str


# mitmproxy 12 needs Python 3.12; 11.0.2 is the newest for the 3.11 the bench runs on.
MITMPROXY = Peer("mitmproxy", "mitmproxy==11.0.2", "mitmdump", "mitmproxy")
# 1.107.0 was a compromised release (withdrawn); from 1.110 the `proxy` extra needs a
# `litellm-proxy` distribution the index does not have. 1.106.12 is the last before both.
LITELLM = Peer("litellm", "litellm[proxy]==1.106.12", "litellm", "litellm")


def installed(peer: Peer) -> Path:
    """The peer's console script, installing the pinned requirement into its venv first if it is not there."""
    venv = PEERS_DIR / peer.name
    script = venv / "bin" / peer.script
    if not script.exists():
        print(f"  installing {peer.requirement} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", peer.requirement], capture_output=True, text=True)
        if result.returncode != 0 or not script.exists():
            raise BenchError(f"installing {peer.requirement} failed:\n{result.stderr[-3000:]}")
    return script


def version(peer: Peer) -> str:
    python = PEERS_DIR / peer.name / "bin" / "python"
    code = f"import importlib.metadata as m; print(m.version({peer.distribution!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def start_mitmproxy(stack: contextlib.ExitStack, workdir: Path, name: str, upstream: str, stream: bool) -> tuple[str, Measured]:
    """`mitmdump` in reverse mode; it buffers whole bodies unless `stream` (stream_large_bodies=1: every body streams)."""
    port = free_port()
    cmd = [str(installed(MITMPROXY)), "--mode", f"reverse:{upstream}", "-p", str(port), "--listen-host", "127.0.0.1"]
    if stream:
        cmd += ["--set", "stream_large_bodies=1"]
    log = workdir / f"{name}.log"
    process = _spawn(stack, cmd, log, chatty=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/v1/models", process, log)
    return url, Measured((process.pid,))


def litellm_config(workdir: Path) -> Path:
    """No models: the pass-through route needs none; the master key comes from the environment."""
    config = workdir / "litellm.yaml"
    config.write_text("model_list: []\ngeneral_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n")
    return config


def start_litellm(stack: contextlib.ExitStack, workdir: Path, name: str, upstream: str) -> tuple[str, Measured]:
    """`litellm` with one worker; its Anthropic pass-through is `/anthropic/v1/messages`, keyed by the loadgen's key."""
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else it downloads its cost map at start
        "LITELLM_MASTER_KEY": API_KEY,  # clients send it as x-api-key, which the loadgen does
        "ANTHROPIC_API_BASE": upstream,
        "ANTHROPIC_API_KEY": "sk-ant-bench-upstream",
        "LITELLM_LOG": "ERROR",
    }
    cmd = [
        str(installed(LITELLM)),
        "--config",
        str(litellm_config(workdir)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    log = workdir / f"{name}.log"
    process = _spawn(stack, cmd, log, env, chatty=True)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/health/liveliness", process, log)
    return base + "/anthropic", Measured((process.pid,))


def start_peers(stack: contextlib.ExitStack, workdir: Path, fast: str, paced: str) -> list[Target]:
    """mitmproxy buffering (its default), mitmproxy streaming, and LiteLLM: one process per upstream each."""
    targets = []
    for name, stream in (("mitm", False), ("mitm-stream", True)):
        fast_url, fast_measured = start_mitmproxy(stack, workdir, f"{name}-fast", fast, stream)
        paced_url, paced_measured = start_mitmproxy(stack, workdir, f"{name}-paced", paced, stream)
        targets.append(Target(name, fast_url, paced_url, {"fast": fast_measured, "paced": paced_measured}))
    fast_url, fast_measured = start_litellm(stack, workdir, "litellm-fast", fast)
    paced_url, paced_measured = start_litellm(stack, workdir, "litellm-paced", paced)
    targets.append(Target("litellm", fast_url, paced_url, {"fast": fast_measured, "paced": paced_measured}))
    return targets
