"""The single SQLite writer: one thread, one connection, one transaction per group.

Requests hand their events to `GroupWriter.ingest()`, which queues them. The writer task takes
everything queued while the previous commit ran and hands the whole group to its thread in
one call: BEGIN, the dedup lookup, the inserts, any other queued writes, COMMIT. Every waiting
request is resolved only after COMMIT returned, so durability costs one fsync per group and
one thread hop per group, not per request or per statement.

A store fault (disk full, read-only file, I/O error) fails the group with `StoreUnavailable`
and closes the connection; the next group opens a fresh one, so the writer recovers by
itself once the fault clears. A lock held by another process fails the group after
`busy_timeout` without that reset.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.errors import StoreUnavailable
from gateway.model import Outcome, ParsedEvent, dedup_key
from gateway.store import Receipt, _outbox
from gateway.store._schema import migrate

log = logging.getLogger("gateway.store")
T = TypeVar("T")

MAX_GROUP_EVENTS = 5000  # events per transaction; a 500-event batch never waits for another

_INSERT_RECEIPT = (
    "INSERT INTO receipts (id, request_id, source, received_at, remote_addr, attempt, headers,"
    " body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENT = (
    "INSERT INTO events (id, receipt_id, source, scheme, event_type, entity_id, dedup_key,"
    " status, account, symbol, received_at, payload, quarantine_reason)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_EXISTING = "SELECT dedup_key, id FROM events WHERE dedup_key IN (SELECT value FROM json_each(?))"
_NEXT_IDS = "SELECT (SELECT coalesce(max(id), 0) FROM receipts), (SELECT coalesce(max(id), 0) FROM events)"


@dataclass(slots=True)
class Ingest:
    receipt: Receipt
    events: Sequence[ParsedEvent]
    routes: Sequence[Sequence[str]] | None
    future: asyncio.Future[Any]


@dataclass(slots=True)
class Op:
    """Any other write: a function of the connection, run inside the group's transaction."""

    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    size: int = 1


Item = Ingest | Op


@dataclass(slots=True)
class Committed:
    """What one committed group produced, handed back to the event loop."""

    results: list[Any] = field(default_factory=list)  # per item, in group order
    plugins: set[str] = field(default_factory=set)  # plugins with new deliveries
    newest_event: int = 0
    stored: int = 0  # events written (not duplicates)


