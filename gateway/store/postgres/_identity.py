"""Recomputing stored events' identities on PostgreSQL (gateway/store/identity.py decides), for
rows that came over without a fingerprint."""

from __future__ import annotations

from gateway.store.identity import placed, renamed
from gateway.store.postgres._schema import Conn
from gateway.store.records import Reidentify

_PENDING = """
    SELECT e.id, e.source, e.scheme, e.payload IS NOT NULL, coalesce(e.payload, r.body), e.dedup_key, e.entity_id,
           e.quarantine_reason
    FROM events e JOIN receipts r ON r.id = e.receipt_id
    WHERE e.fingerprint IS NULL ORDER BY e.id LIMIT $1
"""
_VERSIONS = "SELECT fingerprint, id FROM events WHERE dedup_key = $1 AND fingerprint IS NOT NULL ORDER BY id"
_UPDATE = ("UPDATE events SET dedup_key = $1, entity_id = $2, fingerprint = $3, status = $4, conflicts_with = $5"
           " WHERE id = $6")
_ORDER = "UPDATE deliveries SET entity_id = $1 WHERE event_id = $2"


async def reidentify_batch(conn: Conn, identify: Reidentify, batch: int) -> int:
    """Give up to `batch` events without a fingerprint their identity; returns how many."""
    rows = await conn.fetch(_PENDING, batch)
    for event_id, source, scheme, member, data, old_key, old_entity, reason in rows:
        key, entity, fingerprint, status = renamed(identify, event_id, source, scheme, bool(member), bytes(data),
                                                   old_key, old_entity, reason)
        fingerprint, status, first = placed(event_id, fingerprint, status,
                                            {bytes(f): i for f, i in await conn.fetch(_VERSIONS, key)})
        await conn.execute(_UPDATE, key, entity, fingerprint, status, first, event_id)
        await conn.execute(_ORDER, entity, event_id)
    return len(rows)
