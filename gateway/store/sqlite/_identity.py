"""Recomputing stored events' identities on SQLite (gateway/store/identity.py decides), once:
every row that migration 7 moved over has no fingerprint yet. Runs in the writer's thread."""

from __future__ import annotations

import sqlite3

from gateway.store.identity import placed, renamed
from gateway.store.records import Reidentify

_PENDING = """
    SELECT e.id, e.source, e.scheme, e.payload IS NOT NULL, coalesce(e.payload, r.body), e.dedup_key, e.entity_id,
           e.quarantine_reason
    FROM events e JOIN receipts r ON r.id = e.receipt_id
    WHERE e.fingerprint IS NULL ORDER BY e.id LIMIT ?
"""
_VERSIONS = "SELECT fingerprint, id FROM events WHERE dedup_key = ? AND fingerprint IS NOT NULL ORDER BY id"
_UPDATE = ("UPDATE events SET dedup_key = ?, entity_id = ?, fingerprint = ?, status = ?, conflicts_with = ?"
           " WHERE id = ?")
_ORDER = "UPDATE deliveries SET entity_id = ? WHERE event_id = ?"


def reidentify_batch(db: sqlite3.Connection, identify: Reidentify, batch: int) -> int:
    """Give up to `batch` events without a fingerprint their identity; returns how many."""
    rows = db.execute(_PENDING, (batch,)).fetchall()
    for event_id, source, scheme, member, data, old_key, old_entity, reason in rows:
        key, entity, fingerprint, status = renamed(identify, event_id, source, scheme, bool(member), data, old_key,
                                                   old_entity, reason)
        fingerprint, status, first = placed(event_id, fingerprint, status,
                                            dict(db.execute(_VERSIONS, (key,)).fetchall()))
        db.execute(_UPDATE, (key, entity, fingerprint, status, first, event_id))
        db.execute(_ORDER, (entity, event_id))
    return len(rows)
