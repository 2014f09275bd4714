"""The cap on request-body bytes held at once (proxy/budget.py): pure asyncio, no network."""

from __future__ import annotations

import asyncio

from proxy.budget import ByteBudget


async def settle() -> None:
    """Let every task that can run, run (no clock involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_what_fits_goes_in_and_the_rest_waits_for_room() -> None:
    budget = ByteBudget(1000)
    entered: list[str] = []
    releases = {name: asyncio.Event() for name in "abc"}

    async def take(name: str, size: int) -> None:
        async with budget.hold(size):
            entered.append(name)
            await releases[name].wait()

    tasks = [asyncio.create_task(take("a", 600)), asyncio.create_task(take("b", 300))]
    await settle()
    tasks.append(asyncio.create_task(take("c", 600)))
    await settle()
    assert entered == ["a", "b"] and budget.held == 900
    releases["a"].set()
    await settle()
    assert entered == ["a", "b", "c"] and budget.held == 900
    releases["b"].set()
    releases["c"].set()
    await asyncio.gather(*tasks)
    assert budget.held == 0


async def test_a_body_larger_than_the_budget_waits_for_it_to_empty_then_goes_alone() -> None:
    budget = ByteBudget(1000)
    small_done = asyncio.Event()
    entered: list[str] = []

    async def small() -> None:
        async with budget.hold(100):
            entered.append("small")
            await small_done.wait()

    async def huge() -> None:
        async with budget.hold(5000):
            entered.append("huge")
            assert budget.held == 1000

    first = asyncio.create_task(small())
    await settle()
    second = asyncio.create_task(huge())
    await settle()
    assert entered == ["small"]
    small_done.set()
    await asyncio.gather(first, second)
    assert entered == ["small", "huge"] and budget.held == 0


async def test_a_failure_inside_gives_the_room_back() -> None:
    budget = ByteBudget(10)
    try:
        async with budget.hold(10):
            raise ValueError("the upstream refused")
    except ValueError:
        pass
    assert budget.held == 0
