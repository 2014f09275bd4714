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
    """`wait` until the log may have grown; `found` after a poll that read something."""

    def __init__(self, directory: Path) -> None:
        self._inotify = None
        self._idle = IDLE_MIN
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

    async def wait(self, stop: asyncio.Event, most: float) -> None:
        """Until the log may have grown, `stop` is set, or `most` seconds passed (polling: the backoff's next step, if sooner)."""
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait())]
        if self._inotify is None:
            most, self._idle = min(most, self._idle), min(self._idle * 2, IDLE_MAX)
        else:
            waits.append(grown := loop.create_future())
            loop.add_reader(self._inotify.fileno(), self._readable, grown)
        try:
            await asyncio.wait(waits, timeout=most, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._inotify is not None:
                loop.remove_reader(self._inotify.fileno())
            waits[0].cancel()
        if len(waits) > 1 and waits[1].done() and not stop.is_set():
            await asyncio.sleep(GATHER)

    def found(self) -> None:
        self._idle = IDLE_MIN

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def _readable(self, grown: asyncio.Future[object]) -> None:
        """Read every queued event (one ioctl and one read); wake on one that names a segment."""
        assert self._inotify is not None
        if any(wakes(event.name) for event in self._inotify.read(timeout=0)) and not grown.done():
            grown.set_result(None)
