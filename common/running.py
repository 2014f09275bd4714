"""How every KGB service process runs: one event loop until SIGINT or SIGTERM, logging set up the same way.

Shared by the `kgb` command and the worker processes a consumer spawns
(`consumers.processes`), which start from nothing (the spawn method) and
so must set up their loop, signals and logging themselves.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# glibc's mallopt(3) parameters (malloc.h), and what `keep_heap` sets them to
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 16 * 1024 * 1024


_debugging = False


def configure_logging(level: int | str, debug: bool = False) -> None:
    """``debug`` (`kgb --debug`) keeps every traceback and the clients' own logs (`common.outages`,
    which --log-level DEBUG keeps too); the worker processes a consumer spawns inherit it."""
    from common.outages import QuietClients

    global _debugging
    _debugging = debug
    logging.basicConfig(level=level, format=LOG_FORMAT)
    if not debug and logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for handler in logging.getLogger().handlers:
            handler.addFilter(QuietClients())


def debugging() -> bool:
    return _debugging


def run_until_signal(service: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``service(stop)``; SIGINT and SIGTERM set ``stop``, so it can finish what is in flight."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service(stop)

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


def settle_heap() -> None:
    """Once a long-running service has started: its imports, settings and apps leave the collector's sight
    (`gc.freeze`), so a full collection under load scans only what the traffic made. Scanning the proxy's
    startup heap took 27-29 ms a time, on the loop that relays every exchange."""
    gc.collect()
    gc.freeze()


def keep_heap() -> bool:
    """For the processes that move large bodies (the proxy, the capture worker): blocks up to
    `MMAP_THRESHOLD_BYTES` come from the heap, and up to `TRIM_THRESHOLD_BYTES` of freed heap stays mapped.
    glibc's defaults map a block of 128 KB or more afresh and unmap it when freed (raising that bound only
    as it sees such frees, and trimming the heap's top past twice it), so each of a large body's socket
    reads and joins faulted in and zeroed new pages: a third of the relay's CPU on 500 KB requests (perf:
    page faults, clear_page, munmap). The cost is that much freed memory kept resident. Whether it took:
    False where the C library has no mallopt (not glibc), which changes nothing."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed: a faster event loop for the same code (the benchmark compares)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
