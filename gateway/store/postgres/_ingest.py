"""One group of ingests on PostgreSQL (docs/architecture.md, "PostgreSQL").

Every write of a group holds the id counters' row locks (`FOR UPDATE`, both rows in one order)
to its commit: a group that commits later always has higher ids, so ids become visible in id
order, and a reader that has seen id N has seen every id below it. One statement writes a whole
group (an `unnest` insert per table, the counters and the notification), and only if the
counters are still the ones its identity lookup saw: then no other instance wrote an event
since, and dedup and conflicts are exact across instances. Optimistically that is two round
trips and no explicit transaction; after lost races, a transaction that locks first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.model import Outcome
from gateway.store.committer import Committed, Ingest
from gateway.store.group import Planned, identities, plan
from gateway.store.postgres._params import text
from gateway.store.postgres._schema import Conn

US = 1_000_000  # time columns: Unix microseconds

LOCK_COUNTERS = "SELECT name, value FROM id_counters WHERE name IN ('events', 'receipts') ORDER BY name FOR UPDATE"
# The optimistic path: one lookup without a transaction (the counters with the identities, in
# one snapshot), then one statement that writes only if the counters are unchanged, which it
# checks under their lock. Unchanged counters mean no other instance wrote an event since the
# lookup, so the lookup is still true; the lock is held to the statement's commit, so ids still
# become visible in id order. Changed counters: nothing written, look up again.
#
# The identities are looked up one key at a time (a lateral subquery that OFFSET 0 keeps from
# being flattened into a join), so the plan is an index probe per key whatever the planner
# believes about the table. `dedup_key = ANY($1)` was planned as a sequential scan while the
# table had no statistics (a new store, until autovacuum's first ANALYZE), and asyncpg's
# prepared statement kept that plan: the lookup grew by 0.25 ms per 1,000 events.
_LOOKUP = """
    SELECT c.events, c.receipts, e.dedup_key, e.fingerprint, e.id
    FROM (SELECT (SELECT value FROM id_counters WHERE name = 'events') AS events,
                 (SELECT value FROM id_counters WHERE name = 'receipts') AS receipts) AS c
    LEFT JOIN (unnest($1::text[]) AS k(key)
               CROSS JOIN LATERAL (SELECT dedup_key, fingerprint, id FROM events
                                   WHERE dedup_key = k.key AND fingerprint IS NOT NULL OFFSET 0) AS e) ON true
    ORDER BY e.id
"""
_WRITE_IF_UNCHANGED = """
    WITH locked AS (
        SELECT name, value FROM id_counters WHERE name IN ('events', 'receipts') ORDER BY name FOR UPDATE
    ), unchanged AS (
        SELECT (SELECT value FROM locked WHERE name = 'events') = $33::bigint
               AND (SELECT value FROM locked WHERE name = 'receipts') = $34::bigint AS ok
    ), receipt_rows AS (
        INSERT INTO receipts (id, request_id, source, received_at, remote_addr, attempt, headers, body, sent_at,
                              latency_us)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[],
                             $7::bytea[], $8::bytea[], $35::bigint[], $36::bigint[]) WHERE (SELECT ok FROM unchanged)
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


async def _lookup(conn: Conn, items: list[Ingest]) -> tuple[list[list[str]], dict[str, dict[bytes, int]], int, int]:
    """The group's identities, their stored versions (fingerprint -> id, the first version
    first), and the id counters, all in one snapshot."""
    keys = identities(items)
    stored_as = {text(k): k for ks in keys for k in ks}  # the key as stored -> as the group names it
    found = await conn.fetch(_LOOKUP, sorted(stored_as))
    known: dict[str, dict[bytes, int]] = {}
    for row in found:
        if row[2] is not None:
            known.setdefault(stored_as.get(row[2], row[2]), {})[bytes(row[3])] = row[4]
    return keys, known, int(found[0][0]), int(found[0][1])


async def _write(conn: Conn, rows: Planned, channel: str, notice: str, events_seen: int,
                 receipts_seen: int) -> bool:
    """Write the group's rows if the counters are still the ones seen; whether it did."""
    receipts = _columns(rows.receipts, 10)  # the last two (sent_at, latency_us) are $35 and $36
    events, deliveries = _columns(rows.events, 15), _columns(rows.deliveries, 5)
    for column in (events[4], events[5], events[6], events[10], events[11], events[14], deliveries[3]):
        column[:] = [text(v) for v in column]  # the sender's text: event type, entity, key, account, symbol
    written = await conn.fetchrow(_WRITE_IF_UNCHANGED, *receipts[:8], *events, *deliveries, rows.event_id,
                                  rows.receipt_id, channel, notice, events_seen, receipts_seen, *receipts[8:])
    return written is not None and bool(written[0])


async def store_events_at_once(conn: Conn, items: list[Ingest], channel: str,
                               note: Callable[[Committed], str]) -> tuple[Committed, list[list[Outcome]]] | None:
    """The group in two round trips and no explicit transaction (the write commits by itself);
    None when another instance wrote in between: nothing was written, try again."""
    keys, known, events_seen, receipts_seen = await _lookup(conn, items)
    committed = Committed()
    rows = plan(items, keys, known, receipts_seen, events_seen, committed)
    if not rows.receipts:  # duplicates only: the versions they name are committed
        return committed, rows.results
    written = await _write(conn, rows, channel, note(committed), events_seen, receipts_seen)
    return (committed, rows.results) if written else None


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


async def store_events(conn: Conn, items: list[Ingest], committed: Committed, channel: str,
                       note: Callable[[Committed], str]) -> list[list[Outcome]]:
    """Inside a transaction: lock the counters, look the identities up, write (the counters
    cannot change under the lock, so the write always happens). The outcomes of each item;
    `note(committed)` is the notification sent on `channel`."""
    await conn.fetch(LOCK_COUNTERS)
    keys, known, events_seen, receipts_seen = await _lookup(conn, items)
    rows = plan(items, keys, known, receipts_seen, events_seen, committed)
    if rows.receipts and not await _write(conn, rows, channel, note(committed), events_seen, receipts_seen):
        raise RuntimeError("the id counters changed while this transaction held their lock")
    return rows.results
