"""The group committer: one queue of writes, one transaction per group, whatever the database.

Requests hand their events to `GroupCommitter.submit()`, which queues them. The committer task
takes everything queued while the previous commit ran and hands the whole group to its thread
in one call: the backend's `Transactor.transaction()` runs BEGIN, the dedup lookup, the inserts,
any other queued writes, COMMIT. Every waiting request is resolved only after COMMIT returned,
so durability costs one commit per group and one thread hop per group, not per request or per
statement.

The fault policy is the committer's, the classification the backend's: when a group fails,
an error that belongs to one item (`Transactor.isolatable`) has each item retried alone, so
one bad request does not fail its neighbours; a fault of the connection (`Transactor.is_fault`:
disk full, read-only file, I/O error) has the connection reset, and the next group opens a
fresh one, so the committer recovers by itself once the fault clears. Every failed item's
caller gets `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from gateway.errors import StoreUnavailable
from gateway.model import ParsedEvent
from gateway.store.records import Receipt

log = logging.getLogger("gateway.store")
C = TypeVar("C")  # the backend's connection type

MAX_GROUP_EVENTS = 5000  # events per transaction; a 500-event batch never waits for another


@dataclass(slots=True)
class Ingest:
    """A request's events to store (and route) atomically."""

    receipt: Receipt
    events: Sequence[ParsedEvent]
    routes: Sequence[Sequence[str]] | None
    future: asyncio.Future[Any]


@dataclass(slots=True)
class Op(Generic[C]):
    """Any other write: a function of the backend's connection, run inside the group's
    transaction. `wakes(result)` names the plugins whose deliveries it made due.

    `durable=False` marks bookkeeping whose loss in a power cut is harmless (delivery claims,
    leases, outcomes: at worst an event is delivered once more): a group of nothing else may
    commit without waiting for the disk. A group with any durable item (every `Ingest`) waits."""

    run: Callable[[C], Any]
    future: asyncio.Future[Any]
    size: int = 1
    wakes: Callable[[Any], Collection[str]] | None = None
    durable: bool = True



Item = Ingest | Op[Any]


def needs_sync(group: Sequence[Item]) -> bool:
    """Whether the group's commit must reach the disk before its callers are answered."""
    return any(not isinstance(item, Op) or item.durable for item in group)


@dataclass(slots=True)
class Committed:
    """What one committed group produced, handed back to the event loop."""

    results: list[Any] = field(default_factory=list)  # per item, in group order
    plugins: set[str] = field(default_factory=set)  # plugins with deliveries made due
    newest_event: int = 0
    stored: int = 0  # events written (not duplicates)


class Transactor(Protocol):
    """The backend's half: one connection, used only from the committer's thread."""

    def open(self) -> None:
        """Connect now (creating or migrating the schema). A fault that may clear by itself
        (read-only, locked, full) is logged, not raised: later groups retry."""

    def transaction(self, group: Sequence[Item]) -> Committed:
        """Run the whole group in one transaction (opening the connection if needed) and
        commit; roll back and raise if anything fails. Fills `Committed.results` in order."""
        ...

    def reset(self) -> None:
        """Drop the connection (after a fault, or at stop); the next transaction reopens it."""

    def isolatable(self, error: BaseException) -> bool:
        """Whether `error` may be one item's own fault: retry the group's items one by one."""
        ...

    def is_fault(self, error: BaseException) -> bool:
        """Whether the connection may be unusable after `error`: reset it."""
        ...

    def unavailable(self, error: BaseException) -> StoreUnavailable:
        """What the callers of a failed item get (never a database message for a client)."""
        ...


class GroupCommitter:
    """Queue of writes, drained by one task into one thread that owns the connection."""

    def __init__(self, transactor: Transactor, on_commit: Callable[[Committed], None],
                 name: str = "store-writer") -> None:
        self.transactor = transactor
        self.on_commit = on_commit
        self.commits = 0
        self._name = name
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Open the connection; a fault here is logged and retried by later groups."""
        self._closing = False
        await self._call(self.transactor.open)
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        self._closing = True  # from here on submit() refuses, so nothing queues behind the stop
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        await self._call(self.transactor.reset)
        self._thread.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return not self._closing and self._task is not None and not self._task.done()

    def submit(self, item: Item) -> asyncio.Future[Any]:
        # No await between the check and the put: nothing can queue behind stop()'s marker.
        if not self.running:
            raise StoreUnavailable("the store writer is not running")
        self._queue.put_nowait(item)
        return item.future

    async def _call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            group: list[Item] = [item]
            size = _size(item)
            while size < MAX_GROUP_EVENTS and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                group.append(nxt)
                size += _size(nxt)
            await self._commit_isolated(group)

    async def _commit_isolated(self, group: list[Item]) -> None:
        """Commit the group; if it fails, retry its items one by one so that one bad request
        does not fail its neighbours. Not after a lock timeout or a store fault: every retry
        would wait out the lock again, or hit the same fault."""
        error = await self._commit(group)
        if error is None:
            return
        if len(group) == 1 or not self.transactor.isolatable(error):
            self._fail(group, error)
            return
        for item in group:
            item_error = await self._commit([item])
            if item_error is not None:
                self._fail([item], item_error)

    async def _commit(self, group: list[Item]) -> BaseException | None:
        try:
            committed: Committed = await self._call(lambda: self.transactor.transaction(group))
        except Exception as exc:
            log.error("store commit failed for %d item(s): %s", len(group), exc)
            if self.transactor.is_fault(exc):
                # A fault may leave the connection unusable (I/O error, file replaced or made
                # read-only): the next group opens a fresh one.
                await self._call(self.transactor.reset)
            return exc
        self.commits += 1
        for item, result in zip(group, committed.results, strict=True):
            if isinstance(item, Op) and item.wakes is not None:
                committed.plugins.update(item.wakes(result))
            if not item.future.done():  # a request may have been cancelled meanwhile
                item.future.set_result(result)
        self.on_commit(committed)
        return None

    def _fail(self, group: list[Item], error: BaseException) -> None:
        for item in group:
            if not item.future.done():
                item.future.set_exception(self.transactor.unavailable(error))


def _size(item: Item) -> int:
    return len(item.events) if isinstance(item, Ingest) else item.size
