"""SQL for the delivery outbox. Reads take the (async) reader connection, each in one
`execute_fetchall` call: the reader is shared, and a cursor left open between two calls would
hold its read snapshot open for whatever query runs in between (a stale read); writes, claims
included, are plain functions of the writer's connection, run inside its transaction in its
thread, so a claim always sees every outcome recorded before it."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import aiosqlite
import orjson

from gateway.model import Event, load_payload
from gateway.store import sql
from gateway.store.records import Claim, DeliveryRecord, DeliveryResult, DeliveryStats

US = 1_000_000

INSERT_DELIVERIES = (
    "INSERT INTO deliveries (event_id, plugin, source, entity_id, status, attempts, next_attempt_at,"
    " created_at, updated_at)"
)
DELIVERY = "(?, ?, ?, ?, 'pending', 0, ?, ?, ?)"

# The head of line per (plugin, source, entity id): nothing earlier of the same entity pending
# (claimed or not), and not itself claimed under a lease that still holds.
_DUE = """
    SELECT d.id, d.attempts, e.id, e.source, e.scheme, e.event_type, e.entity_id, e.dedup_key,
           e.status, e.account, e.symbol, e.received_at, coalesce(e.payload, r.body), e.conflicts_with
    FROM deliveries d
    JOIN events e ON e.id = d.event_id
    JOIN receipts r ON r.id = e.receipt_id
    WHERE d.plugin = ?1 AND d.status = 'pending' AND d.next_attempt_at <= ?2 AND d.lease_until <= ?2
      AND NOT EXISTS (
          SELECT 1 FROM deliveries p
          WHERE p.plugin = d.plugin AND p.status = 'pending'
            AND p.source = d.source AND p.entity_id = d.entity_id AND p.id < d.id)
    ORDER BY d.id
    LIMIT ?3
"""
_CLAIM = "UPDATE deliveries SET claim_id = ?, lease_until = ? WHERE id IN (SELECT value FROM json_each(?))"

_FINISH = (
    "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
    " updated_at = ?, claim_id = NULL, lease_until = 0 WHERE id = ? AND claim_id = ? AND status = 'pending'"
)
_RENEW = "UPDATE deliveries SET lease_until = ? WHERE id = ? AND claim_id = ? AND status = 'pending'"
_RELEASE = "UPDATE deliveries SET claim_id = NULL, lease_until = 0 WHERE id = ? AND claim_id = ?"

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


def claim(db: sqlite3.Connection, plugin: str, now: float, limit: int, lease_until: float,
          claim_id: int) -> list[Claim]:
    rows = db.execute(_DUE, (plugin, round(now * US), limit)).fetchall()
    if rows:
        db.execute(_CLAIM, (claim_id, round(lease_until * US), orjson.dumps([r[0] for r in rows])))
    return [
        Claim(
            delivery_id=r[0], claim_id=claim_id, plugin=plugin, lease_until=lease_until,
            event=Event(
                id=r[2], source=r[3], scheme=r[4], event_type=r[5], entity_id=r[6], dedup_key=r[7],
                status=r[8], conflicts_with=r[13], account=r[9], symbol=r[10], received_at=r[11] / US,
                payload=load_payload(r[12]),  # None when unparseable, or too deep to serialise again
                body=r[12], attempt=r[1] + 1,
            ),
        )
        for r in rows
    ]


def finish(db: sqlite3.Connection, results: Sequence[DeliveryResult], now: float) -> list[int]:
    """Record outcomes; returns the ids refused (no longer held under that claim id)."""
    now_us = round(now * US)
    refused = []
    for r in results:
        cursor = db.execute(_FINISH, (r.status, round(r.next_attempt_at * US), r.error, now_us, r.id, r.claim_id))
        if cursor.rowcount == 0:
            refused.append(r.id)
    return refused


def renew(db: sqlite3.Connection, claims: Sequence[Claim], lease_until: float) -> list[int]:
    """Extend the leases still held; returns their delivery ids."""
    until_us = round(lease_until * US)
    return [c.delivery_id for c in claims
            if db.execute(_RENEW, (until_us, c.delivery_id, c.claim_id)).rowcount]


def release(db: sqlite3.Connection, claims: Sequence[Claim]) -> None:
    db.executemany(_RELEASE, [(c.delivery_id, c.claim_id) for c in claims])


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
    delivery_id: int | None = None, source: str | None = None, event_type: str | None = None,
) -> list[DeliveryRecord]:
    where, args = sql.where(sql.delivery_filters(plugin, status, event_id, delivery_id, source, event_type),
                            lambda n: "?")
    rows = await db.execute_fetchall(_LIST + where + " ORDER BY d.id DESC LIMIT ?", (*args, limit))
    return [
        DeliveryRecord(
            id=r[0], event_id=r[1], plugin=r[2], source=r[3], entity_id=r[4], event_type=r[5], status=r[6],
            attempts=r[7], next_attempt_at=r[8] / US, created_at=r[9] / US, updated_at=r[10] / US,
            last_error=r[11],
        )
        for r in rows
    ]


async def counts(db: aiosqlite.Connection) -> list[tuple[str, str, int]]:
    rows = await db.execute_fetchall("SELECT plugin, status, count(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2")
    return [(r[0], r[1], r[2]) for r in rows]
