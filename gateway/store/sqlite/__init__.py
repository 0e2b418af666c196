"""SQLite event store: WAL, `synchronous=FULL`, one writer that group-commits
(`gateway.store.committer.GroupCommitter` driving `_writer.SQLiteTransactor` in its own
thread) and one read-only connection for queries.

Every write, ingest or otherwise, is handed to the writer as an item and runs inside its
next group's transaction; requests are answered only after that COMMIT returned. Claims are
writes too: a claim always sees every outcome committed before it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import orjson

from gateway.errors import StoreUnavailable
from gateway.model import Outcome, ParsedEvent, load_payload
from gateway.store import StoreObserver, overview, prune_in_batches
from gateway.store.committer import Committed, GroupCommitter, Ingest, Item, Op
from gateway.store.ledger_records import (
    AnomalyQuery,
    LedgerStatus,
    LedgerWrite,
    LoadedPosition,
    PositionKey,
    PositionQuery,
    StoredAnomaly,
    StoredPosition,
)
from gateway.store.records import (
    Claim,
    CommitListener,
    DeliveryRecord,
    DeliveryResult,
    DeliveryStats,
    EventDetail,
    EventListener,
    EventQuery,
    Receipt,
    Reidentify,
    Rejection,
    StoredEvent,
)
from gateway.store.sqlite import _forensics, _identity, _ledger, _outbox
from gateway.store.sqlite._schema import MIGRATIONS
from gateway.store.sqlite._writer import SQLiteTransactor

if TYPE_CHECKING:
    from gateway.config import StoreConfig

log = logging.getLogger("gateway.store")


HEARTBEAT_BYTES = 65536  # what /readyz writes: room for about one large batch
MAX_PENDING_REJECTIONS = 2000  # forensics waiting for the writer; a flood beyond this is dropped

_SELECT_EVENTS = """
    SELECT e.id, e.source, e.scheme, e.event_type, e.entity_id, e.dedup_key, e.status,
           e.account, e.symbol, e.received_at, r.request_id, r.attempt, r.remote_addr,
           coalesce(e.payload, r.body), e.quarantine_reason, e.conflicts_with
    FROM events e JOIN receipts r ON r.id = e.receipt_id
"""


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///relative/path` or `sqlite:////absolute/path` URL."""
    scheme, _, rest = url.partition("://")
    if scheme != "sqlite" or not rest.startswith("/") or rest == "/":
        raise ValueError(f"not a SQLite URL (sqlite:///path): {url!r}")
    return Path(rest[1:])


def from_config(config: StoreConfig, *, readonly: bool = False) -> SQLiteStore:
    """The `StoreFactory` of `sqlite:` URLs."""
    return SQLiteStore(
        sqlite_path(config.url),
        synchronous=config.synchronous,
        busy_timeout_ms=config.busy_timeout_ms,
        readonly=readonly,
        rejections_per_source=config.rejections_per_source,
    )


def _forget(future: asyncio.Future[Any]) -> None:
    """Forensics are best effort: a failed write is logged by the writer, not raised."""
    if not future.cancelled():
        future.exception()


def _wakes_one(plugin: str) -> Callable[[Any], Collection[str]]:
    return lambda changed: (plugin,) if changed else ()


