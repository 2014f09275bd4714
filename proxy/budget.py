"""A cap on the request-body bytes the relay holds at once, whatever the concurrency.

The relay reads a request's body whole before forwarding it (the capture log
gets it first). Without a cap, N concurrent bodies near KGB_MAX_BODY_BYTES
cost N times that in memory; with one, a request waits for room before its
body is read (its client sees a slower upload, TCP holds the rest), and the
room comes back once the body has gone upstream. A body is charged its
Content-Length, or the body limit when it has none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class ByteBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self._room = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Wait until `size` bytes fit (a size over the total waits for an empty budget), hold them inside."""
        size = min(size, self.total)
        async with self._room:
            await self._room.wait_for(lambda: self.held + size <= self.total)
            self.held += size
        try:
            yield
        finally:
            async with self._room:
                self.held -= size
                self._room.notify_all()
