"""The SQLite store's buffer of rejections waiting for the writer: `record_rejection` runs on the
event loop, `_write_rejections` in the writer's thread, and nothing recorded may be left behind
between the two. SQLite-specific: it reaches into the buffer to hit the exact moment."""

from __future__ import annotations

import asyncio
import collections
import threading
from pathlib import Path

import pytest

from gateway.store import Rejection
from gateway.store.sqlite import SQLiteStore
from tests.store.conftest import RECEIVED_AT


def rejection(request_id: str) -> Rejection:
    return Rejection(RECEIVED_AT, request_id, "src", "bad_signature", "x", None, (), None, None)


class HandOffStore(SQLiteStore):
    """When the writer thread has found the buffer empty, the event loop records `late` right
    then, before the writer's drain ends, and the writer waits for it: the interleaving a busy
    gateway hits by chance."""

    late: Rejection | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        store = self

        class HandOff(collections.deque[Rejection]):
            def popleft(self) -> Rejection:
                if not self and store.late is not None and store.loop is not None and not store._on_loop():
                    late, store.late = store.late, None
                    asyncio.run_coroutine_threadsafe(store._record(late), store.loop).result(timeout=10)
                    raise IndexError("the writer saw the buffer empty just before `late` came")
                return super().popleft()

        self._rejections = HandOff()

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    async def _record(self, late: Rejection) -> None:
        self.record_rejection(late)

    def arm(self, late: Rejection) -> None:
        self.loop, self._loop_thread, self.late = asyncio.get_running_loop(), threading.get_ident(), late


@pytest.mark.anyio
async def test_a_rejection_recorded_while_the_writer_takes_the_buffer_is_written(tmp_path: Path) -> None:
    store = HandOffStore(tmp_path / "r.db")
    await store.open()
    try:
        store.arm(rejection("late"))
        store.record_rejection(rejection("first"))
        await store.flush()  # the writer takes ["first"]; "late" is recorded at that moment
        assert store.late is None, "the writer never took the buffer"
        await store.flush()  # without waiting for any further rejection
        assert sorted(r.request_id for r in await store.list_rejections()) == ["first", "late"]
    finally:
        await store.close()