class SQLiteStore:
    """The SQLite backend of `gateway.store.Store`."""

    file_backup = True

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
        self._rejections: collections.deque[Rejection] = collections.deque()  # appended here, drained by the writer
        self._rejections_queued = False
        self._dropped = 0
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.readonly = readonly
        self._writer: GroupCommitter | None = None
        self._reader: aiosqlite.Connection | None = None
        self._listeners: list[CommitListener] = []
        self._event_listeners: list[EventListener] = []
        self._observer: StoreObserver | None = None

    @property
    def rejections_dropped(self) -> int:
        return self._dropped

    def observe(self, observer: StoreObserver) -> None:
        self._observer = observer

    @property
    def commits(self) -> int:
        """Groups committed so far; tests read it."""
        return self._writer.commits if self._writer is not None else 0

    async def open(self) -> None:
        if not self.readonly:
            transactor = SQLiteTransactor(self.path, self.synchronous, self.busy_timeout_ms)
            self._writer = GroupCommitter(transactor, self._committed, on_foreign=self._foreign)
            await self._writer.start()
        elif not self.path.exists():
            raise FileNotFoundError(f"no event store at {self.path}")
        self._reader = await aiosqlite.connect(
            f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
        )
        await self._reader.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        if self.readonly:
            try:
                rows = await self._reader.execute_fetchall("SELECT max(version) FROM schema_version")
            except sqlite3.DatabaseError as exc:  # no schema, or not a database at all
                await self._reader.close()
                self._reader = None
                raise FileNotFoundError(f"{self.path} holds no event store") from exc
            version = next(iter(rows))[0] or 0
            if version < len(MIGRATIONS):  # only a writer upgrades: this one cannot read it
                await self._reader.close()
                self._reader = None
                raise StoreUnavailable(f"the store at {self.path} has schema {version}, older than this gateway's "
                                       f"{len(MIGRATIONS)}: start the gateway once to upgrade it")

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    def _committed(self, committed: Committed) -> None:
        if committed.plugins:
            for listener in self._listeners:
                listener(frozenset(committed.plugins))
        if self._observer is not None and committed.stored:
            self._observer.group_committed(committed.stored)
        if committed.newest_event:
            for event_listener in self._event_listeners:
                event_listener(committed.newest_event)

    def _foreign(self, newest: int) -> None:
        """Another process (or connection) committed to this store: wake every runner and stream."""
        for listener in self._listeners:
            listener(None)
        for event_listener in self._event_listeners:
            event_listener(newest)

    def _submit(self, item: Item) -> asyncio.Future[Any]:
        if self._writer is None:
            raise StoreUnavailable("the store writer is not running")
        return self._writer.submit(item)

    async def ingest(
        self,
        receipt: Receipt,
        events: Sequence[ParsedEvent],
        routes: Sequence[Sequence[str]] | None = None,
    ) -> list[Outcome]:
        future = asyncio.get_running_loop().create_future()
        outcomes: list[Outcome] = await self._submit(Ingest(receipt, events, routes, future))
        return outcomes

    async def _write(self, run: Callable[[sqlite3.Connection], Any], size: int = 1,
                     wakes: Callable[[Any], Collection[str]] | None = None, *, durable: bool = True) -> Any:
        return await self._submit(Op(run, asyncio.get_running_loop().create_future(), size, wakes, durable))

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    async def prune(self, before: float, batch: int = 500) -> int:
        cutoff = round(before * 1_000_000)

        def run(db: sqlite3.Connection) -> int:
            # Only events no plugin is still waiting for; the outbox keeps the rest alive.
            ids = [row[0] for row in db.execute(
                "SELECT id FROM events e WHERE received_at < ? AND NOT EXISTS ("
                " SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status = 'pending') LIMIT ?",
                (cutoff, batch))]
            db.execute("DELETE FROM rejections WHERE id IN (SELECT id FROM rejections WHERE received_at < ?"
                       " LIMIT ?)", (cutoff, batch))
            if not ids:
                return 0
            marks = ",".join("?" * len(ids))
            db.execute(f"DELETE FROM deliveries WHERE event_id IN ({marks})", ids)
            receipt_ids = [row[0] for row in db.execute(
                f"SELECT DISTINCT receipt_id FROM events WHERE id IN ({marks})", ids)]
            db.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
            db.execute(
                f"DELETE FROM receipts WHERE id IN ({','.join('?' * len(receipt_ids))}) AND NOT EXISTS ("
                " SELECT 1 FROM events WHERE events.receipt_id = receipts.id)", receipt_ids)
            return len(ids)

        pruned: int = await self._write(run, size=batch)
        return pruned

    async def prune_all(self, before: float, pause: float = 0.0) -> int:
        return await prune_in_batches(self, before, pause)

    async def hold_job(self, name: str, holder: str, seconds: float) -> bool:
        now = time.time()

        def run(db: sqlite3.Connection) -> bool:
            # Taken when free, expired, or already ours; the upsert runs in the writer's
            # transaction, so two processes asking at once are serialised by SQLite.
            db.execute(
                "INSERT INTO job_leases (name, holder, until) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET holder = excluded.holder, until = excluded.until WHERE until < ? OR holder = excluded.holder",
                (name, holder, round((now + seconds) * _outbox.US), round(now * _outbox.US)))
            [(current,)] = db.execute("SELECT holder FROM job_leases WHERE name = ?", (name,)).fetchall()
            return bool(current == holder)

        held: bool = await self._write(run)
        return held

    async def release_job(self, name: str, holder: str) -> None:
        await self._write(lambda db: db.execute("DELETE FROM job_leases WHERE name = ? AND holder = ?",
                                                (name, holder)), durable=False)

    async def reidentify(self, identify: Reidentify, batch: int = 2000) -> int:
        total = 0
        while done := await self._write(lambda db: _identity.reidentify_batch(db, identify, batch), size=batch):
            total += done
        return total

    def size_bytes(self) -> int:
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(p.stat().st_size for p in files if p.exists())

    async def backup(self, target: Path) -> None:
        if not self.path.exists():
            raise FileNotFoundError(f"no event store at {self.path}")
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

    async def signing_key(self, make: Callable[[], bytes]) -> bytes | None:
        return None  # the key file beside the store (gateway.auth.load_or_create_key)

    async def check_writable(self) -> None:
        def beat(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO heartbeat (id, at, probe) VALUES (1, ?, zeroblob(?))",
                       (round(time.time() * 1e6), HEARTBEAT_BYTES))

        await self._write(beat)

    async def flush(self) -> None:
        await self._write(lambda db: None)

    def add_event_listener(self, listener: EventListener) -> None:
        self._event_listeners.append(listener)

    async def latest_event_id(self) -> int:
        row = next(iter(await self._read().execute_fetchall("SELECT coalesce(max(id), 0) FROM events")), None)
        return int(row[0]) if row else 0

    def record_rejection(self, rejection: Rejection) -> None:
        if self.rejections_per_source == 0 or self._writer is None or not self._writer.running:
            return
        if len(self._rejections) >= MAX_PENDING_REJECTIONS:
            self._dropped += 1
            if self._observer is not None:
                self._observer.rejection_dropped()
            return
        self._rejections.append(rejection)
        if not self._rejections_queued:  # one writer operation drains whatever has piled up
            self._rejections_queued = True
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_forget)
            self._writer.submit(Op(self._write_rejections, future))

    def _write_rejections(self, db: sqlite3.Connection) -> None:
        # Runs in the writer thread, while the event loop may record more. The flag goes down
        # before the draining: a rejection recorded after it queues a new operation, one recorded
        # before it is in this batch or the next. (Lowered after, a rejection recorded just as
        # the drain found the buffer empty would queue nothing and wait for the next one.) A
        # deque's append and popleft are atomic, so none is lost between the two threads.
        self._rejections_queued = False
        batch: list[Rejection] = []
        with contextlib.suppress(IndexError):
            while True:
                batch.append(self._rejections.popleft())
        if batch:
            _forensics.insert(db, batch, self.rejections_per_source)

    async def list_rejections(
        self, *, source: str | None = None, code: str | None = None, limit: int = 100
    ) -> list[Rejection]:
        return await _forensics.listing(self._read(), source, code, limit)

    # --- the outbox --------------------------------------------------------------------

    def _read(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        return self._reader

    async def claim_due(self, plugin: str, now: float, limit: int, lease_seconds: float) -> list[Claim]:
        claim_id = secrets.randbits(62)  # unique across runners and processes sharing the store
        claims: list[Claim] = await self._write(
            lambda db: _outbox.claim(db, plugin, now, limit, now + lease_seconds, claim_id), durable=False)
        return claims

    async def renew(self, claims: Sequence[Claim], lease_seconds: float) -> list[Claim]:
        if not claims:
            return []
        until = time.time() + lease_seconds
        held = set(await self._write(lambda db: _outbox.renew(db, claims, until), size=len(claims), durable=False))
        return [replace(c, lease_until=until) for c in claims if c.delivery_id in held]

    async def release(self, claims: Sequence[Claim]) -> None:
        if claims:
            await self._write(lambda db: _outbox.release(db, claims), size=len(claims), durable=False)

    async def finish_deliveries(self, results: Sequence[DeliveryResult]) -> list[int]:
        if not results:
            return []
        refused: list[int] = await self._write(lambda db: _outbox.finish(db, results, time.time()),
                                                size=len(results), durable=False)
        return refused

    async def replay(self, plugin: str, *, event_id: int | None = None, dead: bool = False) -> int:
        if event_id is None and not dead:
            raise ValueError("replay needs an event id or dead=True")
        changed: int = await self._write(lambda db: _outbox.replay(db, plugin, event_id, dead, time.time()),
                                         wakes=_wakes_one(plugin))
        return changed

    async def delivery_stats(self, plugin: str) -> DeliveryStats:
        return await _outbox.stats(self._read(), plugin)

    async def list_deliveries(
        self, *, plugin: str | None = None, status: str | None = None, event_id: int | None = None,
        limit: int = 100, delivery_id: int | None = None, source: str | None = None, event_type: str | None = None,
    ) -> list[DeliveryRecord]:
        return await _outbox.listing(self._read(), plugin, status, event_id, limit, delivery_id, source, event_type)

    async def delivery_counts(self) -> list[tuple[str, str, int]]:
        return await _outbox.counts(self._read())

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
            ("e.entity_id = ?", query.entity),
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
        rows = await self._read().execute_fetchall(sql, args)
        return [_event(r) for r in rows]

    async def get_event(self, event_id: int) -> EventDetail | None:
        sql = _SELECT_EVENTS.replace("FROM events e", ", r.body, r.headers FROM events e") + " WHERE e.id = ?"
        row = next(iter(await self._read().execute_fetchall(sql, (event_id,))), None)
        if row is None:
            return None
        return EventDetail(event=_event(row), body=row[16], headers=[tuple(h) for h in orjson.loads(row[17])])

    async def overview(self, since: float, until: float, bucket: float) -> overview.OverviewData:
        return await overview.read(lambda sql, args: self._read().execute_fetchall(sql, args), lambda n: f"?{n}",
                                   since, until, bucket)

    async def event_stats(self, since: float | None, until: float | None) -> list[tuple[str, str, str, int]]:
        sql = "SELECT source, event_type, status, count(*) FROM events WHERE received_at >= ? AND received_at < ?"
        low = 0 if since is None else round(since * 1_000_000)
        high = 2**62 if until is None else round(until * 1_000_000)
        rows = await self._read().execute_fetchall(sql + " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", (low, high))
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # --- the position ledger -----------------------------------------------------------

    async def ledger_status(self) -> LedgerStatus:
        return await _ledger.status(self._read())

    async def ledger_load(self, keys: Sequence[PositionKey]) -> dict[PositionKey, LoadedPosition]:
        return await _ledger.load(self._read(), keys)

    async def ledger_orphans(self, limit: int) -> list[PositionKey]:
        return await _ledger.orphans(self._read(), limit)

    async def ledger_write(self, write: LedgerWrite) -> list[int] | None:
        # A projection: lost in a power cut with its checkpoint, and projected again.
        raised: list[int] | None = await self._write(lambda db: _ledger.write(db, write),
                                                     size=len(write.entries) or 1, durable=False)
        return raised

    async def ledger_reset(self) -> None:
        await self._write(_ledger.reset)

    async def list_positions(self, query: PositionQuery) -> list[StoredPosition]:
        return await _ledger.positions(self._read(), query)

    async def get_position(self, key: PositionKey) -> StoredPosition | None:
        return await _ledger.get_position(self._read(), key)

    async def list_anomalies(self, query: AnomalyQuery) -> list[StoredAnomaly]:
        return await _ledger.anomalies(self._read(), query)

    async def acknowledge_anomaly(self, anomaly_id: int, note: str, at: float) -> StoredAnomaly | None:
        acked: StoredAnomaly | None = await self._write(lambda db: _ledger.acknowledge(db, anomaly_id, note, at))
        return acked

    async def anomaly_counts(self) -> list[tuple[str, str, int]]:
        return await _ledger.anomaly_counts(self._read())

    async def position_counts(self) -> list[tuple[str, str, int]]:
        return await _ledger.counts(self._read())

    async def retry_delivery(self, delivery_id: int) -> bool:
        def run(db: sqlite3.Connection) -> tuple[int, str | None]:
            now = round(time.time() * 1_000_000)
            cursor = db.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, last_error = NULL,"
                " updated_at = ? WHERE id = ? RETURNING plugin", (now, now, delivery_id))
            row = cursor.fetchone()
            cursor.close()
            return (1, row[0]) if row else (0, None)

        changed, _ = await self._write(run, wakes=lambda result: () if result[1] is None else (result[1],))
        return bool(changed)


def _event(r: Any) -> StoredEvent:
    return StoredEvent(
        id=r[0], source=r[1], scheme=r[2], event_type=r[3], entity_id=r[4], dedup_key=r[5], status=r[6],
        conflicts_with=r[15], account=r[7], symbol=r[8], received_at=r[9] / 1_000_000, request_id=r[10], attempt=r[11],
        remote_addr=r[12], payload=load_payload(r[13]), quarantine_reason=r[14],
    )
