"""One consumer as several processes, so it uses more than one core.

Python runs one core's worth of bytecode per process, and winni's work per
event (decoding, JSON parsing, hashing) is CPU: with one process it waits on
itself while PostgreSQL and the second core idle. Workers need no channel
between them: Kafka shares the partitions out (a consumer group, or the
partitions given to each replay worker), and PostgreSQL serialises the writers
of one session (its revision row, `consumers.winni.conversation_stage`).

Workers are spawned, not forked, so none inherits the parent's event loop or
connections, and each sets up its logging as the parent's. A stop in the
parent reaches them as SIGTERM: each finishes its batch and commits, as a lone
consumer does; so does the parent's death. A worker that exits on its own with
a failure stops the others, and the parent fails with its exit code: a
supervisor (compose's restart policy, systemd) restarts the whole group rather
than leave it running short of a worker, unseen.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from multiprocessing import current_process
from multiprocessing.process import BaseProcess
from typing import Any

from consumers.errors import ConsumerError
from common.failures import run_explained
from common.running import configure_logging, debugging

log = logging.getLogger(__name__)

# How often the parent looks at its workers (and calls its ``tick``), in seconds.
CHECK_EVERY = 0.2
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


class WorkerFailed(ConsumerError):
    """A worker process exited with a failure the parent did not ask for."""


def start(target: Callable[..., None], args: Sequence[tuple[Any, ...]], name: str) -> list[BaseProcess]:
    """One started process per entry of ``args``, each running ``target(*entry)``; ``target`` must be importable."""
    context = multiprocessing.get_context("spawn")
    parent, level = os.getpid(), logging.getLogger().getEffectiveLevel()
    processes: list[BaseProcess] = [
        context.Process(target=worker_main, args=(parent, level, debugging(), target, entry), name=f"{name}-{i}")
        for i, entry in enumerate(args)
    ]
    for process in processes:
        process.start()
    log.info("%s: started %d worker processes (pids %s)", name, len(processes), ", ".join(str(p.pid) for p in processes))
    return processes


def worker_main(parent: int, log_level: int, debug: bool, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    """A worker's first steps: bound to its parent's life, logging like it, then ``target(*args)``,
    whose expected failures end it with one line, as they end the `kgb` command.

    A parent killed outright (SIGKILL, the OOM killer) cannot stop its workers;
    on Linux the kernel then sends each one SIGTERM instead (``PR_SET_PDEATHSIG``),
    so no worker goes on consuming unsupervised. A parent gone before that was
    set is seen by its pid.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(f"parent {parent} gone before worker start")
    configure_logging(log_level, debug)
    run_explained(current_process().name, lambda: target(*args), debug)


async def supervise(processes: Sequence[BaseProcess], stop: asyncio.Event, tick: Callable[[], None] | None = None) -> None:
    """Wait until every worker has exited; stop them all when ``stop`` is set or one fails.

    ``tick`` runs every `CHECK_EVERY` seconds meanwhile, the last time once
    every worker has exited (replay reads its workers' progress there).
    Raises `WorkerFailed` when a worker exited non-zero before it was asked to stop.
    """
    failed: list[BaseProcess] = []
    stopping = False
    try:
        while True:
            running = [p for p in processes if p.is_alive()]
            if not stopping:
                failed = [p for p in processes if p.exitcode not in (None, 0)]
                if stop.is_set() or failed:
                    stopping = True
                    stop_all(running)
            if tick:
                tick()
            if not running:
                break
            await asyncio.sleep(CHECK_EVERY)
    finally:
        stop_all(processes)
        for process in processes:
            await asyncio.to_thread(process.join)
    if failed:
        raise WorkerFailed(", ".join(f"worker {p.name} (pid {p.pid}) exited with {p.exitcode}" for p in failed))


def stop_all(processes: Sequence[BaseProcess]) -> None:
    """SIGTERM to those still running: the same stop a lone consumer gets."""
    for process in processes:
        if process.is_alive():
            process.terminate()
