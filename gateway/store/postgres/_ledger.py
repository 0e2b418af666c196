"""SQL for the position ledger on PostgreSQL (the SQLite store's _ledger.py, in asyncpg's
dialect). Reads take the pool; a write runs in one transaction, the checkpoint's row lock
serialising any two projectors."""

from __future__ import annotations

import asyncpg
import orjson

from gateway.store import ledger_rows
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
from gateway.store.postgres._params import text, where
from gateway.store.postgres._schema import Conn

_STATUS = """
    SELECT l.checkpoint, l.orphans, coalesce((SELECT max(id) FROM events), 0),
           (SELECT received_at FROM events WHERE id > l.checkpoint ORDER BY id LIMIT 1)
    FROM ledger_state l WHERE l.id = 1
"""
_KEYS = ("unnest($1::text[], $2::text[], $3::text[]) AS k(source, account, position_id)")
_JOIN = "k.source = t.source AND k.account = t.account AND k.position_id = t.position_id"

_T_ANOMALY = ledger_rows.prefixed(ANOMALY_COLUMNS, "t")

async def status(db: asyncpg.Pool) -> LedgerStatus:
    row = await db.fetchrow(_STATUS)
    assert row is not None
    return LedgerStatus(checkpoint=row[0], orphans=bool(row[1]), latest=row[2],
                        pending_since=None if row[3] is None else row[3] / US)


def _key(key: PositionKey) -> PositionKey:
    return text(key[0]), text(key[1]), text(key[2])


async def load(db: asyncpg.Pool, keys: list[PositionKey]) -> dict[PositionKey, LoadedPosition]:
    loaded = {k: LoadedPosition() for k in keys}
    named = {_key(k): k for k in keys}  # as stored -> as asked for
    columns = [list(part) for part in zip(*named, strict=True)] if keys else [[], [], []]
    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        for r in await conn.fetch(f"SELECT {ENTRY_COLUMNS} FROM ledger_entries t JOIN {_KEYS} ON {_JOIN}", *columns):
            loaded[named[(r[0], r[1], r[2])]].entries.append(entry(r[3], bytes(r[4])))
        for r in await conn.fetch(
                f"SELECT t.source, t.account, t.position_id, t.state FROM positions t JOIN {_KEYS} ON {_JOIN}",
                *columns):
            loaded[named[(r[0], r[1], r[2])]].state = r[3]
        for r in await conn.fetch(f"SELECT {_T_ANOMALY} FROM anomalies t JOIN {_KEYS} ON {_JOIN}"
                                  " WHERE t.resolved_at IS NULL", *columns):
            loaded[named[(r[1], r[2], r[3])]].anomalies.append(anomaly(r))
    return loaded


async def orphans(db: asyncpg.Pool, limit: int) -> list[PositionKey]:
    rows = await db.fetch(
        "SELECT DISTINCT e.source, e.account, e.position_id FROM ledger_entries e WHERE NOT EXISTS ("
        " SELECT 1 FROM positions p WHERE p.source = e.source AND p.account = e.account"
        " AND p.position_id = e.position_id) LIMIT $1", limit)
    return [(r[0], r[1], r[2]) for r in rows]


