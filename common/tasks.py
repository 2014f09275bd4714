"""A helper task with the lifetime of a block, said once: `background`, and `Shared` for one task
that several overlapping blocks need (the first starts it, the last stops it).

`create_task` in an async context manager and `cancel` in its `finally`, with the
`CancelledError` suppressed, has three faults: a task that dies during the block
dies silently, its error is lost or replaces the block's own at the end, and a
cancellation of the block's owner while it waits for the task is swallowed. Here
the task's failure is logged when it happens and raised when the block ends
cleanly, and the owner's cancellation always propagates. (A `TaskGroup` would
wrap the block's own exceptions in an `ExceptionGroup`, changing what callers catch.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    """`work` running as a task for the block; at its end cancelled and waited for."""
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(_report)
    try:
        yield task
    finally:
        failure = await stopped(task)
    if failure is not None:
        raise failure


class Shared:
    """One helper task for blocks that overlap (the API and MCP apps in one process, several consumers
    in one test): the first block to enter starts it, the last to leave stops it, so a block that
    ends early never takes the task away from one still running. Its failure is logged when it
    happens and raised by the last block, as `background` does."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[None] | None = None
        self._users = 0

    @contextlib.asynccontextmanager
    async def use(self, work: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
        """For the block; `work` is called only by the block that starts the task."""
        if self._task is None:
            self._task = asyncio.create_task(work(), name=self.name)
            self._task.add_done_callback(_report)
        self._users += 1
        failure = None
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                task, self._task = self._task, None
                failure = await stopped(task)
        if failure is not None:
            raise failure


async def stopped(task: asyncio.Task[None]) -> Exception | None:
    """Cancel `task` and wait until it is done: its failure, if it failed. A cancellation of the caller
    while it waits is raised, not mistaken for the task's."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception as exc:  # noqa: BLE001 - handed to the caller, which raises it
        return exc
    return None


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (failure := task.exception()) is not None:
        log.error("%s stopped: %r", task.get_name(), failure, exc_info=failure)
