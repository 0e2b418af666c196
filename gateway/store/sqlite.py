"""SQLite event store: WAL, `synchronous=FULL`, and one writer that group-commits.

Requests hand their events to `ingest()`, which queues them for the single writer task.
The writer takes everything queued while the previous commit ran, stores it in one
transaction and resolves every waiting request only after COMMIT returned: durability
costs one fsync per group, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from gateway.errors import StoreUnavailable
from gateway.model import Outcome, ParsedEvent, dedup_key, load_payload
from gateway.store import (
    CommitListener,
    DeliveryRecord,
    DeliveryResult,
    DeliveryStats,
    DueDelivery,
    EventDetail,
    EventQuery,
    Receipt,
    Rejection,
    StoredEvent,
    _forensics,
    _outbox,
)
from gateway.store._schema import migrate

log = logging.getLogger("gateway.store")


@dataclass(slots=True)
class _Ingest:
    receipt: Receipt
    events: Sequence[ParsedEvent]
    routes: Sequence[Sequence[str]] | None
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Op:
    """Any other write, run inside the writer's transaction."""

    run: Callable[[aiosqlite.Connection], Awaitable[Any]]
    future: asyncio.Future[Any]
    size: int = 1


_Item = _Ingest | _Op
_STOP = None
MAX_GROUP_EVENTS = 5000  # events per transaction; a 500-event batch never waits for another
MAX_PENDING_REJECTIONS = 2000  # forensics waiting for the writer; a flood beyond this is dropped

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
_NEXT_IDS = (
    "SELECT (SELECT coalesce(max(id), 0) FROM receipts), (SELECT coalesce(max(id), 0) FROM events)"
)
_SELECT_EVENTS = """
    SELECT e.id, e.source, e.scheme, e.event_type, e.entity_id, e.dedup_key, e.status,
           e.account, e.symbol, e.received_at, r.request_id, r.attempt, r.remote_addr,
           coalesce(e.payload, r.body), e.quarantine_reason
    FROM events e JOIN receipts r ON r.id = e.receipt_id
"""


