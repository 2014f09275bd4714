"""`kgb proxy` keeps its capture worker running: a child process, restarted whenever it exits.

The worker is a process of its own so that its CPU (decoding, reassembly,
redaction, Avro) never competes with the relay's event loop for the GIL, and so
that either can die without the other. Restarts back off while the worker
keeps dying at once, and reset once it has run a while.

The worker's standard input is a pipe from here, and its end is the stop: on
stop (after the relay has stopped appending) the pipe is closed, the worker
publishes what the log holds within KGB_SHUTDOWN_TIMEOUT and exits; past a
grace period it is killed, which loses nothing either: the log keeps whatever
it did not publish. A pipe, not a signal, because its end cannot be missed (a
SIGTERM during the worker's start-up would kill it) and because it also ends
when this process is killed, so a worker never outlives its proxy for long.
It runs in its own session, so a terminal's Ctrl-C reaches only the proxy.

The stdio shim (proxy/mcp/stdio.py) supervises its worker the same way, on its
own log (`env` names it) and with the worker's standard output on the shim's
standard error (the shim's own is the JSON-RPC channel). A shim's server may
exit before its worker has started, so the shim waits for `started` before the
stop: a worker stopped before its first session would leave the log unpublished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from proxy import workerstats

log = logging.getLogger(__name__)

RESTART_MIN, RESTART_MAX = 0.5, 10.0
HEALTHY_AFTER = 30.0  # seconds of running after which a crash is not a crash loop
KILL_GRACE = 5.0  # seconds past KGB_SHUTDOWN_TIMEOUT before SIGKILL
STARTED_POLL = 0.01  # seconds between looks at a starting worker's figures


def worker_command(log_level: str) -> list[str]:
    return [sys.executable, "-m", "kgb", "--log-level", log_level, "capture-worker", "--supervised"]


def next_delay(delay: float, ran_for: float) -> float:
    """Back off while the worker dies young; start over once it lived `HEALTHY_AFTER`."""
    return RESTART_MIN if ran_for >= HEALTHY_AFTER else min(delay * 2, RESTART_MAX)


class Supervisor:
    def __init__(
        self, command: Sequence[str], shutdown_timeout: float, env: Mapping[str, str] | None = None, stdout: int | None = None
    ) -> None:
        self.command = list(command)
        self.shutdown_timeout = shutdown_timeout
        self.env, self.stdout = env, stdout
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RESTART_MIN
        while not self._stop.is_set():
            started = loop.time()
            self.process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=self.stdout, env=self.env, start_new_session=True
            )
            log.info("capture worker started (pid %d)", self.process.pid)
            stopping = asyncio.create_task(self._stop.wait())
            exited = asyncio.create_task(self.process.wait())
            await asyncio.wait([stopping, exited], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if self._stop.is_set():
                await self._terminate(exited)
                return
            delay = next_delay(delay, loop.time() - started)
            self.restarts += 1
            log.error("capture worker (pid %d) exited with %s; restarting in %.1fs", self.process.pid, exited.result(), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def stop(self) -> None:
        self._stop.set()

    async def started(self, directory: Path, timeout: float) -> bool:
        """The worker on the log in `directory` has begun its sessions (its figures carry its pid: from
        then a stop still publishes what the log holds); False if not within `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            figures = workerstats.read(directory)
            if self.process is not None and figures is not None and figures.pid == self.process.pid:
                return True
            await asyncio.sleep(STARTED_POLL)
        return False

    async def _terminate(self, exited: asyncio.Task[int]) -> None:
        assert self.process is not None
        if not exited.done() and self.process.stdin is not None:
            self.process.stdin.close()  # the worker's signal to publish what the log holds and exit
        try:
            await asyncio.wait_for(asyncio.shield(exited), 2 * self.shutdown_timeout + KILL_GRACE)
        except TimeoutError:
            log.error("capture worker (pid %d) did not stop; killed (the log keeps what it had not published)", self.process.pid)
            self.process.kill()
            await exited
        log.info("capture worker (pid %d) stopped with %s", self.process.pid, exited.result())
