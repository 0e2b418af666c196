"""Recomputing stored events' identities on PostgreSQL: the same rules as
gateway/store/sqlite/_identity.py, for rows that came over without a fingerprint."""

from __future__ import annotations

import hashlib
import logging

from gateway.model import dedup_key
from gateway.store.postgres._schema import Conn
from gateway.store.records import Reidentify

log = logging.getLogger("gateway.store")

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
        data = bytes(data)
        event = identify(source, scheme, data, bool(member))
        if event is None:  # the scheme is gone: keep the old key, compare by the exact bytes
            log.warning("event %d: scheme %r is not registered; its identity stays %s", event_id, scheme, old_key)
            key, entity, fingerprint = old_key, old_entity, hashlib.sha256(data).digest()
            status = "stored" if reason is None else "quarantined"
        else:
            key = dedup_key(source, event.event_type, event.named_by)
            entity, fingerprint, status = event.entity_id, event.fingerprint, event.status
        versions = {bytes(f): i for f, i in await conn.fetch(_VERSIONS, key)}
        first = next(iter(versions.values()), None)
        if fingerprint in versions:  # one occurrence all along (dedup_fields changed): both kept
            fingerprint = hashlib.sha256(fingerprint + event_id.to_bytes(8, "big")).digest()
        await conn.execute(_UPDATE, key, entity, fingerprint, "conflict" if first is not None else status, first,
                           event_id)
        await conn.execute(_ORDER, entity, event_id)
    return len(rows)
