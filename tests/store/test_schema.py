"""The SQLite schema: migrations, their idempotence, and the file SQLiteStore.open prepares."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite._schema import MIGRATIONS, SchemaTooNew, migrate


@pytest.fixture(params=[None, ""], ids=["autocommit", "legacy-transactions"])
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A fresh connection, in autocommit mode and in Python's default transaction mode."""
    with closing(sqlite3.connect(tmp_path / "schema.db", isolation_level=request.param)) as conn:
        yield conn


def names(conn: sqlite3.Connection, kind: str) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite_%'", (kind,))
    return {r[0] for r in rows}


def versions(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def test_migrate_creates_the_schema(conn: sqlite3.Connection) -> None:
    assert migrate(conn) == len(MIGRATIONS)
    assert names(conn, "table") == {"schema_version", "receipts", "events", "deliveries", "rejections", "heartbeat",
                                    "job_leases", "ledger_state", "ledger_entries", "positions", "anomalies",
                                    "position_counts"}
    assert {"events_source", "events_receipt"} <= names(conn, "index")
    assert versions(conn) == list(range(1, len(MIGRATIONS) + 1))
    assert not conn.in_transaction


def test_migrate_twice_is_idempotent(conn: sqlite3.Connection) -> None:
    migrate(conn)
    conn.execute(
        "INSERT INTO receipts (request_id, source, received_at, headers, body) VALUES ('r', 's', 1, '[]', x'00')"
    )
    conn.commit()
    assert migrate(conn) == len(MIGRATIONS)
    assert versions(conn) == list(range(1, len(MIGRATIONS) + 1))
    assert conn.execute("SELECT count(*) FROM receipts").fetchone() == (1,)


def test_identity_and_content_are_unique_together(conn: sqlite3.Connection) -> None:
    """One row per (dedup key, fingerprint): a retry is refused, another version of the same
    occurrence (a conflict) is kept beside the first."""
    migrate(conn)
    conn.execute("INSERT INTO receipts (id, request_id, source, received_at, headers, body)"
                 " VALUES (1, 'r', 's', 1, '[]', x'')")
    insert = ("INSERT INTO events (receipt_id, source, scheme, event_type, entity_id, dedup_key, fingerprint,"
              " status, conflicts_with, received_at) VALUES (1, 's', 'metacopier', 't', 'e', 's:t:e@1', ?, ?, ?, 1)")
    first = conn.execute(insert, (b"\x01", "stored", None)).lastrowid
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute(insert, (b"\x01", "stored", None))
    conn.execute(insert, (b"\x02", "conflict", first))
    assert conn.execute("SELECT fingerprint, status, conflicts_with FROM events ORDER BY id").fetchall() == [
        (b"\x01", "stored", None), (b"\x02", "conflict", first)]
    conn.rollback()


def test_ids_are_not_reused_once_deleted(conn: sqlite3.Connection) -> None:
    """Receipt, event and delivery ids only grow, even once every row is gone (AUTOINCREMENT)."""
    migrate(conn)

    def insert(sql: str, *args: object) -> int:
        row_id = conn.execute(sql, args).lastrowid
        assert row_id is not None
        return row_id

    def one_of_each(key: str) -> tuple[int, int, int]:
        receipt = insert("INSERT INTO receipts (request_id, source, received_at, headers, body)"
                         " VALUES ('r', 's', 1, '[]', x'')")
        event = insert("INSERT INTO events (receipt_id, source, scheme, event_type, entity_id, dedup_key,"
                       " fingerprint, status, received_at) VALUES (?, 's', 'metacopier', 't', 'e', ?, x'',"
                       " 'stored', 1)", receipt, key)
        delivery = insert("INSERT INTO deliveries (event_id, plugin, source, entity_id, status, next_attempt_at,"
                          " created_at, updated_at) VALUES (?, 'p', 's', 'e', 'delivered', 0, 1, 1)", event)
        return receipt, event, delivery

    old = [one_of_each("s:t:a"), one_of_each("s:t:b")]
    for table in ("deliveries", "events", "receipts"):
        conn.execute(f"DELETE FROM {table}")
    new = one_of_each("s:t:a")
    assert all(n > max(column) for n, column in zip(new, zip(*old, strict=True), strict=True)), (old, new)
    conn.rollback()


def test_newer_schema_is_refused(conn: sqlite3.Connection) -> None:
    migrate(conn)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS) + 1,))
    conn.commit()
    newest = len(MIGRATIONS)
    with pytest.raises(SchemaTooNew, match=f"version {newest + 1}; this gateway knows up to {newest}"):
        migrate(conn)


@pytest.mark.anyio
async def test_open_creates_the_folder_and_a_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "gateway.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        assert path.is_file()
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert versions(conn) == list(range(1, len(MIGRATIONS) + 1))
            assert {"receipts", "events"} <= names(conn, "table")
    finally:
        await store.close()


@pytest.mark.anyio
async def test_open_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    with closing(sqlite3.connect(path)) as conn:
        migrate(conn)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS) + 1,))
        conn.commit()
    store = SQLiteStore(path)
    try:
        with pytest.raises(SchemaTooNew):
            await store.open()
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_store_of_the_previous_schema_migrates_and_its_deliveries_are_claimed(tmp_path: Path) -> None:
    """Version 6 adds the claim columns: pending deliveries written before it are due as they were."""
    path = tmp_path / "gateway.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for version, statements in enumerate(MIGRATIONS[:5], start=1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        conn.execute("INSERT INTO receipts VALUES (1, 'r', 's', 1000000, NULL, NULL, '[]', X'7B7D')")
        conn.execute("INSERT INTO events (id, receipt_id, source, scheme, event_type, entity_id, dedup_key, status,"
                     " received_at) VALUES (1, 1, 's', 'metacopier', 't', 'e', 's:t:e', 'stored', 1000000)")
        conn.execute("INSERT INTO deliveries (event_id, plugin, source, entity_id, status, attempts, next_attempt_at,"
                     " created_at, updated_at) VALUES (1, 'p', 's', 'e', 'pending', 2, 0, 1000000, 1000000)")
    store = SQLiteStore(path)
    await store.open()
    try:
        [claim] = await store.claim_due("p", 2.0, 10, 30)
        assert (claim.event.id, claim.attempt) == (1, 3)
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert versions(conn) == list(range(1, len(MIGRATIONS) + 1))
