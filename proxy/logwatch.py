"""Waking the capture worker when the log grows, in place of polling it blindly.

On Linux an inotify watch on the log's directory (inotify_simple: a thin
ctypes binding, read from the event loop) wakes the worker when a file in it
is written or created: no wakeups while nothing is captured, and no sleep
between an append and its read. The writer knows nothing of it, so the relay's
path gains only the kernel's own event, and a worker run alone works the same.

A wake costs the worker a context switch and a turn of its loop, which on a
busy log cost more than the reading, so it is woken once per burst, not once
per write. The watch is one-shot (its first event removes it), and it is set
only when the worker is about to sleep on it: once a poll found nothing, it is
set and the log polled once more (what came before it is read then, what comes
after it wakes the worker), and the worker sleeps until its event. A poll that
did find records means more are likely on the way: the worker sleeps GATHER
and polls again, and no event wakes it meanwhile. Its own checkpoint and
figures, written in the same directory, may fire the watch too: one poll each.

The inotify reader stays registered from `start` to `close`, and one task per
session turns `stop` into the same wake-up, so a wait costs one future and one
timer. A watch can still miss a write (a log on a network filesystem), so the
caller keeps a slow safety poll; where there is no inotify (or the watch cannot
be set again: the directory went), polling with a backoff from IDLE_MIN to
IDLE_MAX is all there is.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

try:
    from inotify_simple import INotify, flags
except (ImportError, OSError, AttributeError):  # not Linux: no inotify_init1 in the C library
    INotify = None

log = logging.getLogger(__name__)

IDLE_MIN, IDLE_MAX = 0.001, 0.05  # seconds between polls of a log with nothing new, without inotify
SAFETY_POLL = 1.0  # seconds between polls of a log inotify said nothing about
# Between two polls of a log that is being written: a burst of appends is read in one poll, not one wake per
# write. (Every worker is a process of its own now, the stdio shim's too, so this costs a relay nothing.)
# Under paced streams a wake is most of the worker's cost: 10 ms in place of 5 took a quarter to a third off
# its CPU per exchange; the lag to the topic stayed as it was at c=1 and under paced streams, and grew by up to
# ~10 ms under sustained load (bench/README, stop 26).
GATHER = 0.010
OVERFLOW_WD = -1  # the kernel's queue overflowed: the watch's event may be lost with it


class LogWatch:
    """`start`, then, after each poll, `found` if it read something and `wait` before the next poll."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._inotify = None
        self._wd: int | None = None  # the one-shot watch, while set and not fired
        self._found = False  # the last poll read something
        self._idle = IDLE_MIN
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Task[bool] | None = None
        self._waiter: asyncio.Future[None] | None = None  # a wait the watch's event ends
        if INotify is None:
            return
        try:
            self._inotify = INotify(nonblocking=True)
        except OSError as exc:  # out of instances (fs.inotify.max_user_instances)
            log.warning("capture worker: no inotify on %s (%s); polling the log instead", directory, exc)

    @property
    def notified(self) -> bool:
        """Whether the kernel tells of appends (else this polls)."""
        return self._inotify is not None

    def start(self, stop: asyncio.Event) -> None:
        """Listen, on the running loop, until `close`: to the kernel's events, and for `stop`."""
        self._loop = loop = asyncio.get_running_loop()
        self._stopping = asyncio.create_task(stop.wait())
        self._stopping.add_done_callback(self._wake)
        if self._inotify is not None:
            loop.add_reader(self._inotify.fileno(), self._readable)

    def found(self) -> None:
        self._found = True
        self._idle = IDLE_MIN

    async def wait(self, most: float) -> None:
        """Until the next poll is due, `stop` is set, or `most` seconds passed: GATHER after a poll that read
        something; after one that did not, until the log grows (at once when the watch had to be set first:
        the caller polls again before it sleeps). Polling: the backoff's next step."""
        assert self._loop is not None, "start() first"
        found, self._found = self._found, False
        if self._stopping is None or self._stopping.done():
            return
        if self._inotify is not None and not found and self._wd is None:
            self._watch()
            if self._inotify is not None:
                return  # set: the caller polls once more before it sleeps on it
        if self._inotify is None:
            most, self._idle = min(most, self._idle), min(self._idle * 2, IDLE_MAX)
        elif found:
            most = min(most, GATHER)
        waiter = self._loop.create_future()
        if not found:
            self._waiter = waiter
        timer = self._loop.call_later(most, self._end, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        if self._stopping is not None:
            self._stopping.cancel()
            self._stopping = None
        self._unwatch()
        self._wake()

    def _unwatch(self) -> None:
        if self._inotify is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = self._wd = None

    @staticmethod
    def _end(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    def _wake(self, _: object = None) -> None:
        """End the wait on the log (the watch's event, a stop, a close)."""
        if self._waiter is not None:
            self._end(self._waiter)

    def _watch(self) -> None:
        """Set the one-shot watch; poll from now on if it cannot be set (the directory went, or no watches left)."""
        assert self._inotify is not None
        try:
            self._wd = self._inotify.add_watch(self.directory, flags.MODIFY | flags.CREATE | flags.ONLYDIR | flags.ONESHOT)
        except OSError as exc:  # fs.inotify.max_user_watches, a filesystem without it, the directory gone
            log.warning("capture worker: no inotify watch on %s (%s); polling the log instead", self.directory, exc)
            self._unwatch()

    def _readable(self) -> None:
        """Read every queued event (one ioctl and one read): the watch's (the kernel then removed it, and says
        so with an IGNORED event) ends a wait on the log."""
        assert self._inotify is not None
        if any(event.wd in (self._wd, OVERFLOW_WD) for event in self._inotify.read(timeout=0)):
            self._wd = None
            self._wake()
