"""ccusage's 5-hour blocks, built from the hourly rollups: pure.

ccusage (``ccusage blocks``) groups usage into the windows Claude's
subscriptions meter: a block starts at the hour (UTC) of the first request after
the previous block, lasts five hours, and a request past them starts the next
block; a stretch of more than five hours without a request is shown as a gap,
from five hours after the last request to the next one. A block is active while
it has not ended and its last request is under five hours old.

Built from hours, a block holds every request of the hours it covers: one made
exactly on its fifth hour (to the microsecond) opens the next block here, where
ccusage keeps it in the old one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

BLOCK = timedelta(hours=5)
SUMMED = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "unpriced_requests",
)


@dataclass
class Block:
    group: tuple[Any, ...]
    start: datetime
    first_at: datetime
    last_at: datetime
    gap: bool = False
    models: list[str] = field(default_factory=list)
    sums: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SUMMED, 0))
    priced_cost: Decimal = Decimal(0)

    @property
    def end(self) -> datetime:
        return self.last_at if self.gap else self.start + BLOCK

    def active(self, now: datetime) -> bool:
        return not self.gap and now < self.end and now - self.last_at < BLOCK

    def add(self, hour: Mapping[str, Any]) -> None:
        if hour["model"] not in self.models:
            self.models.append(hour["model"])
        for name in SUMMED:
            self.sums[name] += hour[name]
        self.priced_cost += hour["priced_cost_usd"] or 0
        self.first_at = min(self.first_at, hour["first_at"])
        self.last_at = max(self.last_at, hour["last_at"])


def blocks(hours: Iterable[Mapping[str, Any]], group_of: Sequence[str]) -> list[Block]:
    """Blocks (and gaps) per group, oldest first; ``hours`` ordered by group, then hour."""
    out: list[Block] = []
    current: Block | None = None
    for hour in hours:
        group = tuple(hour[name] for name in group_of)
        if current is None or current.group != group or hour["hour"] >= current.start + BLOCK:
            if current is not None and current.group == group and hour["first_at"] - current.last_at > BLOCK:
                out.append(Block(group, current.last_at + BLOCK, current.last_at + BLOCK, hour["first_at"], gap=True))
            current = Block(group, hour["hour"], hour["first_at"], hour["last_at"])
            out.append(current)
        current.add(hour)
    return out


def status(block: Block, now: datetime) -> str:
    if block.gap:
        return f"gap {_duration(block.end - block.start)}"
    if block.active(now):
        return f"active, {_duration(block.end - now)} left"
    return "done"


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60}h {minutes % 60:02d}m"
