"""proxy/logwatch.py: the worker sleeps until the log grows, and its own writes beside the log do not wake it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy import checkpoint, logwatch
from proxy.logformat import Kind
from proxy.logreader import Position
from proxy.logwatch import LogWatch
from proxy.logwriter import LogSettings, LogWriter

FOREVER = 3600.0  # a wait that only an event ends
HANG = 60.0  # bounds a hang; nothing here is timed
QUIET = 0.3  # how long a watch that must not wake is given to wake anyway


async def sleeping(watch: LogWatch) -> asyncio.Task[None]:
    task = asyncio.create_task(watch.wait(FOREVER))
    await asyncio.sleep(QUIET)  # asleep on the watch, and not woken by what happened before
    return task


async def test_an_append_wakes_the_worker_and_its_checkpoint_does_not(tmp_path: Path) -> None:
    writer = LogWriter(LogSettings(tmp_path))
    watch, stop = LogWatch(tmp_path), asyncio.Event()
    assert watch.notified, "Linux: inotify"
    watch.start(stop)
    try:
        task = await sleeping(watch)
        checkpoint.save(tmp_path, Position(0, 10))
        checkpoint.delete_published(tmp_path, Position(0, 0))
        await asyncio.sleep(QUIET)
        assert not task.done(), "the worker's own checkpoint woke it"
        writer.append(Kind.REQUEST_HEAD, bytes(16), b"head")
        async with asyncio.timeout(HANG):
            await task
    finally:
        watch.close()
        writer.close()


async def test_a_new_segment_wakes_it_and_so_does_stop(tmp_path: Path) -> None:
    LogWriter(LogSettings(tmp_path)).close()
    watch, stop = LogWatch(tmp_path), asyncio.Event()
    watch.start(stop)
    try:
        task = await sleeping(watch)
        LogWriter(LogSettings(tmp_path)).close()  # a restarted relay's first segment
        async with asyncio.timeout(HANG):
            await task
        task = await sleeping(watch)
        stop.set()
        async with asyncio.timeout(HANG):
            await task
            await watch.wait(FOREVER)  # once stopped, every wait ends at once
    finally:
        watch.close()


async def test_an_append_while_it_is_not_waiting_ends_the_next_wait(tmp_path: Path) -> None:
    """The kernel's event read between two waits (the worker busy publishing) is not lost: the reader stays
    registered, so the append made after the last poll ends the next wait, and that one only."""
    writer = LogWriter(LogSettings(tmp_path))
    watch = LogWatch(tmp_path)
    watch.start(asyncio.Event())
    try:
        writer.append(Kind.REQUEST_HEAD, bytes(16), b"head")
        await asyncio.sleep(QUIET)  # the loop reads the event while no wait is on
        async with asyncio.timeout(HANG):
            await watch.wait(FOREVER)
        task = await sleeping(watch)
        assert not task.done(), "an append already read for woke it again"
        task.cancel()
    finally:
        watch.close()
        writer.close()


async def test_without_inotify_it_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logwatch, "INotify", None)
    watch, stop = LogWatch(tmp_path), asyncio.Event()
    assert not watch.notified
    watch.start(stop)
    try:
        async with asyncio.timeout(HANG):
            await watch.wait(FOREVER)  # returns at the backoff's step, with nothing appended
        stop.set()
        async with asyncio.timeout(HANG):
            await watch.wait(FOREVER)
    finally:
        watch.close()
