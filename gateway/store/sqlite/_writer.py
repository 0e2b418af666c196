"""The SQLite half of the group committer: one connection, one transaction per group.

`SQLiteTransactor` is what `gateway.store.committer.GroupCommitter` drives in its thread:
BEGIN IMMEDIATE, the dedup lookup and inserts of every queued request, the other queued
writes, COMMIT. The committer takes the store's write lock (`acquire`; `_lock.py`: a
`flock` that hands over to another gateway process the moment it is free, where SQLite's own
busy handler polls) before it forms each group, so what queued while another process
committed joins the group. A lock held by another process fails the group after `busy_timeout` without a reset;
any other SQLite error resets the connection, and the next group reopens it.

Before each group the writer checks, with one `stat`, that the store's path still names the
file it opened (same device and inode). A file deleted, renamed or replaced under a running
gateway fails every group with `StoreMoved` (503 `store_unavailable`, in /readyz too) until
the path names that file again: writing on would put acknowledged events in a file that the
next start no longer finds, and opening the path afresh would start an empty store without
the dedup history. The connection stays open meanwhile: it holds the deleted file's data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import orjson

from gateway.errors import StoreUnavailable
from gateway.model import Outcome
from gateway.store.committer import Committed, Ingest, Item, needs_sync
from gateway.store.group import identities, plan
from gateway.store.sqlite import _outbox
from gateway.store.sqlite._lock import WriterBusy, WriterLock
from gateway.store.sqlite._rows import insert_rows
from gateway.store.sqlite._schema import migrate

LOCK_SUFFIX = "-writer.lock"  # beside the store: the write lock of every process on it

log = logging.getLogger("gateway.store")

_INSERT_RECEIPTS = ("INSERT INTO receipts (id, request_id, source, received_at, remote_addr, attempt, headers, body,"
                    " sent_at, latency_us)")
_RECEIPT = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_EVENTS = (
    "INSERT INTO events (id, receipt_id, source, scheme, event_type, entity_id, dedup_key, fingerprint,"
    " status, conflicts_with, account, symbol, received_at, payload, quarantine_reason)"
)
_EVENT = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Every stored version of the group's identities, first version first.
_EXISTING = (
    "SELECT dedup_key, fingerprint, id FROM events WHERE dedup_key IN (SELECT value FROM json_each(?)) ORDER BY id"
)
# The highest ids ever handed out (AUTOINCREMENT keeps them across pruning): ids are never reused.
_NEXT_IDS = (
    "SELECT (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'receipts'),"
    " (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'events')"
)


_NEWEST_EVENT = "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'events'"


def is_busy(exc: BaseException) -> bool:
    """Another connection holds the lock: a wait, not a fault of this connection."""
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode in (
        sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def connect(path: Path, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the store for writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A new store is made private (0600, like the secrets) before SQLite opens it: SQLite would
    # create it 0644, and gives its -wal and -shm files the mode of the database file. (It exists
    # already, or cannot be made: sqlite3 opens it, or fails the usual way.)
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
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


class StoreMoved(Exception):
    """The store's path no longer names the file this gateway opened (deleted or replaced)."""


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class SQLiteTransactor:
    """The writer's connection, opened lazily, used only from the committer's thread."""

    def __init__(self, path: Path, synchronous: str, busy_timeout_ms: int) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the store once opened
        self._moved = False
        self._data_version: int | None = None
        self._lock: WriterLock | None = None

    def _connection(self) -> sqlite3.Connection:
        self._check_file()  # also before a reopen: never create a new store in the old one's place
        if self._conn is None:
            self._conn = connect(self.path, self.synchronous, self.busy_timeout_ms)
            if self._file is None:
                self._file = _file_id(self.path)
            self.foreign_commits()  # the baseline: what others commit from now on is news
        return self._conn

    def _check_file(self) -> None:
        """One stat per group: does the path still name the store this gateway opened?"""
        if self._file is None:
            return
        now = _file_id(self.path)
        if now != self._file:
            what = "deleted or moved away" if now is None else "replaced by another file"
            if not self._moved:
                self._moved = True
                log.error("the event store %s was %s while the gateway ran: ingest answers 503 until the path "
                          "names the original file again, or the gateway is restarted (docs/security.md, "
                          "item 11)", self.path, what)
            raise StoreMoved(f"the store's file was {what} while the gateway ran")
        if self._moved:
            self._moved = False
            log.warning("the event store %s is back at its path: ingest resumes", self.path)

    def open(self) -> None:
        try:
            self._connection()
        except sqlite3.OperationalError as exc:  # read-only, locked, full: wait for it to clear
            log.error("the event store is not writable yet (%s); ingest answers 503 until it is", exc)

    def acquire(self) -> None:
        if self._lock is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = WriterLock(self.path.with_name(self.path.name + LOCK_SUFFIX))
        self._lock.acquire(self.busy_timeout_ms / 1000)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def transaction(self, group: Sequence[Item]) -> Committed:
        conn = self._connection()
        if needs_sync(group) or self.synchronous != "FULL":
            return transaction(conn, group)
        # Only bookkeeping (claims, outcomes): commit without waiting for the disk. In WAL mode
        # the database stays consistent; a power cut may lose these rows, and the next durable
        # commit syncs them along with its own.
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            return transaction(conn, group)
        finally:
            conn.execute("PRAGMA synchronous=FULL")

    def foreign_commits(self) -> int | None:
        # `PRAGMA data_version` changes when another connection commits, never for this one's
        # own commits; it reads shared memory, no disk. Outside a transaction: no lock taken.
        conn = self._conn
        if conn is None:
            return None
        # fetchall, not fetchone: a statement left unfinished would hold its read snapshot open,
        # and the version would never change again (nor could a checkpoint pass it).
        [(version,)] = conn.execute("PRAGMA data_version").fetchall()
        known, self._data_version = self._data_version, version
        if known is None or version == known:
            return None
        [(newest,)] = conn.execute(_NEWEST_EVENT).fetchall()
        return int(newest)

    def reset(self) -> None:
        self._data_version = None  # a new connection counts afresh
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error as exc:
                log.error("closing the store connection failed: %s", exc)
            self._conn = None

    def isolatable(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.IntegrityError | ValueError | TypeError)

    def is_fault(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.Error) and not is_busy(error)

    def unavailable(self, error: BaseException) -> StoreUnavailable:
        if isinstance(error, WriterBusy):
            return StoreUnavailable()
        if isinstance(error, StoreMoved):
            return StoreUnavailable(f"{error}; retry later")
        if isinstance(error, sqlite3.Error):
            return StoreUnavailable()
        return StoreUnavailable(f"the store refused the write: {error}")


def transaction(conn: sqlite3.Connection, group: Sequence[Item]) -> Committed:
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
    keys = identities(items)
    # identity -> {fingerprint: id} of its stored versions, the first version first
    known: dict[str, dict[bytes, int]] = {}
    for key, fingerprint, stored_id in conn.execute(_EXISTING, (orjson.dumps([k for ks in keys for k in ks]),)):
        known.setdefault(key, {})[fingerprint] = stored_id
    receipt_id, event_id = conn.execute(_NEXT_IDS).fetchone()
    rows = plan(items, keys, known, receipt_id, event_id, committed)
    if rows.receipts:
        insert_rows(conn, _INSERT_RECEIPTS, _RECEIPT, rows.receipts)
        insert_rows(conn, _INSERT_EVENTS, _EVENT, rows.events)
    if rows.deliveries:  # the event's receive time is also the delivery's first due time
        insert_rows(conn, _outbox.INSERT_DELIVERIES, _outbox.DELIVERY,
                    [(e, plugin, source, entity, at, at, at) for e, plugin, source, entity, at in rows.deliveries])
    return rows.results
