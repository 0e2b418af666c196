"""Recomputing stored events' identities from the bytes kept of them, once, when the rules
that name an occurrence change (schema 7, issue 12): every row that migration 7 moved over has
no fingerprint yet. Runs in the writer's thread, a batch per transaction, in id order, so the
first stored version of an identity stays the first: a later row whose new identity is taken
by other content becomes a `conflict` pointing at it. Nothing is deleted or merged."""

from __future__ import annotations

import hashlib
import logging
import sqlite3

from gateway.model import dedup_key
from gateway.store.records import Reidentify

log = logging.getLogger("gateway.store")

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
        event = identify(source, scheme, data, bool(member))
        if event is None:  # the scheme is gone: keep the old key, compare by the exact bytes
            log.warning("event %d: scheme %r is not registered; its identity stays %s", event_id, scheme, old_key)
            key, entity, fingerprint = old_key, old_entity, hashlib.sha256(data).digest()
            status = "stored" if reason is None else "quarantined"
        else:
            key = dedup_key(source, event.event_type, event.named_by)
            entity, fingerprint, status = event.entity_id, event.fingerprint, event.status
        versions = dict(db.execute(_VERSIONS, (key,)).fetchall())
        first = next(iter(versions.values()), None)
        if fingerprint in versions:
            # Two rows that were one occurrence all along (possible only where `dedup_fields`
            # changed): keep both, the later as a conflict, made unique by its own id.
            fingerprint = hashlib.sha256(fingerprint + event_id.to_bytes(8, "big")).digest()
        db.execute(_UPDATE, (key, entity, fingerprint, "conflict" if first is not None else status, first, event_id))
        db.execute(_ORDER, (entity, event_id))
    return len(rows)
