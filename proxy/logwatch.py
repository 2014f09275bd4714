"""Waking the capture worker when the log grows, in place of polling it blindly.

On Linux an inotify watch on the log's directory (inotify_simple: a thin
ctypes binding, read from the event loop) wakes the worker when a segment is
written or created: no wakeups while nothing is captured, and no sleep between
an append and its read. The writer knows nothing of it, so the relay's path
gains only the kernel's own event (queued once while the worker is busy:
identical unread events merge), and a worker run alone works the same. Only
segment names wake it; its own checkpoint writes in the same directory do not.
A watch can still miss a write (a log on a network filesystem, the directory
replaced), so the caller keeps a slow safety poll; where there is no inotify,
polling with a backoff from IDLE_MIN to IDLE_MAX is all there is.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from proxy.logwriter import segment_seq

try:
    from inotify_simple import INotify, flags
except (ImportError, OSError, AttributeError):  # not Linux: no inotify_init1 in the C library
    INotify = None

log = logging.getLogger(__name__)

IDLE_MIN, IDLE_MAX = 0.001, 0.05  # seconds between polls of a log with nothing new, without inotify
SAFETY_POLL = 1.0  # seconds between polls of a log inotify said nothing about
# After a wake, before reading: a burst of appends is read in one poll, not one wake per write. (Every worker
# is a process of its own now, the stdio shim's too, so this costs a relay nothing: it only batches.)
GATHER = 0.005


def wakes(name: str) -> bool:
    """An event on a segment; or one with no name (the queue overflowed, the watch went with its directory)."""
    return not name or segment_seq(name) is not None


class LogWatch:
    """`wait` until the log may have grown; `found` after a poll that read something.

    A wait costs one future and one timer: the inotify reader stays registered from `start` to `close`
    and its callback reads the events and wakes the waiter (or marks the next wait to end at once), and
    one task per session turns `stop` into the same wake-up."""

    def __init__(self, directory: Path) -> None:
        self._inotify = None
        self._idle = IDLE_MIN
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Task[bool] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._grown = False  # a segment changed since the last wait ended
        self._gathering = False
        if INotify is None:
            return
        try:
            self._inotify = INotify(nonblocking=True)
            self._inotify.add_watch(directory, flags.MODIFY | flags.CREATE | flags.ONLYDIR)
        except OSError as exc:  # out of watches or instances (fs.inotify.max_user_*), or a filesystem without it
            log.warning("capture worker: no inotify watch on %s (%s); polling the log instead", directory, exc)
            self.close()

    @property
    def notified(self) -> bool:
        """Whether the kernel tells of appends (else this polls)."""
        return self._inotify is not None

    def start(self, stop: asyncio.Event) -> None:
        """Listen, on the running loop, until `close`: to the kernel's events and for `stop`."""
        self._loop = loop = asyncio.get_running_loop()
        self._stopping = stopping = asyncio.create_task(stop.wait())
        stopping.add_done_callback(self._wake)
        if self._inotify is not None:
            loop.add_reader(self._inotify.fileno(), self._readable)

    async def wait(self, most: float) -> None:
        """Until the log may have grown (GATHER after the kernel said so), stop, or `most` seconds passed
        (polling: the backoff's next step, if sooner)."""
        assert self._loop is not None, "start() first"
        if self._stopping is None or self._stopping.done():
            return
        if self._inotify is None:
            most, self._idle = min(most, self._idle), min(self._idle * 2, IDLE_MAX)
        self._waiter = self._loop.create_future()
        self._gathering = self._grown
        self._timer = self._loop.call_later(GATHER if self._grown else most, self._wake)
        try:
            await self._waiter
        finally:
            self._timer.cancel()
            self._waiter = self._timer = None
            self._grown = False

    def found(self) -> None:
        self._idle = IDLE_MIN

    def close(self) -> None:
        if self._stopping is not None:
            self._stopping.cancel()
            self._stopping = None
        if self._inotify is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
        self._wake()

    def _wake(self, _: object = None) -> None:
        """End the wait (a timer's, a stop's or a close's call)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _readable(self) -> None:
        """Read every queued event (one ioctl and one read); on one that names a segment, end the wait
        GATHER from now (a burst of appends read in one poll, not one wake per write)."""
        assert self._inotify is not None and self._loop is not None
        if not any(wakes(event.name) for event in self._inotify.read(timeout=0)):
            return
        self._grown = True
        if self._waiter is not None and not self._gathering:
            self._gathering = True
            assert self._timer is not None
            self._timer.cancel()
            self._timer = self._loop.call_later(GATHER, self._wake)
