"""SQL for the position ledger on SQLite. Reads take the (async) reader connection, one
`execute_fetchall` each (see _outbox.py); writes are functions of the writer's connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import aiosqlite
import orjson

from gateway.store import ledger_rows, sql
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
from gateway.store.ledger_rows import ANOMALY_COLUMNS, ENTRY_COLUMNS, POSITION_COLUMNS, US, anomaly, entry, position

KEYS_PER_QUERY = 1000  # 3 variables a key, well under SQLite's 32,766

_STATUS = """
    SELECT l.checkpoint, l.orphans, coalesce((SELECT max(id) FROM events), 0),
           (SELECT received_at FROM events WHERE id > l.checkpoint ORDER BY id LIMIT 1)
    FROM ledger_state l WHERE l.id = 1
"""


_T_ANOMALY = ledger_rows.prefixed(ANOMALY_COLUMNS, "t")

async def status(db: aiosqlite.Connection) -> LedgerStatus:
    [row] = await db.execute_fetchall(_STATUS)
    return LedgerStatus(checkpoint=row[0], orphans=bool(row[1]), latest=row[2],
                        pending_since=None if row[3] is None else row[3] / US)


def _keyed(keys: Sequence[PositionKey]) -> tuple[str, list[str]]:
    values = ",".join("(?, ?, ?)" for _ in keys)
    return f"WITH k(source, account, position_id) AS (VALUES {values})", [part for k in keys for part in k]


async def load(db: aiosqlite.Connection, keys: Sequence[PositionKey]) -> dict[PositionKey, LoadedPosition]:
    loaded = {k: LoadedPosition() for k in keys}
    for start in range(0, len(keys), KEYS_PER_QUERY):
        chunk = keys[start:start + KEYS_PER_QUERY]
        head, args = _keyed(chunk)
        join = "JOIN k ON k.source = t.source AND k.account = t.account AND k.position_id = t.position_id"
        for r in await db.execute_fetchall(
                f"{head} SELECT {ENTRY_COLUMNS} FROM ledger_entries t {join}", args):
            loaded[(r[0], r[1], r[2])].entries.append(entry(r[3], r[4]))
        for r in await db.execute_fetchall(
                f"{head} SELECT t.source, t.account, t.position_id, t.state FROM positions t {join}", args):
            loaded[(r[0], r[1], r[2])].state = r[3]
        for r in await db.execute_fetchall(
                f"{head} SELECT {_T_ANOMALY} FROM anomalies t {join} WHERE t.resolved_at IS NULL", args):
            loaded[(r[1], r[2], r[3])].anomalies.append(anomaly(r))
    return loaded


async def orphans(db: aiosqlite.Connection, limit: int) -> list[PositionKey]:
    rows = await db.execute_fetchall(
        "SELECT DISTINCT e.source, e.account, e.position_id FROM ledger_entries e WHERE NOT EXISTS ("
        " SELECT 1 FROM positions p WHERE p.source = e.source AND p.account = e.account"
        " AND p.position_id = e.position_id) LIMIT ?", (limit,))
    return [(r[0], r[1], r[2]) for r in rows]


def write(db: sqlite3.Connection, w: LedgerWrite) -> list[int] | None:
    moved = db.execute(
        "UPDATE ledger_state SET checkpoint = ?, orphans = CASE WHEN ? THEN 0 ELSE orphans END"
        " WHERE id = 1 AND checkpoint = ?", (w.checkpoint, w.orphans_done, w.after))
    if moved.rowcount != 1:
        return None
    at = ledger_rows.us(w.at)
    db.executemany(
        "INSERT INTO ledger_entries (event_id, source, account, position_id, conflict, projected_at, record)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE SET source = excluded.source,"
        " account = excluded.account, position_id = excluded.position_id, conflict = excluded.conflict,"
        " projected_at = excluded.projected_at, record = excluded.record",
        [(e.event_id, *e.key, int(e.conflict), at, e.record) for e in w.entries])
    db.executemany(
        "INSERT INTO positions (source, account, position_id, state, symbol, opened_at, updated_at, document)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, account, position_id) DO UPDATE SET"
        " state = excluded.state, symbol = excluded.symbol, opened_at = excluded.opened_at,"
        " updated_at = excluded.updated_at, document = excluded.document",
        [(*p.key, p.state, p.symbol, p.opened_at, at, p.document) for p in w.positions])
    db.executemany("UPDATE anomalies SET resolved_at = ? WHERE id = ? AND resolved_at IS NULL",
                   [(at, i) for i in w.resolved])
    db.executemany("UPDATE anomalies SET event_ids = ?, detail = ? WHERE id = ?",
                   [(orjson.dumps(list(ids)), detail, i) for i, ids, detail in w.changed])
    raised = []
    for a in w.raised:
        [(new,)] = db.execute(
            "INSERT INTO anomalies (source, account, position_id, kind, event_ids, detail, raised_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (*a.key, a.kind, orjson.dumps(list(a.event_ids)), a.detail, at)).fetchall()
        raised.append(new)
    db.executemany(
        "INSERT INTO position_counts (source, state, n) VALUES (?, ?, ?)"
        " ON CONFLICT (source, state) DO UPDATE SET n = n + excluded.n",
        [(source, state, n) for (source, state), n in w.counts.items() if n])
    return raised


def reset(db: sqlite3.Connection) -> None:
    """Start the projection again from the first event. Entries of events still stored go (they
    are projected again); those of pruned events stay, the only record left of them. Anomalies
    stay: the projection resolves or keeps them, acknowledgements included."""
    db.execute("DELETE FROM ledger_entries WHERE event_id IN (SELECT id FROM events)")
    db.execute("DELETE FROM positions")
    db.execute("DELETE FROM position_counts")
    db.execute("UPDATE ledger_state SET checkpoint = 0, orphans = 1 WHERE id = 1")


def acknowledge(db: sqlite3.Connection, anomaly_id: int, note: str, at: float) -> StoredAnomaly | None:
    rows = db.execute(f"UPDATE anomalies SET acked_at = ?, note = ? WHERE id = ? RETURNING {ANOMALY_COLUMNS}",
                      (ledger_rows.us(at), note, anomaly_id)).fetchall()
    return anomaly(rows[0]) if rows else None


async def positions(db: aiosqlite.Connection, q: PositionQuery) -> list[StoredPosition]:
    where, args = sql.where(ledger_rows.position_filters(q), lambda n: "?")
    rows = await db.execute_fetchall(
        f"SELECT {POSITION_COLUMNS} FROM positions p{where} ORDER BY p.id DESC LIMIT ?", (*args, q.limit))
    return [position(r) for r in rows]


async def get_position(db: aiosqlite.Connection, key: PositionKey) -> StoredPosition | None:
    rows = await db.execute_fetchall(
        f"SELECT {POSITION_COLUMNS} FROM positions WHERE source = ? AND account = ? AND position_id = ?", key)
    return next((position(r) for r in rows), None)


async def anomalies(db: aiosqlite.Connection, q: AnomalyQuery) -> list[StoredAnomaly]:
    where, args = sql.where(ledger_rows.anomaly_filters(q), lambda n: "?")
    rows = await db.execute_fetchall(
        f"SELECT {ANOMALY_COLUMNS} FROM anomalies{where} ORDER BY id DESC LIMIT ?", (*args, q.limit))
    return [anomaly(r) for r in rows]


async def counts(db: aiosqlite.Connection) -> list[tuple[str, str, int]]:
    rows = await db.execute_fetchall("SELECT source, state, n FROM position_counts ORDER BY 1, 2")
    return [(r[0], r[1], r[2]) for r in rows]


async def anomaly_counts(db: aiosqlite.Connection) -> list[tuple[str, str, int]]:
    rows = await db.execute_fetchall("SELECT source, kind, count(*) FROM anomalies GROUP BY 1, 2 ORDER BY 1, 2")
    return [(r[0], r[1], r[2]) for r in rows]
