"""The delivery outbox on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, so that runners in
every instance claim at once without waiting for each other, and never the same row.

A delivery is due when nothing earlier of its (plugin, source, entity) is pending, claimed or
not, and it is not claimed under a lease that still holds: that keeps each entity's events in
order for a plugin while other entities go ahead, across instances. Outcomes are recorded under
the claim id: a holder whose lease ended and was taken over cannot record over its successor.
No transaction stays open while a plugin runs: a claim, a renewal and an outcome are each their
own short transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from gateway.model import Event, load_payload
from gateway.store import sql as sql_filters
from gateway.store.postgres._params import where
from gateway.store.postgres._schema import Conn
from gateway.store.records import Claim, DeliveryRecord, DeliveryResult, DeliveryStats

US = 1_000_000

_DUE = """
    SELECT d.id, d.attempts, e.id, e.source, e.scheme, e.event_type, e.entity_id, e.dedup_key,
           e.status, e.account, e.symbol, e.received_at, coalesce(e.payload, r.body), e.conflicts_with
    FROM deliveries d
    JOIN events e ON e.id = d.event_id
    JOIN receipts r ON r.id = e.receipt_id
    WHERE d.plugin = $1 AND d.status = 'pending' AND d.next_attempt_at <= $2 AND d.lease_until <= $2
      AND NOT EXISTS (
          SELECT 1 FROM deliveries p
          WHERE p.plugin = d.plugin AND p.status = 'pending'
            AND p.source = d.source AND p.entity_id = d.entity_id AND p.id < d.id)
      AND NOT EXISTS (  -- a later delivery of the entity is claimed (an earlier one was replayed)
          SELECT 1 FROM deliveries c
          WHERE c.plugin = d.plugin AND c.status = 'pending' AND c.claim_id IS NOT NULL
            AND c.source = d.source AND c.entity_id = d.entity_id)
    ORDER BY d.id
    LIMIT $3
    FOR UPDATE OF d SKIP LOCKED
"""
_CLAIM = "UPDATE deliveries SET claim_id = $1, lease_until = $2 WHERE id = ANY($3::bigint[])"
# The reaper: claims whose lease ended (their holder died or stalled) are let go first, so that
# the one-claim-per-entity index never blocks the next claim. A late outcome of such a holder is
# refused (its claim id is gone); the delivery is due again at once.
_REAP = ("UPDATE deliveries SET claim_id = NULL, lease_until = 0"
         " WHERE plugin = $1 AND status = 'pending' AND claim_id IS NOT NULL AND lease_until <= $2")
_FINISH = """
    UPDATE deliveries d SET status = u.status, attempts = d.attempts + 1, next_attempt_at = u.next_at,
        last_error = u.error, updated_at = $1, claim_id = NULL, lease_until = 0
    FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::text[])
        AS u(id, claim, status, next_at, error)
    WHERE d.id = u.id AND d.claim_id = u.claim AND d.status = 'pending'
    RETURNING d.id
"""
_RENEW = """
    UPDATE deliveries d SET lease_until = $1 FROM unnest($2::bigint[], $3::bigint[]) AS u(id, claim)
    WHERE d.id = u.id AND d.claim_id = u.claim AND d.status = 'pending' RETURNING d.id
"""
_RELEASE = """
    UPDATE deliveries d SET claim_id = NULL, lease_until = 0 FROM unnest($1::bigint[], $2::bigint[]) AS u(id, claim)
    WHERE d.id = u.id AND d.claim_id = u.claim
"""
_REPLAY_EVENT = """
    INSERT INTO deliveries (event_id, plugin, source, entity_id, status, attempts, next_attempt_at,
                            created_at, updated_at)
    SELECT id, $1, source, entity_id, 'pending', 0, $2, received_at, $2 FROM events WHERE id = $3
    ON CONFLICT (plugin, event_id) DO UPDATE SET
        status = 'pending', attempts = 0, next_attempt_at = excluded.next_attempt_at,
        last_error = NULL, updated_at = excluded.updated_at
"""
_REPLAY_DEAD = ("UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, last_error = NULL,"
                " updated_at = $1 WHERE plugin = $2 AND status = 'dead'")
_RETRY = ("UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, last_error = NULL,"
          " updated_at = $1 WHERE id = $2")
_LIST = """
    SELECT d.id, d.event_id, d.plugin, d.source, d.entity_id, e.event_type, d.status, d.attempts,
           d.next_attempt_at, d.created_at, d.updated_at, d.last_error
    FROM deliveries d JOIN events e ON e.id = d.event_id
