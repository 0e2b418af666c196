"""Copying a SQLite store into PostgreSQL (`gateway migrate-store`).

Everything is copied as it is: receipts, events (ids, dedup keys, fingerprints, statuses,
conflicts), deliveries with their states and attempts, and the rejection log. The id counters
continue from SQLite's `sqlite_sequence`, so no id handed out before the move is ever handed
out again. Tables go over in dependency order (receipts, events, deliveries, rejections), each in
id order, a batch per transaction: an interrupted copy resumes after the highest id the target
already holds of each table. The source is opened read-only; stop the gateway first, or the
events it stores meanwhile are not copied.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import asyncpg

from gateway.store.postgres._schema import migrate

BATCH = 2000
# (table, its columns, in both stores' schemas)
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("receipts", ("id", "request_id", "source", "received_at", "remote_addr", "attempt", "headers", "body",
                  "sent_at", "latency_us")),
    ("events", ("id", "receipt_id", "source", "scheme", "event_type", "entity_id", "dedup_key", "fingerprint",
                "status", "conflicts_with", "account", "symbol", "received_at", "payload", "quarantine_reason")),
    ("deliveries", ("id", "event_id", "plugin", "source", "entity_id", "status", "attempts", "next_attempt_at",
                    "created_at", "updated_at", "last_error", "claim_id", "lease_until")),
    ("rejections", ("id", "received_at", "request_id", "bucket", "source", "code", "detail", "remote_addr",
                    "header_names", "body_size", "body_sha256")),
)


class TargetNotEmpty(Exception):
    """The target already holds events and the copy was not asked to resume."""


def count_rows(source: Path) -> dict[str, int]:
    with closing(_open(source)) as db:
        return {table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) for table, _ in TABLES}


def _open(source: Path) -> sqlite3.Connection:
    if not source.exists():
        raise FileNotFoundError(f"no SQLite store at {source}")
    return sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)


def _batches(db: sqlite3.Connection, table: str, columns: tuple[str, ...], after: int) -> Iterator[list[Any]]:
    while True:
        rows = db.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE id > ? ORDER BY id LIMIT ?",
                          (after, BATCH)).fetchall()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


async def copy_store(source: Path, target: str, *, resume: bool, connect: dict[str, Any] | None = None,
                     progress: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Copy the SQLite store at `source` into the PostgreSQL database at `target` (its schema
    created if needed); `progress(n)` after each batch of n rows. Returns the rows copied per
    table. Raises TargetNotEmpty when the target holds events and `resume` is false."""
    conn = await asyncpg.connect(target, **(connect or {}))
    copied: dict[str, int] = {}
    try:
        await migrate(conn)
        if not resume and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM receipts)"):
            raise TargetNotEmpty("the target store is not empty: give --resume to continue an interrupted copy "
                                 "into it, or choose an empty database")
        with closing(_open(source)) as db:
            for table, columns in TABLES:
                after = int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {table}"))
                marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
                insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
                copied[table] = 0
                for rows in _batches(db, table, columns, after):
                    async with conn.transaction():
                        await conn.executemany(insert, rows)
                    copied[table] += len(rows)
                    progress(len(rows))
            sequences = dict(db.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        async with conn.transaction():
            for name in ("events", "receipts"):  # the highest id ever handed out, pruned ones included
                highest = max(int(sequences.get(name, 0)),
                              int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {name}")))
                await conn.execute("UPDATE id_counters SET value = greatest(value, $2) WHERE name = $1", name, highest)
            for name in ("deliveries", "rejections"):
                highest = max(int(sequences.get(name, 0)),
                              int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {name}")))
                if highest:
                    await conn.execute("SELECT setval(pg_get_serial_sequence($1, 'id'), $2)", name, highest)
    finally:
        await conn.close()
    return copied
