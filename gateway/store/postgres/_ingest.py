"""One group of ingests in one PostgreSQL transaction.

The transaction first locks the id counters (`SELECT ... FOR UPDATE`, both rows in one
order): a group that commits later always holds higher ids, because the next group's lock
waits for this one's commit. So ids become visible in id order, and a reader that has seen id N
has seen every id below it (streams, cursors and plugin runners scan by id and must never skip
one; docs/architecture.md). The dedup lookup runs after the lock, in READ COMMITTED: it sees
every version another instance committed before, so dedup and conflicts are exact across
instances. Then one statement writes the group: an `unnest` insert per table, the counters and
the notification, in one round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.model import Outcome
from gateway.store.committer import Committed, Ingest
from gateway.store.group import identities, plan
from gateway.store.postgres._schema import Conn

US = 1_000_000  # time columns: Unix microseconds

LOCK_COUNTERS = "SELECT name, value FROM id_counters WHERE name IN ('events', 'receipts') ORDER BY name FOR UPDATE"
_EXISTING = ("SELECT dedup_key, fingerprint, id FROM events WHERE dedup_key = ANY($1::text[])"
             " AND fingerprint IS NOT NULL ORDER BY id")
# Everything a group writes, and its notification, in one statement (one round trip): the
# inserts, the counters, and pg_notify, which is delivered at the commit. Foreign keys between
# the rows of one statement are checked at its end.
_WRITE_GROUP = """
    WITH receipt_rows AS (
        INSERT INTO receipts (id, request_id, source, received_at, remote_addr, attempt, headers, body)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[],
                             $7::bytea[], $8::bytea[])
    ), event_rows AS (
        INSERT INTO events (id, receipt_id, source, scheme, event_type, entity_id, dedup_key, fingerprint, status,
                            conflicts_with, account, symbol, received_at, payload, quarantine_reason)
        SELECT * FROM unnest($9::bigint[], $10::bigint[], $11::text[], $12::text[], $13::text[], $14::text[],
                             $15::text[], $16::bytea[], $17::text[], $18::bigint[], $19::text[], $20::text[],
                             $21::bigint[], $22::bytea[], $23::text[])
    ), delivery_rows AS (
        INSERT INTO deliveries (event_id, plugin, source, entity_id, status, attempts, next_attempt_at, created_at,
                                updated_at)
        SELECT e, p, s, n, 'pending', 0, t, t, t FROM unnest($24::bigint[], $25::text[], $26::text[], $27::text[],
                                                             $28::bigint[]) AS u(e, p, s, n, t)
    ), counters AS (
        UPDATE id_counters SET value = CASE name WHEN 'events' THEN $29::bigint ELSE $30::bigint END
        WHERE name IN ('events', 'receipts')
    )
    SELECT pg_notify($31, $32)
"""


# The optimistic path: one lookup without a transaction (the counters with the identities, in
# one snapshot), then one statement that writes only if the counters are unchanged, which it
# checks under their lock. Unchanged counters mean no other instance wrote an event since the
# lookup, so the lookup is still true; the lock is held to the statement's commit, so ids still
# become visible in id order. Changed counters: nothing written, look up again.
_LOOKUP = """
    SELECT c.events, c.receipts, e.dedup_key, e.fingerprint, e.id
    FROM (SELECT (SELECT value FROM id_counters WHERE name = 'events') AS events,
                 (SELECT value FROM id_counters WHERE name = 'receipts') AS receipts) AS c
    LEFT JOIN events e ON e.dedup_key = ANY($1::text[]) AND e.fingerprint IS NOT NULL
    ORDER BY e.id