"""


def _count(status: str) -> int:
    """The row count of a command status such as `UPDATE 3` or `INSERT 0 1`."""
    return int(status.rsplit(" ", 1)[-1])


async def claim(conn: Conn, plugin: str, now: float, limit: int, lease_until: float,
                claim_id: int) -> list[Claim]:
    await conn.execute(_REAP, plugin, round(now * US))
    rows = await conn.fetch(_DUE, plugin, round(now * US), limit)
    if rows:
        await conn.execute(_CLAIM, claim_id, round(lease_until * US), [r[0] for r in rows])
    return [
        Claim(
            delivery_id=r[0], claim_id=claim_id, plugin=plugin, lease_until=lease_until,
            event=Event(
                id=r[2], source=r[3], scheme=r[4], event_type=r[5], entity_id=r[6], dedup_key=r[7],
                status=r[8], conflicts_with=r[13], account=r[9], symbol=r[10], received_at=r[11] / US,
                payload=load_payload(bytes(r[12])), body=bytes(r[12]), attempt=r[1] + 1,
            ),
        )
        for r in rows
    ]


async def finish(conn: Conn, results: Sequence[DeliveryResult], now: float) -> list[int]:
    """Record outcomes; returns the ids refused (no longer held under that claim id)."""
    done = {r[0] for r in await conn.fetch(
        _FINISH, round(now * US), [r.id for r in results], [r.claim_id for r in results],
        [r.status for r in results], [round(r.next_attempt_at * US) for r in results], [r.error for r in results])}
    return [r.id for r in results if r.id not in done]


async def renew(conn: Conn, claims: Sequence[Claim], lease_until: float) -> list[int]:
    rows = await conn.fetch(_RENEW, round(lease_until * US), [c.delivery_id for c in claims],
                            [c.claim_id for c in claims])
    return [r[0] for r in rows]


async def release(conn: Conn, claims: Sequence[Claim]) -> None:
    await conn.execute(_RELEASE, [c.delivery_id for c in claims], [c.claim_id for c in claims])


async def replay(conn: Conn, plugin: str, event_id: int | None, dead: bool, now: float) -> int:
    now_us = round(now * US)
    if event_id is not None:
        return _count(await conn.execute(_REPLAY_EVENT, plugin, now_us, event_id))
    if dead:
        return _count(await conn.execute(_REPLAY_DEAD, now_us, plugin))
    raise ValueError("replay needs an event id or dead=True")


async def retry(conn: Conn, delivery_id: int, now: float) -> int:
    return _count(await conn.execute(_RETRY, round(now * US), delivery_id))


async def stats(pool: asyncpg.Pool, plugin: str) -> DeliveryStats:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM deliveries WHERE plugin = $1 AND status = 'pending'),"
        " (SELECT created_at FROM deliveries WHERE plugin = $1 AND status = 'pending' ORDER BY id LIMIT 1),"
        " (SELECT count(*) FROM deliveries WHERE plugin = $1 AND status = 'dead')", plugin)
    assert row is not None  # three scalar subqueries: always one row
    return DeliveryStats(pending=int(row[0]), oldest_pending_at=None if row[1] is None else row[1] / US,
                         dead=int(row[2]))


async def listing(pool: asyncpg.Pool, plugin: str | None, status: str | None, event_id: int | None, limit: int,
                  delivery_id: int | None = None, source: str | None = None,
                  event_type: str | None = None) -> list[DeliveryRecord]:
    clauses, args = where(sql_filters.delivery_filters(plugin, status, event_id, delivery_id, source, event_type))
    sql = _LIST + clauses + f" ORDER BY d.id DESC LIMIT ${len(args) + 1}"
    return [
        DeliveryRecord(
            id=r[0], event_id=r[1], plugin=r[2], source=r[3], entity_id=r[4], event_type=r[5], status=r[6],
            attempts=r[7], next_attempt_at=r[8] / US, created_at=r[9] / US, updated_at=r[10] / US,
            last_error=r[11],
        )
        for r in await pool.fetch(sql, *args, limit)
    ]


async def counts(pool: asyncpg.Pool) -> list[tuple[str, str, int]]:
    rows = await pool.fetch("SELECT plugin, status, count(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2")
    return [(r[0], r[1], r[2]) for r in rows]
