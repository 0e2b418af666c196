"""SQL for the delivery outbox. Reads take the (async) reader connection, each in one
`execute_fetchall` call: the reader is shared, and a cursor left open between two calls would
hold its read snapshot open for whatever query runs in between (a stale read); writes are plain
functions of the writer's connection, run inside its transaction in its thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from gateway.store import DeliveryRecord, DeliveryResult, DeliveryStats, DueDelivery

US = 1_000_000

INSERT = (
    "INSERT INTO deliveries (event_id, plugin, source, entity_id, status, attempts, next_attempt_at,"
    " created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
)

# The head of line per (plugin, source, entity id): nothing earlier of the same entity pending.
_DUE = """
    SELECT d.id, d.plugin, d.attempts, e.id, e.source, e.scheme, e.event_type, e.entity_id,
           e.dedup_key, e.status, e.account, e.symbol, e.received_at, coalesce(e.payload, r.body)
    FROM deliveries d
    JOIN events e ON e.id = d.event_id
    JOIN receipts r ON r.id = e.receipt_id
    WHERE d.plugin = ? AND d.status = 'pending' AND d.next_attempt_at <= ?
      AND NOT EXISTS (
          SELECT 1 FROM deliveries p
          WHERE p.plugin = d.plugin AND p.status = 'pending'
            AND p.source = d.source AND p.entity_id = d.entity_id AND p.id < d.id)
    ORDER BY d.id
    LIMIT ?
"""

_FINISH = (
    "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
    " updated_at = ? WHERE id = ? AND status = 'pending'"
)

_REPLAY_EVENT = """
    INSERT INTO deliveries (event_id, plugin, source, entity_id, status, attempts, next_attempt_at,
                            created_at, updated_at)
    SELECT id, ?, source, entity_id, 'pending', 0, ?, received_at, ? FROM events WHERE id = ?
    ON CONFLICT (plugin, event_id) DO UPDATE SET
        status = 'pending', attempts = 0, next_attempt_at = excluded.next_attempt_at,
        last_error = NULL, updated_at = excluded.updated_at
"""

_REPLAY_DEAD = (
    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, last_error = NULL,"
    " updated_at = ? WHERE plugin = ? AND status = 'dead'"
)

_LIST = """
    SELECT d.id, d.event_id, d.plugin, d.source, d.entity_id, e.event_type, d.status, d.attempts,
           d.next_attempt_at, d.created_at, d.updated_at, d.last_error
    FROM deliveries d JOIN events e ON e.id = d.event_id
"""


async def due(db: aiosqlite.Connection, plugin: str, now: float, limit: int) -> list[DueDelivery]:
    rows = await db.execute_fetchall(_DUE, (plugin, round(now * US), limit))
    return [
        DueDelivery(
            id=r[0], plugin=r[1], attempts=r[2], event_id=r[3], source=r[4], scheme=r[5], event_type=r[6],
            entity_id=r[7], dedup_key=r[8], status=r[9], account=r[10], symbol=r[11],
            received_at=r[12] / US, data=r[13],
        )
        for r in rows
    ]


def finish(db: sqlite3.Connection, results: Sequence[DeliveryResult], now: float) -> None:
    now_us = round(now * US)
    db.executemany(
        _FINISH,
        [(r.status, round(r.next_attempt_at * US), r.error, now_us, r.id) for r in results],
    )


def replay(db: sqlite3.Connection, plugin: str, event_id: int | None, dead: bool, now: float) -> int:
    now_us = round(now * US)
    if event_id is not None:
        cursor = db.execute(_REPLAY_EVENT, (plugin, now_us, now_us, event_id))
    elif dead:
        cursor = db.execute(_REPLAY_DEAD, (now_us, now_us, plugin))
    else:
        raise ValueError("replay needs an event id or dead=True")
    return cursor.rowcount


async def stats(db: aiosqlite.Connection, plugin: str) -> DeliveryStats:
    rows = await db.execute_fetchall(
        "SELECT (SELECT count(*) FROM deliveries WHERE plugin = ?1 AND status = 'pending'),"
        " (SELECT created_at FROM deliveries WHERE plugin = ?1 AND status = 'pending' ORDER BY id LIMIT 1),"
        " (SELECT count(*) FROM deliveries WHERE plugin = ?1 AND status = 'dead')",
        (plugin,),
    )
    row = next(iter(rows))
    return DeliveryStats(pending=row[0], oldest_pending_at=None if row[1] is None else row[1] / US, dead=row[2])


async def listing(
    db: aiosqlite.Connection, plugin: str | None, status: str | None, event_id: int | None, limit: int,
    delivery_id: int | None = None,
) -> list[DeliveryRecord]:
    where: list[str] = []
    args: list[Any] = []
    for clause, value in (("d.plugin = ?", plugin), ("d.status = ?", status), ("d.event_id = ?", event_id),
                          ("d.id = ?", delivery_id)):
        if value is not None:
            where.append(clause)
            args.append(value)
    sql = _LIST + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY d.id DESC LIMIT ?"
    rows = await db.execute_fetchall(sql, (*args, limit))
    return [
        DeliveryRecord(
            id=r[0], event_id=r[1], plugin=r[2], source=r[3], entity_id=r[4], event_type=r[5], status=r[6],
            attempts=r[7], next_attempt_at=r[8] / US, created_at=r[9] / US, updated_at=r[10] / US,
            last_error=r[11],
        )
        for r in rows
    ]
