"""`kgb proxy`, with the time of each stage on an exchange's way to its first byte taken as it runs.

    python bench/path_probe.py OUT -- proxy --no-worker --port P --upstream URL

bench/path_bench.py starts it; nothing else should. It wraps a few of the relay's functions, found by
name, so the product carries no timing code, and the same wrappers fit another tree's relay when
PYTHONPATH puts that tree first. The marks are one set for the whole process, which is exact only when
one exchange is in flight at a time: the bench drives it at concurrency 1. On SIGUSR1 it writes the spans
gathered so far to OUT (JSON, nanoseconds) and starts again.
"""

from __future__ import annotations

import functools
import inspect
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

# Each span runs from one mark to the next one set on the same exchange's way (see `Marks.close`).
SPANS = (
    ("aiohttp: request bytes read to kgb's handler", "arrival", "handler"),
    ("kgb: handler to the request's write upstream", "handler", "sending"),
    ("upstream: that write to the upstream's head parsed", "sending", "head"),
    ("kgb: head parsed to the client's answer built", "head", "built"),
    ("kgb: first body bytes here to the client write", "ready", "writing"),
    ("aiohttp and the kernel: the client write", "writing", "out"),
)
# The upstream's span is not the relay's. Nor is all of a write's: the process it wakes may take the CPU
# from the relay at once (the kernel's wake-up preemption), and the write returns only when it is given back.
UPSTREAM = "sending"
TOTAL = "kgb and aiohttp in all"


class Marks:
    def __init__(self) -> None:
        self.at: dict[str, int] = {}
        self.samples: dict[str, list[int]] = {name: [] for name, _, _ in SPANS}
        self.samples[TOTAL] = []

    def mark(self, name: str) -> None:
        self.at[name] = time.perf_counter_ns()

    def first(self, name: str) -> None:
        self.at.setdefault(name, time.perf_counter_ns())

    def close(self) -> None:
        """The exchange's first body bytes went out: its spans are complete."""
        at = self.at
        if not {"arrival", "handler", "sending", "head", "built", "piece", "writing", "out"} <= at.keys():
            return
        at["ready"] = max(at["built"], at["piece"])  # a piece that came after the head was waited for: the upstream's time
        total = 0
        for name, start, end in SPANS:
            span = at[end] - at[start]
            self.samples[name].append(span)
            total += span if start != UPSTREAM else 0
        self.samples[TOTAL].append(total)

    def dump(self, out: Path) -> None:
        partial = out.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(self.samples))
        partial.rename(out)
        self.samples = {name: [] for name in self.samples}


MARKS = Marks()


def around(owner: Any, name: str, before: Callable[..., None] | None = None, after: Callable[..., None] | None = None) -> None:
    """Replace `owner.name` with a wrapper calling `before(*args)` ahead of it and `after(result, *args)` behind."""
    static = isinstance(owner.__dict__.get(name), staticmethod)
    inner = owner.__dict__[name].__func__ if static else getattr(owner, name)
    if inspect.iscoroutinefunction(inner):

        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            if before:
                before(*args)
            result = await inner(*args, **kwargs)
            if after:
                after(result, *args)
            return result

        wrapped: Callable[..., Any] = wrapped_async
    else:

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                before(*args)
            result = inner(*args, **kwargs)
            if after:
                after(result, *args)
            return result

    wrapped = functools.wraps(inner)(wrapped)
    setattr(owner, name, staticmethod(wrapped) if static else wrapped)


def install() -> None:
    from proxy import app, listen, tap, upstream

    def arrival(conn: Any, data: bytes) -> None:
        if conn.phase is not listen.Phase.BUSY:  # the bytes of a new request, not a body's next piece
            MARKS.at.clear()
            MARKS.mark("arrival")

    def head(_: object, response: Any) -> None:
        if response.status >= 200:  # an interim answer's head is read past
            MARKS.first("head")

    def writing(write: object) -> None:
        if "chunked" in MARKS.at:
            MARKS.first("writing")

    def written(_: object, write: object) -> None:
        if "chunked" in MARKS.at and "out" not in MARKS.at:
            MARKS.mark("out")
            MARKS.close()

    around(listen.Guarded, "data_received", before=arrival)
    around(app, "forward", before=lambda request: MARKS.mark("handler"))
    around(upstream._Connection, "write", before=lambda *_: MARKS.first("sending"))
    around(upstream.Response, "on_headers_complete", after=head)
    around(upstream.Response, "on_body", before=lambda *_: MARKS.first("piece"))
    around(app, "answer_for", after=lambda *_: MARKS.first("built"))
    around(tap.Exchange, "chunk", before=lambda *_: MARKS.first("chunked"))
    around(app, "_send", before=writing, after=written)


def main() -> None:
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # run as a script: this folder's modules must not shadow anything the relay imports
    out, rest = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1 :]
    install()
    signal.signal(signal.SIGUSR1, lambda *_: MARKS.dump(out))
    from kgb.cli import main as kgb

    kgb(rest)


if __name__ == "__main__":
    main()
