"""A helper task with the lifetime of a block, said once: `background`.

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
from collections.abc import AsyncIterator, Coroutine
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
