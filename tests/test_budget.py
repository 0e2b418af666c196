"""The byte budget between reading a body and its commit (gateway/budget.py)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.budget import ByteBudget
from tests.conftest import wait_for_async

pytestmark = pytest.mark.anyio


async def test_requests_within_the_budget_do_not_wait() -> None:
    budget = ByteBudget(100)
    async with budget.hold(60), budget.hold(40):
        assert budget.available == 0
    assert budget.available == 100


async def test_a_request_beyond_the_budget_waits_until_bytes_come_back() -> None:
    budget = ByteBudget(100)
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with budget.hold(80):
            order.append("big in")
            await release.wait()
        order.append("big out")

    async def waiter(name: str, size: int) -> None:
        async with budget.hold(size):
            order.append(f"{name} in")

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    second = asyncio.create_task(waiter("second", 50))
    third = asyncio.create_task(waiter("third", 10))  # would fit, but waits its turn (FIFO)
    await wait_for_async(lambda: len(budget._waiters) == 2, what="both requests to queue")
    assert order == ["big in"]
    release.set()
    await asyncio.gather(first, second, third)
    assert order == ["big in", "big out", "second in", "third in"]
    assert budget.available == 100


async def test_a_body_bigger_than_the_budget_takes_all_of_it() -> None:
    budget = ByteBudget(100)
    async with budget.hold(10_000):
        assert budget.available == 0
    assert budget.available == 100


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    budget = ByteBudget(100)
    got: list[int] = []

    async def take(size: int) -> None:
        async with budget.hold(size):
            got.append(size)

    async with budget.hold(90):
        blocked = asyncio.create_task(take(50))
        behind = asyncio.create_task(take(5))
        await wait_for_async(lambda: len(budget._waiters) == 2, what="both requests to queue")
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        await asyncio.wait_for(behind, 1)  # no longer stuck behind the cancelled one
    assert got == [5]
    assert budget.available == 100
    assert not budget._waiters
