"""The group committer: one queue of writes, one transaction per group, whatever the database.

Requests hand their events to `GroupCommitter.submit()`, which queues them. The committer's
thread takes everything queued while the previous commit ran and runs the whole group in the
backend's `Transactor.transaction()`: BEGIN, the dedup lookup, the inserts, any other queued
writes, COMMIT. Every waiting request is resolved only after COMMIT returned, so durability
costs one commit per group and one hand-back to the event loop per group, not per request or
per statement.

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
import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from gateway.errors import StoreUnavailable
from gateway.model import ParsedEvent
from gateway.store.records import Receipt

log = logging.getLogger("gateway.store")
C = TypeVar("C")  # the backend's connection type

MAX_GROUP_EVENTS = 5000  # events per transaction; a 500-event batch never waits for another
# How often the writer asks whether another process committed to the store: between groups, and
# while idle. Listeners hear of such commits within about this (docs/architecture.md).
FOREIGN_POLL_SECONDS = 0.02


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

    def acquire(self) -> None:
        """Wait for this process's turn to write, if the store has writers in other processes
        (raise when it does not come in time: the group is refused). The group is formed after
        it: what queues up while another process commits joins this process's next group."""

    def release(self) -> None:
        """End the turn `acquire` began."""

    def transaction(self, group: Sequence[Item]) -> Committed:
        """Run the whole group in one transaction (opening the connection if needed) and
        commit; roll back and raise if anything fails. Fills `Committed.results` in order."""
        ...

    def reset(self) -> None:
        """Drop the connection (after a fault, or at stop); the next transaction reopens it."""

    def foreign_commits(self) -> int | None:
        """If another process or connection committed to the store since the last call: the
        newest event id now stored; else None (also before the connection is open)."""
        ...

    def isolatable(self, error: BaseException) -> bool:
        """Whether `error` may be one item's own fault: retry the group's items one by one."""
        ...

    def is_fault(self, error: BaseException) -> bool:
        """Whether the connection may be unusable after `error`: reset it."""
        ...

    def unavailable(self, error: BaseException) -> StoreUnavailable:
        """What the callers of a failed item get (never a database message for a client)."""
        ...