def _prepare(path: Path, synchronous: str) -> None:
    """Create the file, switch it to WAL and migrate the schema (runs in a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        migrate(conn)
    finally:
        conn.close()


def _forget(future: asyncio.Future[Any]) -> None:
    """Forensics are best effort: a failed write is logged by the writer, not raised."""
    if not future.cancelled():
        future.exception()


def _size(item: _Item) -> int:
    return len(item.events) if isinstance(item, _Ingest) else item.size


def _is_busy(exc: Exception) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode in (
        sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _loads(data: bytes | None) -> Any:
    # None for a quarantined body that is not JSON, or one nested too deeply to serialise again
    return load_payload(data)


class SQLiteStore:
    """The SQLite backend of `gateway.store.Store`."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        readonly: bool = False,
        rejections_per_source: int = 1000,
    ) -> None:
        self.path = Path(path)
        self.rejections_per_source = rejections_per_source
        self._rejections: list[Rejection] = []
        self._rejections_queued = False
        self.rejections_dropped = 0
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.readonly = readonly
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0  # groups committed; tests and metrics read it
        self._listeners: list[CommitListener] = []
        self._event_listeners: list[Callable[[int], None]] = []
        self.on_commit: Callable[[int], None] | None = None  # events written per group (metrics)

    async def open(self) -> None:
        self._closing = False
        if not self.readonly:
            await asyncio.to_thread(_prepare, self.path, self.synchronous)
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            for pragma in (
                f"PRAGMA synchronous={self.synchronous}",
                f"PRAGMA busy_timeout={self.busy_timeout_ms}",
            ):
                await self._writer.execute(pragma)
            self._task = asyncio.create_task(self._run(), name="store-writer")
        elif not self.path.exists():
            raise FileNotFoundError(f"no event store at {self.path}")
        self._reader = await aiosqlite.connect(
            f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
        )
        await self._reader.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        if self.readonly:
            try:
                await self._reader.execute("SELECT 1 FROM events LIMIT 1")
            except sqlite3.DatabaseError as exc:  # no schema, or not a database at all
                await self._reader.close()
                self._reader = None
                raise FileNotFoundError(f"{self.path} holds no event store") from exc

    async def close(self) -> None:
        self._closing = True  # from here on ingest() refuses, so nothing queues behind _STOP
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        for conn in (self._writer, self._reader):
            if conn is not None:
                await conn.close()
        self._writer = self._reader = None

    def _submit(self, item: _Item) -> asyncio.Future[Any]:
        # No await between the check and the put: nothing can queue behind close()'s _STOP.
        if self._closing or self._task is None or self._task.done():
            raise StoreUnavailable("the store writer is not running")
        self._queue.put_nowait(item)
        return item.future

    async def ingest(
        self,
        receipt: Receipt,
        events: Sequence[ParsedEvent],
        routes: Sequence[Sequence[str]] | None = None,
    ) -> list[Outcome]:
        future = asyncio.get_running_loop().create_future()
        outcomes: list[Outcome] = await self._submit(_Ingest(receipt, events, routes, future))
        return outcomes

    async def _write(self, run: Callable[[aiosqlite.Connection], Awaitable[Any]], size: int = 1) -> Any:
        return await self._submit(_Op(run, asyncio.get_running_loop().create_future(), size))

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    async def prune(self, before: float, batch: int = 500) -> int:
        cutoff = round(before * 1_000_000)

        async def run(db: aiosqlite.Connection) -> int:
            # Only events no plugin is still waiting for; the outbox keeps the rest alive.
            cursor = await db.execute(
                "SELECT id FROM events e WHERE received_at < ? AND NOT EXISTS ("
                " SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status = 'pending') LIMIT ?",
                (cutoff, batch))
            ids = [row[0] for row in await cursor.fetchall()]
            await cursor.close()
            await db.execute("DELETE FROM rejections WHERE id IN (SELECT id FROM rejections WHERE received_at < ?"
                             " LIMIT ?)", (cutoff, batch))
            if not ids:
                return 0
            marks = ",".join("?" * len(ids))
            await db.execute(f"DELETE FROM deliveries WHERE event_id IN ({marks})", ids)
            receipts = await db.execute(f"SELECT DISTINCT receipt_id FROM events WHERE id IN ({marks})", ids)
            receipt_ids = [row[0] for row in await receipts.fetchall()]
            await receipts.close()
            await db.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
            await db.execute(
                f"DELETE FROM receipts WHERE id IN ({','.join('?' * len(receipt_ids))}) AND NOT EXISTS ("
                " SELECT 1 FROM events WHERE events.receipt_id = receipts.id)", receipt_ids)
            return len(ids)

        pruned: int = await self._write(run, size=batch)
        return pruned

    async def backup(self, target: Path) -> None:
        target = Path(target)
        if target.exists():
            raise FileExistsError(f"{target} exists; give a new file name")
        target.parent.mkdir(parents=True, exist_ok=True)

        def copy() -> None:
            # The backup API copies every page inside one read transaction: a consistent
            # snapshot, while the writer keeps committing to the WAL.
            source = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            dest = sqlite3.connect(target)
            try:
                source.backup(dest)
                dest.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
            finally:
                dest.close()
                source.close()

        await asyncio.to_thread(copy)

    async def check_writable(self) -> None:
        async def beat(db: aiosqlite.Connection) -> None:
            await db.execute("INSERT OR REPLACE INTO heartbeat (id, at) VALUES (1, ?)", (round(time.time() * 1e6),))

        await self._write(beat)

    def add_event_listener(self, listener: Callable[[int], None]) -> None:
        self._event_listeners.append(listener)

    async def latest_event_id(self) -> int:
        async with self._read().execute("SELECT coalesce(max(id), 0) FROM events") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    def record_rejection(self, rejection: Rejection) -> None:
        if self.rejections_per_source == 0 or self._closing or self._task is None or self._task.done():
            return
        if len(self._rejections) >= MAX_PENDING_REJECTIONS:
            self.rejections_dropped += 1
            return
        self._rejections.append(rejection)
        if not self._rejections_queued:  # one writer operation drains whatever has piled up
            self._rejections_queued = True
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_forget)
            self._queue.put_nowait(_Op(self._write_rejections, future))

    async def _write_rejections(self, db: aiosqlite.Connection) -> None:
        batch, self._rejections = self._rejections, []
        self._rejections_queued = False
        if batch:
            await _forensics.insert(db, batch, self.rejections_per_source)

    async def list_rejections(
        self, *, source: str | None = None, code: str | None = None, limit: int = 100
    ) -> list[Rejection]:
        return await _forensics.listing(self._read(), source, code, limit)

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is _STOP:
                break
            group: list[_Item] = [item]
            size = _size(item)
            while size < MAX_GROUP_EVENTS and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is _STOP:
                    stopping = True
                    break
                group.append(nxt)
                size += _size(nxt)
            await self._commit_isolated(group)

    async def _commit_isolated(self, group: list[_Item]) -> None:
        """Commit the group; if it fails, retry its requests one by one so that one bad
        request does not fail its neighbours. A lock timeout is not retried that way: every
        retry would wait out busy_timeout again."""
        error = await self._commit(group)
        if error is None or len(group) == 1 or _is_busy(error):
            if error is not None:
                self._fail(group)
            return
        for item in group:
            if await self._commit([item]) is not None:
                self._fail([item])

    @staticmethod
    def _fail(group: list[_Item]) -> None:
        for item in group:
            if not item.future.done():
                item.future.set_exception(StoreUnavailable())

    async def _commit(self, group: list[_Item]) -> Exception | None:
        """One transaction for the whole group; answers the group only on success."""
        db = self._writer
        assert db is not None
        ingests = [item for item in group if isinstance(item, _Ingest)]
        try:
            await db.execute("BEGIN IMMEDIATE")
            results: dict[int, Any] = {}
            notify: set[str] = set()
            newest = 0
            outcomes_all: list[list[Outcome]] = []
            if ingests:
                outcomes = outcomes_all = await self._store_events(db, ingests, notify)
                newest = max((o.id for os in outcomes for o in os if o.status != "duplicate"), default=0)
                results.update({id(item): o for item, o in zip(ingests, outcomes, strict=True)})
            for item in group:
                if isinstance(item, _Op):
                    results[id(item)] = await item.run(db)
            await db.execute("COMMIT")
        except Exception as exc:
            log.error("store commit failed for %d item(s): %s", len(group), exc)
            try:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
            except Exception as rollback_exc:  # the connection itself may be gone
                log.error("store rollback failed: %s", rollback_exc)
            return exc
        self.commits += 1
        for item in group:
            if not item.future.done():  # a request may have been cancelled meanwhile
                item.future.set_result(results[id(item)])
        if notify:
            for listener in self._listeners:
                listener(frozenset(notify))
        if self.on_commit is not None and ingests:
            self.on_commit(sum(1 for os in outcomes_all for o in os if o.status != "duplicate"))
        if newest:
            for event_listener in self._event_listeners:
                event_listener(newest)
        return None

    async def _store_events(
        self, db: aiosqlite.Connection, items: list[_Ingest], notify: set[str]
    ) -> list[list[Outcome]]:
        keys = [[dedup_key(i.receipt.source, e.event_type, e.entity_id) for e in i.events] for i in items]
        flat = [k for ks in keys for k in ks]
        async with db.execute(_EXISTING, (orjson.dumps(flat),)) as cur:
            known: dict[str, int] = dict(await cur.fetchall())  # type: ignore[arg-type]
        async with db.execute(_NEXT_IDS) as cur:
            row = await cur.fetchone()
        assert row is not None
        receipt_id, event_id = row
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
                    notify.add(plugin)
                outcomes.append(Outcome(event_id, event.status, key))
            results.append(outcomes)
        if receipt_rows:
            await db.executemany(_INSERT_RECEIPT, receipt_rows)
            await db.executemany(_INSERT_EVENT, event_rows)
        if delivery_rows:
            await db.executemany(_outbox.INSERT, delivery_rows)
        return results

    # --- the outbox --------------------------------------------------------------------

    def _read(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        return self._reader

    async def due_deliveries(self, plugin: str, now: float, limit: int) -> list[DueDelivery]:
        return await _outbox.due(self._read(), plugin, now, limit)

    async def finish_deliveries(self, results: Sequence[DeliveryResult]) -> None:
        if results:
            await self._write(lambda db: _outbox.finish(db, results, time.time()), size=len(results))

    async def replay(self, plugin: str, *, event_id: int | None = None, dead: bool = False) -> int:
        changed: int = await self._write(lambda db: _outbox.replay(db, plugin, event_id, dead, time.time()))
        if changed:
            for listener in self._listeners:
                listener(frozenset({plugin}))
        return changed

    async def delivery_stats(self, plugin: str) -> DeliveryStats:
        return await _outbox.stats(self._read(), plugin)

    async def list_deliveries(
        self, *, plugin: str | None = None, status: str | None = None, event_id: int | None = None,
        limit: int = 100, delivery_id: int | None = None,
    ) -> list[DeliveryRecord]:
        return await _outbox.listing(self._read(), plugin, status, event_id, limit, delivery_id)

    async def list_events(self, query: EventQuery | None = None, **filters: Any) -> list[StoredEvent]:
        query = query if query is not None else EventQuery(**filters)
        where: list[str] = []
        args: list[Any] = []
        glob = query.event_type
        # A plain type uses the (event_type, id) index, which is already in id order. For a real
        # glob, that index would mean sorting every match: walk ids instead ("+" keeps SQLite
        # off the index) and stop at `limit` matches.
        type_clause = "+e.event_type GLOB ?" if glob and any(c in glob for c in "*?[") else "e.event_type = ?"
        for clause, value in (
            ("e.source = ?", query.source),
            ("e.scheme = ?", query.scheme),
            (type_clause, glob),
            ("e.account = ?", query.account),
            ("e.symbol = ?", query.symbol),
            ("e.status = ?", query.status),
            ("e.received_at >= ?", None if query.since is None else round(query.since * 1_000_000)),
            ("e.received_at < ?", None if query.until is None else round(query.until * 1_000_000)),
            ("e.id < ?" if query.newest_first else "e.id > ?", query.after),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = _SELECT_EVENTS + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY e.id {'DESC' if query.newest_first else 'ASC'} LIMIT ?"
        args.append(query.limit)
        async with self._read().execute(sql, args) as cur:
            rows = await cur.fetchall()
        return [_event(r) for r in rows]

    async def get_event(self, event_id: int) -> EventDetail | None:
        sql = _SELECT_EVENTS.replace("FROM events e", ", r.body, r.headers FROM events e") + " WHERE e.id = ?"
        async with self._read().execute(sql, (event_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return EventDetail(event=_event(row), body=row[15], headers=[tuple(h) for h in orjson.loads(row[16])])

    async def event_stats(self, since: float | None, until: float | None) -> list[tuple[str, str, str, int]]:
        sql = "SELECT source, event_type, status, count(*) FROM events WHERE received_at >= ? AND received_at < ?"
        low = 0 if since is None else round(since * 1_000_000)
        high = 2**62 if until is None else round(until * 1_000_000)
        async with self._read().execute(sql + " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", (low, high)) as cur:
            return [(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]

    async def retry_delivery(self, delivery_id: int) -> bool:
        async def run(db: aiosqlite.Connection) -> tuple[int, str | None]:
            now = round(time.time() * 1_000_000)
            cursor = await db.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, last_error = NULL,"
                " updated_at = ? WHERE id = ? RETURNING plugin", (now, now, delivery_id))
            row = await cursor.fetchone()
            await cursor.close()
            return (1, row[0]) if row else (0, None)

        changed, plugin = await self._write(run)
        if plugin is not None:
            for listener in self._listeners:
                listener(frozenset({plugin}))
        return bool(changed)


def _event(r: Any) -> StoredEvent:
    return StoredEvent(
        id=r[0], source=r[1], scheme=r[2], event_type=r[3], entity_id=r[4], dedup_key=r[5], status=r[6],
        account=r[7], symbol=r[8], received_at=r[9] / 1_000_000, request_id=r[10], attempt=r[11],
        remote_addr=r[12], payload=_loads(r[13]), quarantine_reason=r[14],
    )
