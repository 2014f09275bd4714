"""`consumers.processes`: workers are stopped together, and a worker's failure is the parent's."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from consumers.processes import WorkerFailed, start, supervise
from common.running import run_until_signal

ROOT = Path(__file__).resolve().parents[2]


# Worker targets: spawned processes import them from here.
def exits(code: int, after: float) -> None:
    time.sleep(after)
    raise SystemExit(code)


def serves_until_stopped(marker: str) -> None:
    """A consumer's shape: runs until SIGTERM, then finishes cleanly and leaves a trace."""

    async def serve(stop: asyncio.Event) -> None:
        with open(marker, "w") as out:
            out.write("serving")
        await stop.wait()
        with open(marker, "w") as out:
            out.write("stopped cleanly")

    run_until_signal(serve)


async def test_workers_that_finish_end_the_wait_and_the_last_tick_sees_them_done() -> None:
    workers = start(exits, [(0, 0.0), (0, 0.3)], "finish")
    ticks: list[bool] = []
    await supervise(workers, asyncio.Event(), lambda: ticks.append(all(not w.is_alive() for w in workers)))
    assert [w.exitcode for w in workers] == [0, 0]
    assert ticks[-1] is True


async def test_a_stop_reaches_every_worker_as_sigterm_and_each_finishes_cleanly(tmp_path: Path) -> None:
    markers = [os.path.join(tmp_path, f"worker-{i}") for i in range(2)]
    workers = start(serves_until_stopped, [(m,) for m in markers], "serve")
    stop = asyncio.Event()
    waiting = asyncio.create_task(supervise(workers, stop))
    await serving(markers)
    assert not waiting.done(), "workers that serve keep the parent waiting"
    stop.set()
    await asyncio.wait_for(waiting, 60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert [Path(m).read_text() for m in markers] == ["stopped cleanly"] * 2


async def serving(markers: list[str]) -> None:
    """Until every worker serves: a SIGTERM before its handler is set would kill it, not stop it (spawning is slow under load)."""
    for _ in range(600):
        if all(os.path.exists(m) and Path(m).read_text() == "serving" for m in markers):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the workers did not start serving within 60 s")


async def test_a_failing_worker_stops_the_others_and_fails_the_parent(tmp_path: Path) -> None:
    marker = os.path.join(tmp_path, "survivor")
    survivor = start(serves_until_stopped, [(marker,)], "serving")
    await serving([marker])
    workers = [*start(exits, [(3, 0.0)], "failing"), *survivor]
    with pytest.raises(WorkerFailed, match=r"failing-0 \(pid \d+\) exited with 3"):
        await asyncio.wait_for(supervise(workers, asyncio.Event()), 60)
    assert workers[1].exitcode == 0 and Path(marker).read_text() == "stopped cleanly"


async def test_a_worker_killed_from_outside_fails_the_parent() -> None:
    workers = start(serves_until_stopped, [(os.devnull,)], "killed")
    await asyncio.sleep(0.5)
    os.kill(workers[0].pid, signal.SIGKILL)
    with pytest.raises(WorkerFailed, match=f"exited with {-signal.SIGKILL}"):
        await asyncio.wait_for(supervise(workers, asyncio.Event()), 60)


PARENT = """
import sys, time
from pathlib import Path
from consumers.processes import start
from tests.consumers.test_processes import serves_until_stopped
(worker,) = start(serves_until_stopped, [(sys.argv[1],)], "orphan")
Path(sys.argv[2]).write_text(str(worker.pid))
time.sleep(600)
"""


async def test_workers_of_a_parent_killed_outright_stop_cleanly(tmp_path: Path) -> None:
    marker, pid_file = tmp_path / "orphan", tmp_path / "worker.pid"
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PARENT,
        str(marker),
        str(pid_file),
        stdout=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
    )
    async with asyncio.timeout(60):
        while not pid_file.exists():
            await asyncio.sleep(0.1)
    worker = int(pid_file.read_text())
    await serving([str(marker)])
    parent.kill()
    await parent.wait()
    async with asyncio.timeout(60):
        while pid_alive(worker):
            await asyncio.sleep(0.1)
    assert marker.read_text() == "stopped cleanly"


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie: an orphan is reaped by init, so it leaves no zombie for long."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
