"""What one group of ingests writes, decided once for every backend (pure, no database).

Given the identities already stored (identity -> {fingerprint: id}, the first version first)
and the highest ids handed out so far, `plan` decides each event's fate in order: a
`duplicate` of the stored version with the same content, a `conflict` beside the first version
of its identity when the content differs, else new; and it allocates the ids of what is new,
one receipt per request that brought anything new. The backends look the identities up and
write the rows, each its own way, inside the group's transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.model import Outcome, dedup_key
from gateway.store.committer import Committed, Ingest

US = 1_000_000


@dataclass(slots=True)
class Planned:
    """The rows of a group, as tuples in the column order of the tables, and each item's outcomes."""

    receipts: list[tuple[Any, ...]] = field(default_factory=list)
    # id, request_id, source, received_at, remote_addr, attempt, headers (JSON), body
    events: list[tuple[Any, ...]] = field(default_factory=list)
    # id, receipt_id, source, scheme, event_type, entity_id, dedup_key, fingerprint, status,
    # conflicts_with, account, symbol, received_at, payload, quarantine_reason
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    # event_id, plugin, source, entity_id, received_at (also its first due time)
    results: list[list[Outcome]] = field(default_factory=list)
    receipt_id: int = 0  # the highest ids handed out, this group's included
    event_id: int = 0


def identities(items: Sequence[Ingest]) -> list[list[str]]:
    """The dedup key of every event of every item."""
    return [[dedup_key(i.receipt.source, e.event_type, e.named_by) for e in i.events] for i in items]


def plan(items: Sequence[Ingest], keys: list[list[str]], known: dict[str, dict[bytes, int]], receipt_id: int,
         event_id: int, committed: Committed) -> Planned:
    """The group's rows and outcomes; `known` is updated with what the group adds, and
    `committed` learns the plugins made due, the newest event and how many were stored."""
    out = Planned()
    written = time.monotonic()  # the receipts' latency: from receipt to this group's write
    for item, event_keys in zip(items, keys, strict=True):
        receipt = item.receipt
        routes = item.routes
        outcomes: list[Outcome] = []
        this_receipt: int | None = None
        received_us = round(receipt.received_at * US)
        for index, (event, key) in enumerate(zip(item.events, event_keys, strict=True)):
            fingerprint = event.fingerprint
            versions = known.get(key)
            if versions is None:
                first, status = None, event.status
            elif fingerprint in versions:
                outcomes.append(Outcome(versions[fingerprint], "duplicate", key))
                continue
            else:  # the identity is stored with other content: no retry, a second version, kept
                first, status = next(iter(versions.values())), "conflict"
            if this_receipt is None:
                receipt_id += 1
                this_receipt = receipt_id
                out.receipts.append((this_receipt, receipt.request_id, receipt.source, received_us,
                                     receipt.remote_addr, receipt.attempt, orjson.dumps(receipt.headers), receipt.body,
                                     None if receipt.sent_at is None else round(receipt.sent_at * US),
                                     None if receipt.arrived is None else max(0, round((written - receipt.arrived)
                                                                                       * US))))
            event_id += 1
            if versions is None:
                known[key] = {fingerprint: event_id}
            else:
                versions[fingerprint] = event_id
            out.events.append((event_id, this_receipt, receipt.source, receipt.scheme, event.event_type,
                               event.entity_id, key, fingerprint, status, first, event.account, event.symbol,
                               received_us, event.payload, event.quarantine_reason))
            if routes:
                for plugin in routes[index]:
                    out.deliveries.append((event_id, plugin, receipt.source, event.entity_id, received_us))
                    committed.plugins.add(plugin)
            outcomes.append(Outcome(event_id, status, key, first))
        out.results.append(outcomes)
    out.receipt_id, out.event_id = receipt_id, event_id
    if out.events:
        committed.newest_event = event_id
        committed.stored = len(out.events)
    return out