def is_busy(exc: BaseException) -> bool:
    """Another connection holds the lock: a wait, not a fault of this connection."""
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode in (
        sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def connect(path: Path, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the store for writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
            raise sqlite3.OperationalError("the store could not switch to WAL mode")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class GroupWriter:
    """Queue of writes, drained by one task into one thread that owns the connection."""

    def __init__(self, path: Path, synchronous: str, busy_timeout_ms: int,
                 on_commit: Callable[[Committed], None]) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.on_commit = on_commit
        self.commits = 0
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Open the connection; a store fault here is logged and retried by later groups."""
        self._closing = False
        try:
            await self._call(lambda conn: None)
        except sqlite3.OperationalError as exc:  # read-only, locked, full: wait for it to clear
            log.error("the event store is not writable yet (%s); ingest answers 503 until it is", exc)
        self._task = asyncio.create_task(self._run(), name="store-writer")

    async def stop(self) -> None:
        self._closing = True  # from here on submit() refuses, so nothing queues behind the stop
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
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

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error as exc:
                log.error("closing the store connection failed: %s", exc)
            self._conn = None

    def _with_connection(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = connect(self.path, self.synchronous, self.busy_timeout_ms)
        return fn(self._conn)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._with_connection, fn)

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
        would wait out busy_timeout again, or hit the same fault."""
        error = await self._commit(group)
        if error is None:
            return
        if len(group) == 1 or not isinstance(error, sqlite3.IntegrityError | ValueError | TypeError):
            _fail(group, error)
            return
        for item in group:
            item_error = await self._commit([item])
            if item_error is not None:
                _fail([item], item_error)

    async def _commit(self, group: list[Item]) -> BaseException | None:
        try:
            committed = await self._call(lambda conn: _transaction(conn, group))
        except Exception as exc:
            log.error("store commit failed for %d item(s): %s", len(group), exc)
            if not is_busy(exc) and isinstance(exc, sqlite3.Error):
                # A fault may leave the connection unusable (I/O error, file replaced or made
                # read-only): the next group opens a fresh one.
                await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
            return exc
        self.commits += 1
        for item, result in zip(group, committed.results, strict=True):
            if not item.future.done():  # a request may have been cancelled meanwhile
                item.future.set_result(result)
        self.on_commit(committed)
        return None


def _size(item: Item) -> int:
    return len(item.events) if isinstance(item, Ingest) else item.size


def _fail(group: list[Item], error: BaseException) -> None:
    for item in group:
        if not item.future.done():
            item.future.set_exception(StoreUnavailable() if isinstance(error, sqlite3.Error)
                                      else StoreUnavailable(f"the store refused the write: {error}"))


def _transaction(conn: sqlite3.Connection, group: list[Item]) -> Committed:
    """One transaction for the whole group (runs in the writer thread)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        committed = Committed()
        ingests = [item for item in group if isinstance(item, Ingest)]
        outcomes = iter(_store_events(conn, ingests, committed) if ingests else ())
        for item in group:
            committed.results.append(next(outcomes) if isinstance(item, Ingest) else item.run(conn))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:  # the connection itself may be broken; it is reopened
                log.error("store rollback failed: %s", exc)
        raise
    return committed


def _store_events(conn: sqlite3.Connection, items: list[Ingest], committed: Committed) -> list[list[Outcome]]:
    keys = [[dedup_key(i.receipt.source, e.event_type, e.named_by) for e in i.events] for i in items]
    flat = [k for ks in keys for k in ks]
    known: dict[str, int] = dict(conn.execute(_EXISTING, (orjson.dumps(flat),)).fetchall())
    receipt_id, event_id = conn.execute(_NEXT_IDS).fetchone()
    receipt_rows: list[tuple[Any, ...]] = []
    event_rows: list[tuple[Any, ...]] = []
    delivery_rows: list[tuple[Any, ...]] = []
    results: list[list[Outcome]] = []
    for item, event_keys in zip(items, keys, strict=True):
        receipt = item.receipt
        outcomes: list[Outcome] = []
        this_receipt: int | None = None
        received_us = round(receipt.received_at * 1_000_000)
        for index, (event, key) in enumerate(zip(item.events, event_keys, strict=True)):
            if key in known:
                outcomes.append(Outcome(known[key], "duplicate", key))
                continue
            if this_receipt is None:
                receipt_id += 1
                this_receipt = receipt_id
                receipt_rows.append((
                    this_receipt, receipt.request_id, receipt.source, received_us,
                    receipt.remote_addr, receipt.attempt, orjson.dumps(receipt.headers), receipt.body,
                ))
            event_id += 1
            known[key] = event_id
            event_rows.append((
                event_id, this_receipt, receipt.source, receipt.scheme, event.event_type,
                event.entity_id, key, event.status, event.account, event.symbol,
                received_us, event.payload, event.quarantine_reason,
            ))
            for plugin in item.routes[index] if item.routes else ():
                delivery_rows.append((event_id, plugin, receipt.source, event.entity_id,
                                      received_us, received_us, received_us))
                committed.plugins.add(plugin)
            outcomes.append(Outcome(event_id, event.status, key))
        results.append(outcomes)
    if receipt_rows:
        conn.executemany(_INSERT_RECEIPT, receipt_rows)
        conn.executemany(_INSERT_EVENT, event_rows)
        committed.newest_event = event_id
        committed.stored = len(event_rows)
    if delivery_rows:
        conn.executemany(_outbox.INSERT, delivery_rows)
    return results
