"""How far a replay is: one line redrawn in place on a terminal, a log line now and then otherwise.

The total can grow while replay runs (the topic keeps filling, and each
catch-up reads new end offsets), so the line is recomputed from the counts
every time rather than kept as a bar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

log = logging.getLogger(__name__)

# How often the terminal line is redrawn, and a plain line logged, in seconds.
REDRAW_EVERY = 0.2
LOG_EVERY = 10.0


def duration(seconds: float) -> str:
    """``h:mm:ss``, the way an ETA is read at a glance."""
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def progress_line(done: int, total: int, seconds: float) -> str:
    """``done/total events (pct), rate events/s, ETA``; no rate or ETA before there is one to tell."""
    pct = 100.0 if total <= 0 else min(100.0, 100.0 * done / total)
    line = f"{done:,}/{total:,} events ({pct:.0f}%)"
    if seconds <= 0 or done <= 0:
        return line
    rate = done / seconds
    return f"{line}, {rate:,.0f} events/s, ETA {duration(max(0, total - done) / rate)}"


@dataclass
class Progress:
    """Counts events as batches finish and shows them on ``stream``: redrawn on a TTY, logged otherwise."""

    stream: TextIO
    total: int = 0
    done: int = 0
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    _shown: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self._shown = self.clock()

    @property
    def seconds(self) -> float:
        return self.clock() - self.started

    def advance(self, events: int) -> None:
        self.done += events
        wait = REDRAW_EVERY if self.stream.isatty() else LOG_EVERY
        if self.clock() - self._shown >= wait:
            self.show()

    def show(self) -> None:
        self._shown = self.clock()
        line = progress_line(self.done, max(self.total, self.done), self.seconds)
        if self.stream.isatty():
            self.stream.write(f"\r\x1b[2Kreplay: {line}")
            self.stream.flush()
        else:
            log.info("replay: %s", line)

    def finish(self) -> None:
        """The last count, and on a terminal the newline that leaves it on screen."""
        self.show()
        if self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()
