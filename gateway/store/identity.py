"""Naming a stored event again when the rules that name an occurrence change (schema 7, issue
12), for any backend: the backends read the rows without a fingerprint in id order and write
back what these pure functions decide, a batch per transaction, so the first stored version of
an identity stays the first. Nothing is deleted or merged."""

from __future__ import annotations

import hashlib
import logging

from gateway.model import dedup_key
from gateway.store.records import Reidentify

log = logging.getLogger("gateway.store")


def renamed(identify: Reidentify, event_id: int, source: str, scheme: str, member: bool, data: bytes,
            old_key: str, old_entity: str, reason: str | None) -> tuple[str, str, bytes, str]:
    """(dedup key, entity, fingerprint, status) of a stored event under today's rules. A scheme
    no longer registered keeps the old key and is compared by its exact bytes."""
    event = identify(source, scheme, data, member)
    if event is None:
        log.warning("event %d: scheme %r is not registered; its identity stays %s", event_id, scheme, old_key)
        return old_key, old_entity, hashlib.sha256(data).digest(), "stored" if reason is None else "quarantined"
    return dedup_key(source, event.event_type, event.named_by), event.entity_id, event.fingerprint, event.status


def placed(event_id: int, fingerprint: bytes, status: str, versions: dict[bytes, int]) -> tuple[bytes, str, int | None]:
    """(fingerprint, status, conflicts_with) beside the identity's stored `versions` (fingerprint
    -> id, the first version first): a later version is a conflict pointing at the first. Two
    rows that were one occurrence all along (possible only where `dedup_fields` changed) are both
    kept, the later made unique by its own id."""
    first = next(iter(versions.values()), None)
    if fingerprint in versions:
        fingerprint = hashlib.sha256(fingerprint + event_id.to_bytes(8, "big")).digest()
    return fingerprint, "conflict" if first is not None else status, first