"""
_WRITE_IF_UNCHANGED = """
    WITH locked AS (
        SELECT name, value FROM id_counters WHERE name IN ('events', 'receipts') ORDER BY name FOR UPDATE
    ), unchanged AS (
        SELECT (SELECT value FROM locked WHERE name = 'events') = $33::bigint
               AND (SELECT value FROM locked WHERE name = 'receipts') = $34::bigint AS ok
    ), receipt_rows AS (
        INSERT INTO receipts (id, request_id, source, received_at, remote_addr, attempt, headers, body)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[],
                             $7::bytea[], $8::bytea[]) WHERE (SELECT ok FROM unchanged)
    ), event_rows AS (
        INSERT INTO events (id, receipt_id, source, scheme, event_type, entity_id, dedup_key, fingerprint, status,
                            conflicts_with, account, symbol, received_at, payload, quarantine_reason)
        SELECT * FROM unnest($9::bigint[], $10::bigint[], $11::text[], $12::text[], $13::text[], $14::text[],
                             $15::text[], $16::bytea[], $17::text[], $18::bigint[], $19::text[], $20::text[],
                             $21::bigint[], $22::bytea[], $23::text[]) WHERE (SELECT ok FROM unchanged)
    ), delivery_rows AS (
        INSERT INTO deliveries (event_id, plugin, source, entity_id, status, attempts, next_attempt_at, created_at,
                                updated_at)
        SELECT e, p, s, n, 'pending', 0, t, t, t FROM unnest($24::bigint[], $25::text[], $26::text[], $27::text[],
                                                             $28::bigint[]) AS u(e, p, s, n, t)
        WHERE (SELECT ok FROM unchanged)
    ), counters AS (
        UPDATE id_counters SET value = CASE name WHEN 'events' THEN $29::bigint ELSE $30::bigint END
        WHERE name IN ('events', 'receipts') AND (SELECT ok FROM unchanged)
    )
    SELECT ok, CASE WHEN ok THEN pg_notify($31, $32) END FROM unchanged
"""


async def store_events_at_once(conn: Conn, items: list[Ingest], channel: str,
                               note: Callable[[Committed], str]) -> tuple[Committed, list[list[Outcome]]] | None:
    """The group in two round trips and no explicit transaction (the write commits by itself);
    None when another instance wrote in between: nothing was written, try again."""
    keys = identities(items)
    found = await conn.fetch(_LOOKUP, sorted({k for ks in keys for k in ks}))
    events_seen, receipts_seen = int(found[0][0]), int(found[0][1])
    known: dict[str, dict[bytes, int]] = {}
    for row in found:
        if row[2] is not None:
            known.setdefault(row[2], {})[bytes(row[3])] = row[4]
    committed = Committed()
    rows = plan(items, keys, known, receipts_seen, events_seen, committed)
    if not rows.receipts:  # duplicates only: the versions they name are committed
        return committed, rows.results
    written = await conn.fetchrow(_WRITE_IF_UNCHANGED, *_columns(rows.receipts, 8), *_columns(rows.events, 15),
                                  *_columns(rows.deliveries, 5), rows.event_id, rows.receipt_id, channel,
                                  note(committed), events_seen, receipts_seen)
    return (committed, rows.results) if written is not None and written[0] else None


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


async def store_events(conn: Conn, items: list[Ingest], committed: Committed, channel: str,
                       note: Callable[[Committed], str]) -> list[list[Outcome]]:
    """Inside the group's transaction: lock the counters, look the identities up, write. The
    outcomes of each item; `note(committed)` is the notification sent on `channel`."""
    counters = {row["name"]: row["value"] for row in await conn.fetch(LOCK_COUNTERS)}
    keys = identities(items)
    known: dict[str, dict[bytes, int]] = {}  # identity -> {fingerprint: id}, the first version first
    for key, fingerprint, stored_id in await conn.fetch(_EXISTING, sorted({k for ks in keys for k in ks})):
        known.setdefault(key, {})[bytes(fingerprint)] = stored_id
    rows = plan(items, keys, known, int(counters["receipts"]), int(counters["events"]), committed)
    if rows.receipts:
        await conn.execute(_WRITE_GROUP, *_columns(rows.receipts, 8), *_columns(rows.events, 15),
                           *_columns(rows.deliveries, 5), rows.event_id, rows.receipt_id, channel, note(committed))
    return rows.results
