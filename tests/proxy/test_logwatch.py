"""proxy/logwatch.py: the worker sleeps until the log grows, is not woken again for appends it is about to
read, and no append made after its last poll is missed."""

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
    """The worker's loop after a poll that read nothing: its first wait only sets the watch (the worker polls
    again), the next one sleeps on it."""
    async with asyncio.timeout(HANG):
        await watch.wait(FOREVER)
    task = asyncio.create_task(watch.wait(FOREVER))
    await asyncio.sleep(QUIET)
    assert not task.done(), "nothing was appended, yet it woke"
    return task


async def test_an_append_wakes_it_and_so_do_its_own_writes_once_each(tmp_path: Path) -> None:
    writer = LogWriter(LogSettings(tmp_path))
    watch = LogWatch(tmp_path)
    assert watch.notified, "Linux: inotify"
    watch.start(asyncio.Event())
    try:
        task = await sleeping(watch)
        writer.append(Kind.REQUEST_HEAD, bytes(16), b"head")
        async with asyncio.timeout(HANG):
            await task
        task = await sleeping(watch)
        checkpoint.save(tmp_path, Position(0, 10))  # the worker's own write: one poll, then asleep again
        async with asyncio.timeout(HANG):
            await task
        task = await sleeping(watch)
        writer.append(Kind.REQUEST_HEAD, bytes(16), b"head")
        async with asyncio.timeout(HANG):
            await task
    finally:
        watch.close()
        writer.close()


async def test_after_a_poll_that_read_something_it_polls_again_whatever_the_kernel_says(tmp_path: Path) -> None:
    """A burst is read GATHER by GATHER: the appends of a busy log end no wait early, and need not."""
    writer = LogWriter(LogSettings(tmp_path))
    watch = LogWatch(tmp_path)
    watch.start(asyncio.Event())
    try:
        task = await sleeping(watch)
        writer.append(Kind.REQUEST_HEAD, bytes(16), b"head")
        async with asyncio.timeout(HANG):
            await task
        watch.found()
        async with asyncio.timeout(HANG):
            await watch.wait(FOREVER)  # GATHER, no event needed
        task = await sleeping(watch)
        task.cancel()
    finally:
        watch.close()
        writer.close()


async def test_an_append_between_setting_the_watch_and_the_poll_after_it_is_not_lost(tmp_path: Path) -> None:
    writer = LogWriter(LogSettings(tmp_path))
    watch = LogWatch(tmp_path)
    watch.start(asyncio.Event())
    try:
        async with asyncio.timeout(HANG):
            await watch.wait(FOREVER)  # sets the watch
            writer.append(Kind.REQUEST_HEAD, bytes(16), b"head")  # the poll after it reads this one; and
            await watch.wait(FOREVER)  # this wait ends at once, so it is read even if that poll came too early
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


async def test_without_inotify_it_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logwatch, "INotify", None)
    watch = LogWatch(tmp_path)
    assert not watch.notified
    watch.start(asyncio.Event())
    try:
        async with asyncio.timeout(HANG):
            await watch.wait(FOREVER)  # returns at the backoff's step, with nothing appended
    finally:
        watch.close()


async def test_a_watch_that_cannot_be_set_again_turns_into_polling(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    watch = LogWatch(directory)
    watch.start(asyncio.Event())
    try:
        task = await sleeping(watch)
        directory.rmdir()  # the watch goes with it
        async with asyncio.timeout(HANG):
            await task
            await watch.wait(FOREVER)  # cannot set it on a directory that is gone: the backoff's step
        assert not watch.notified
    finally:
        watch.close()
