"""A budget of request-body bytes between the socket and the commit.

A parsed 500-event batch takes several times its body's size in Python objects, and every
request holds its objects until its group commits. Under 128 concurrent batches that is
hundreds of megabytes. Requests take their body's size from this budget before they are
parsed and give it back once answered; beyond it they wait (in arrival order) instead of
being refused, so no legitimate sender loses data and the store still gets full groups.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.available = capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size: int) -> int:
        """Take `size` bytes, waiting (in arrival order) until they are free; returns what was
        taken, for `release` (a body bigger than the whole budget waits for all of it)."""
        size = min(size, self.capacity)
        if not self._waiters and size <= self.available:  # the hot path: no coroutine suspends
            self.available -= size
            return size
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, future))
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(size)  # granted just as we were cancelled: hand it on
            elif (size, future) in self._waiters:
                self._waiters.remove((size, future))
                self._wake()  # a smaller request behind it may fit now
            raise
        return size

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold `size` bytes for the block (`acquire` and `release`)."""
        taken = await self.acquire(size)
        try:
            yield
        finally:
            self.release(taken)

    def release(self, size: int) -> None:
        """Give back what `acquire` returned."""
        self.available += size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and (self._waiters[0][1].done() or self._waiters[0][0] <= self.available):
            size, future = self._waiters.popleft()
            if not future.done():  # a cancelled waiter gives up its place
                self.available -= size
                future.set_result(None)
