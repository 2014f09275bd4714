"""`common.tasks.background` and `Shared`, the helper tasks of `common.outages.watching` and `proxy.workerstats.writing`:
cancelled and awaited at the block's end, their failures loud, their owner's cancellation kept."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
import pytest

from common.outages import Watch, watching
from common.tasks import Shared, background
from proxy.workerstats import FILE_NAME, WorkerFigures, writing


async def test_the_task_runs_for_the_block_and_is_cancelled_and_awaited_at_its_end() -> None:
    beats: list[int] = []
    stopped = asyncio.Event()

    async def beat() -> None:
        try:
            while True:
                beats.append(len(beats))
                await asyncio.sleep(0.001)
        finally:
            await asyncio.sleep(0.01)  # a task that tidies up after its cancellation: the block waits for it
            stopped.set()

    async with background(beat(), "beat") as task:
        await asyncio.sleep(0.02)
    assert beats and task.cancelled() and stopped.is_set()


async def test_a_task_that_dies_is_logged_at_once_and_raised_when_the_block_ends(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("probe blew up")

    with pytest.raises(RuntimeError, match="probe blew up"):
        async with background(broken(), "broken helper"):
            await asyncio.sleep(0.01)
            assert any("broken helper stopped" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


async def test_the_blocks_own_error_is_the_one_raised() -> None:
    async def broken() -> None:
        raise RuntimeError("helper")

    with pytest.raises(KeyError):
        async with background(broken(), "broken helper"):
            await asyncio.sleep(0.01)
            raise KeyError("block")


async def test_the_owner_cancelled_while_it_waits_for_the_task_stays_cancelled() -> None:
    waiting = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            waiting.set()
            await asyncio.sleep(1)

    async def owner() -> str:
        async with background(slow_to_stop(), "slow"):
            await asyncio.sleep(0)
        return "carried on"  # a swallowed cancellation would get here

    running = asyncio.create_task(owner())
    await waiting.wait()  # the block has ended and waits for the task to finish tidying up
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_watch_whose_probe_fails_is_not_silently_dead() -> None:
    async def failing_probe(target: str) -> bool:
        raise ValueError(f"cannot ask {target}")

    watch = Watch("Test service", failing_probe)
    with pytest.raises(ValueError, match="cannot ask here"):
        async with watching(watch, "here"):
            watch.noticed("refused")
            await asyncio.sleep(0.01)
    assert watch.hint is None  # stopped, so the next block starts a new one


async def test_a_shared_task_starts_once_and_runs_until_the_last_overlapping_block_ends() -> None:
    starts: list[str] = []
    done = asyncio.Event()

    async def work(who: str) -> None:
        starts.append(who)
        try:
            await asyncio.Event().wait()
        finally:
            done.set()

    shared = Shared("shared helper")

    async def joining() -> None:
        async with shared.use(lambda: work("joining")):
            await asyncio.sleep(0.01)

    async with shared.use(lambda: work("alone")):
        await asyncio.sleep(0)
    assert done.is_set()  # a block on its own starts and stops its task
    done.clear()
    async with shared.use(lambda: work("outer")):
        await asyncio.create_task(joining())
        await asyncio.sleep(0.01)
        assert not done.is_set()  # the joining block has ended; this one still has its task
    assert done.is_set()
    assert starts == ["alone", "outer"]


async def test_a_failure_of_a_shared_task_is_raised_by_the_last_block() -> None:
    async def broken() -> None:
        raise ValueError("broke")

    shared = Shared("broken shared")
    with pytest.raises(ValueError, match="broke"):
        async with shared.use(broken):
            async with shared.use(broken):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)


async def test_overlapping_watching_blocks_keep_the_watch_until_the_last_ends() -> None:
    asked: list[str] = []

    async def probe(target: str) -> bool:
        asked.append(target)
        return True

    watch = Watch("Test service", probe)
    started, release = asyncio.Event(), asyncio.Event()

    async def first_block() -> None:
        async with watching(watch, "first"):
            started.set()
            await release.wait()

    task = asyncio.create_task(first_block())
    await started.wait()
    async with watching(watch, "first"):
        release.set()
        await task
        assert watch.hint is not None  # the block that started the watch has ended, and it runs on for this one
        watch.noticed("a hint after the other block ended")
        await asyncio.sleep(0.01)
        assert asked == ["first"]
    assert watch.hint is None


async def test_worker_figures_are_written_once_more_as_the_block_ends(tmp_path: Path) -> None:
    figures = WorkerFigures()
    async with writing(tmp_path, lambda: figures):
        await asyncio.sleep(0.01)
        figures.events_published = 7
    assert orjson.loads((tmp_path / FILE_NAME).read_bytes())["events_published"] == 7