class _Call:
    """A function for the writer's thread to run between groups (open, reset), and its future."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.future = future


class _Stop:
    """Queued by stop(): the thread commits what is queued before it, then ends."""


_STOP = _Stop()


class GroupCommitter:
    """Queue of writes, drained in groups by one thread that owns the connection.

    Callers on the event loop put items on a thread-safe queue (no wake-up of the loop, no task
    in between); the thread takes the first item, then whatever else is queued, and commits the
    group; one `call_soon_threadsafe` per group hands the results back to the loop, which
    resolves each caller's future and tells the listeners. The thread does not wait for that:
    it starts on the next group at once."""

    def __init__(self, transactor: Transactor, on_commit: Callable[[Committed], None],
                 name: str = "store-writer", on_foreign: Callable[[int], None] | None = None) -> None:
        self.transactor = transactor
        self.on_commit = on_commit
        self.on_foreign = on_foreign  # another process committed: the newest event id
        self._foreign_checked = 0.0
        self.commits = 0
        self._name = name
        self._queue: queue.SimpleQueue[Item | _Call | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    async def start(self) -> None:
        """Open the connection; a fault here is logged and retried by later groups."""
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        await self._call(self.transactor.open)

    async def stop(self) -> None:
        self._closing = True  # from here on submit() refuses, so nothing queues behind the stop
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)  # the thread commits what is queued before it, then resets
        await asyncio.to_thread(thread.join)
        self._thread = None

    @property
    def running(self) -> bool:
        return not self._closing and self._thread is not None and self._thread.is_alive()

    def submit(self, item: Item) -> asyncio.Future[Any]:
        if not self.running:
            raise StoreUnavailable("the store writer is not running")
        self._queue.put(item)
        return item.future

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the writer's thread, between groups."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put(_Call(fn, future))
        return await future

    # --- in the writer's thread -----------------------------------------------------------

    def _run(self) -> None:
        after: _Call | _Stop | None = None  # what ended the previous group's draining
        while True:
            first = after if after is not None else self._next()
            after = None
            if isinstance(first, _Stop):
                try:
                    self.transactor.reset()
                except Exception:
                    log.exception("store writer: closing the connection failed")
                return
            if isinstance(first, _Call):
                self._run_call(first)
                continue
            turn: Exception | None = None
            try:
                self.transactor.acquire()
            except Exception as exc:  # another process held the store too long: refuse this group
                turn = exc
            try:
                group, after = self._group(first)
                if turn is not None:
                    log.error("store commit failed for %d item(s): %s", len(group), turn)
                    outcomes: list[Committed | BaseException] = [turn]
                else:
                    outcomes = self._commit_isolated(group)
            except Exception as exc:  # a bug in a backend's fault handling: fail the group, keep the thread
                log.exception("store writer: unexpected error; the group is refused")
                outcomes = [exc]
            finally:
                if turn is None:
                    self._release()
            self._post(self._settle, group, outcomes)
            if time.monotonic() - self._foreign_checked >= FOREIGN_POLL_SECONDS:
                self._check_foreign()

    def _group(self, first: Item) -> tuple[list[Item], _Call | _Stop | None]:
        """`first` and what queued after it, up to MAX_GROUP_EVENTS; and the call or stop
        that ended the draining (it runs once this group is committed)."""
        group: list[Item] = [first]
        size = _size(first)
        while size < MAX_GROUP_EVENTS:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(nxt, _Call | _Stop):
                return group, nxt
            group.append(nxt)
            size += _size(nxt)
        return group, None

    def _release(self) -> None:
        try:
            self.transactor.release()
        except Exception:
            log.exception("store writer: releasing the write turn failed")

    def _next(self) -> Item | _Call | _Stop:
        """The next queued item; while none comes, ask every `FOREIGN_POLL_SECONDS` whether
        another process committed."""
        while True:
            try:
                return self._queue.get(timeout=FOREIGN_POLL_SECONDS if self.on_foreign else None)
            except queue.Empty:
                self._check_foreign()

    def _check_foreign(self) -> None:
        self._foreign_checked = time.monotonic()
        if self.on_foreign is None:
            return
        try:
            newest = self.transactor.foreign_commits()
        except Exception as exc:  # the next group meets the fault and handles it
            log.debug("store writer: cannot check for other writers' commits: %s", exc)
            return
        if newest is not None:
            self._post(self.on_foreign, newest)

    def _run_call(self, call: _Call) -> None:
        try:
            result = call.fn()
        except BaseException as exc:  # handed to the caller, like any other outcome
            self._post(_fail_future, call.future, exc)
        else:
            self._post(_resolve, call.future, result)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.warning("store writer: the event loop closed before a result was handed back")

    def _commit_isolated(self, group: list[Item]) -> list[Committed | BaseException]:
        """Commit the group, or (after an error one item may have caused) each item alone, so
        that one bad request does not fail its neighbours. Not after a lock timeout or a store
        fault: every retry would wait out the lock again, or hit the same fault. One outcome per
        commit made: a `Committed` for the whole group, or one per item."""
        outcome = self._commit(group)
        if not isinstance(outcome, BaseException) or len(group) == 1 or not self.transactor.isolatable(outcome):
            return [outcome]
        return [self._commit([item]) for item in group]

    def _commit(self, group: list[Item]) -> Committed | BaseException:
        try:
            return self.transactor.transaction(group)
        except Exception as exc:
            log.error("store commit failed for %d item(s): %s", len(group), exc)
            if self.transactor.is_fault(exc):
                # A fault may leave the connection unusable (I/O error, file replaced or made
                # read-only): the next group opens a fresh one.
                self.transactor.reset()
            return exc

    # --- back on the event loop -----------------------------------------------------------

    def _settle(self, group: list[Item], outcomes: list[Committed | BaseException]) -> None:
        items: list[list[Item]] = [group] if len(outcomes) == 1 else [[item] for item in group]
        for part, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                for item in part:
                    _fail_future(item.future, self.transactor.unavailable(outcome))
                continue
            self.commits += 1
            for item, result in zip(part, outcome.results, strict=True):
                _resolve(item.future, result)  # first: whatever a listener does, callers are answered
                if isinstance(item, Op) and item.wakes is not None:
                    outcome.plugins.update(item.wakes(result))
            try:
                self.on_commit(outcome)
            except Exception:  # a listener's bug must not leave the group's other commits unanswered
                log.exception("store: a commit listener failed")


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # a request may have been cancelled meanwhile
        future.set_result(result)


def _fail_future(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _size(item: Item) -> int:
    return len(item.events) if isinstance(item, Ingest) else item.size
