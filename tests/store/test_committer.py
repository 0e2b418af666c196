"""The group committer's own behaviour, with a scripted backend (gateway/store/committer.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.errors import StoreUnavailable
from gateway.store.committer import Committed, GroupCommitter, Item, Op

pytestmark = pytest.mark.anyio


class Scripted:
    """A transactor whose first transaction waits for `gate`, whose second fails, and whose
    fault handling then fails too."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = threading.Event()

    def open(self) -> None: ...

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def transaction(self, group: Sequence[Item]) -> Committed:
        self.calls += 1
        if self.calls == 1:
            self.gate.wait(5)  # meanwhile the next two items queue up: one group
        if self.calls == 2:
            raise ValueError("one item's fault")
        return Committed(results=["ok"] * len(group))

    def reset(self) -> None: ...

    def isolatable(self, error: BaseException) -> bool:
        raise RuntimeError("a bug in the backend's fault handling")

    def is_fault(self, error: BaseException) -> bool:
        return False

    def unavailable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"refused: {error}")

    def foreign_commits(self) -> int | None:
        return None


def op(loop: asyncio.AbstractEventLoop) -> Op[Any]:
    return Op(lambda db: None, loop.create_future())


async def test_an_unexpected_error_refuses_its_group_and_the_writer_goes_on() -> None:
    backend = Scripted()
    committer = GroupCommitter(backend, lambda committed: None)
    await committer.start()
    loop = asyncio.get_running_loop()
    try:
        gate, first, second = op(loop), op(loop), op(loop)
        committer.submit(gate)
        await asyncio.sleep(0.05)  # the writer is in the gate's transaction
        committer.submit(first)
        committer.submit(second)
        backend.gate.set()
        assert await asyncio.wait_for(gate.future, 5) == "ok"
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(first.future, 5)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(second.future, 5)
        assert committer.running
        later = op(loop)
        committer.submit(later)
        assert await asyncio.wait_for(later.future, 5) == "ok"
    finally:
        await asyncio.wait_for(committer.stop(), 5)
    assert not committer.running