async def write(conn: Conn, w: LedgerWrite) -> list[int] | None:
    moved = await conn.fetchval(
        "UPDATE ledger_state SET checkpoint = $1, orphans = CASE WHEN $2 THEN 0 ELSE orphans END"
        " WHERE id = 1 AND checkpoint = $3 RETURNING 1", w.checkpoint, w.orphans_done, w.after)
    if moved is None:
        return None
    at = ledger_rows.us(w.at)
    if w.entries:
        await conn.executemany(
            "INSERT INTO ledger_entries (event_id, source, account, position_id, conflict, projected_at, record)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO UPDATE SET source = excluded.source,"
            " account = excluded.account, position_id = excluded.position_id, conflict = excluded.conflict,"
            " projected_at = excluded.projected_at, record = excluded.record",
            [(e.event_id, *_key(e.key), int(e.conflict), at, e.record) for e in w.entries])
    if w.positions:
        await conn.executemany(
            "INSERT INTO positions (source, account, position_id, state, symbol, opened_at, updated_at, document)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (source, account, position_id) DO UPDATE SET"
            " state = excluded.state, symbol = excluded.symbol, opened_at = excluded.opened_at,"
            " updated_at = excluded.updated_at, document = excluded.document",
            [(*_key(p.key), p.state, text(p.symbol), p.opened_at, at, p.document) for p in w.positions])
    if w.resolved:
        await conn.execute("UPDATE anomalies SET resolved_at = $1 WHERE id = ANY($2::bigint[])"
                           " AND resolved_at IS NULL", at, list(w.resolved))
    if w.changed:
        await conn.executemany("UPDATE anomalies SET event_ids = $1, detail = $2 WHERE id = $3",
                               [(orjson.dumps(list(ids)).decode(), text(detail), i) for i, ids, detail in w.changed])
    raised = []
    for a in w.raised:
        raised.append(await conn.fetchval(
            "INSERT INTO anomalies (source, account, position_id, kind, event_ids, detail, raised_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            *_key(a.key), a.kind, orjson.dumps(list(a.event_ids)).decode(), text(a.detail), at))
    changes = [(text(source), state, n) for (source, state), n in sorted(w.counts.items()) if n]
    if changes:
        await conn.executemany(
            "INSERT INTO position_counts (source, state, n) VALUES ($1, $2, $3)"
            " ON CONFLICT (source, state) DO UPDATE SET n = position_counts.n + excluded.n", changes)
    return raised


async def reset(conn: Conn) -> None:
    await conn.execute("SELECT 1 FROM ledger_state WHERE id = 1 FOR UPDATE")
    await conn.execute("DELETE FROM ledger_entries e WHERE EXISTS (SELECT 1 FROM events WHERE id = e.event_id)")
    await conn.execute("DELETE FROM positions")
    await conn.execute("DELETE FROM position_counts")
    await conn.execute("UPDATE ledger_state SET checkpoint = 0, orphans = 1 WHERE id = 1")


async def acknowledge(conn: Conn, anomaly_id: int, note: str, at: float) -> StoredAnomaly | None:
    row = await conn.fetchrow(
        f"UPDATE anomalies SET acked_at = $1, note = $2 WHERE id = $3 RETURNING {ANOMALY_COLUMNS}",
        ledger_rows.us(at), text(note), anomaly_id)
    return None if row is None else anomaly(row)


async def positions(db: asyncpg.Pool, q: PositionQuery) -> list[StoredPosition]:
    clauses, args = where(ledger_rows.position_filters(q))
    rows = await db.fetch(f"SELECT {POSITION_COLUMNS} FROM positions p{clauses} ORDER BY p.id DESC"
                          f" LIMIT ${len(args) + 1}", *args, q.limit)
    return [position((r[0], r[1], bytes(r[2]))) for r in rows]


async def get_position(db: asyncpg.Pool, key: PositionKey) -> StoredPosition | None:
    row = await db.fetchrow(f"SELECT {POSITION_COLUMNS} FROM positions WHERE source = $1 AND account = $2"
                            " AND position_id = $3", *_key(key))
    return None if row is None else position((row[0], row[1], bytes(row[2])))


async def anomalies(db: asyncpg.Pool, q: AnomalyQuery) -> list[StoredAnomaly]:
    clauses, args = where(ledger_rows.anomaly_filters(q))
    rows = await db.fetch(f"SELECT {ANOMALY_COLUMNS} FROM anomalies{clauses} ORDER BY id DESC"
                          f" LIMIT ${len(args) + 1}", *args, q.limit)
    return [anomaly(r) for r in rows]


async def counts(db: asyncpg.Pool) -> list[tuple[str, str, int]]:
    rows = await db.fetch("SELECT source, state, n FROM position_counts ORDER BY 1, 2")
    return [(r[0], r[1], r[2]) for r in rows]


async def anomaly_counts(db: asyncpg.Pool) -> list[tuple[str, str, int]]:
    rows = await db.fetch("SELECT source, kind, count(*) FROM anomalies GROUP BY 1, 2 ORDER BY 1, 2")
    return [(r[0], r[1], r[2]) for r in rows]
