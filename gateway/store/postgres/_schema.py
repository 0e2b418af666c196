"""PostgreSQL schema and its migrations, applied under an advisory lock so that instances
starting together migrate once. Times are Unix microseconds (bigint), as in the SQLite store,
so that a store moves between the two unchanged."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of its own or one lent by the pool: every helper takes either.
Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

MIGRATE_LOCK = 0x6761746577617901  # pg_advisory_lock key: "gateway" + 1

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: everything the SQLite store has at its schema 8.
    (
    """CREATE TABLE id_counters (
        name        text PRIMARY KEY,      -- events, receipts: the highest id handed out
        value       bigint NOT NULL        -- updated in the ingest transaction: ids in commit order
    )""",
    "INSERT INTO id_counters (name, value) VALUES ('events', 0), ('receipts', 0)",
    """CREATE TABLE receipts (
        id          bigint PRIMARY KEY,
        request_id  text NOT NULL,
        source      text NOT NULL,
        received_at bigint NOT NULL,
        remote_addr text,
        attempt     bigint,
        headers     bytea NOT NULL,        -- JSON [[name, value], ...], credentials removed
        body        bytea NOT NULL         -- the raw request body, byte for byte
    )""",
    """CREATE TABLE events (
        id          bigint PRIMARY KEY,
        receipt_id  bigint NOT NULL REFERENCES receipts(id),
        source      text NOT NULL,
        scheme      text NOT NULL,
        event_type  text NOT NULL,
        entity_id   text NOT NULL,
        dedup_key   text NOT NULL,
        fingerprint bytea,
        status      text NOT NULL,
        conflicts_with bigint,
        account     text,
        symbol      text,
        received_at bigint NOT NULL,
        payload     bytea,
        quarantine_reason text
    )""",
    "CREATE UNIQUE INDEX events_identity ON events(dedup_key, fingerprint)",
    "CREATE INDEX events_source ON events(source, id)",
    "CREATE INDEX events_receipt ON events(receipt_id)",
    "CREATE INDEX events_type ON events(event_type, id)",
    "CREATE INDEX events_account ON events(account, id) WHERE account IS NOT NULL",
    "CREATE INDEX events_symbol ON events(symbol, id) WHERE symbol IS NOT NULL",
    "CREATE INDEX events_received ON events(received_at)",
    "CREATE INDEX events_unidentified ON events(id) WHERE fingerprint IS NULL",
    """CREATE TABLE deliveries (
        id              bigserial PRIMARY KEY,
        event_id        bigint NOT NULL REFERENCES events(id),
        plugin          text NOT NULL,
        source          text NOT NULL,
        entity_id       text NOT NULL,
        status          text NOT NULL,     -- pending | delivered | dead
        attempts        integer NOT NULL DEFAULT 0,
        next_attempt_at bigint NOT NULL,
        created_at      bigint NOT NULL,
        updated_at      bigint NOT NULL,
        last_error      text,
        claim_id        bigint,
        lease_until     bigint NOT NULL DEFAULT 0,
        UNIQUE (plugin, event_id)
    )""",
    "CREATE INDEX deliveries_pending ON deliveries(plugin, id) WHERE status = 'pending'",
    "CREATE INDEX deliveries_order ON deliveries(plugin, source, entity_id, id) WHERE status = 'pending'",
    "CREATE INDEX deliveries_status ON deliveries(plugin, status, id)",
    "CREATE INDEX deliveries_event ON deliveries(event_id)",
    # At most one claimed delivery per (plugin, entity), whatever a claim query gets wrong: the
    # order per entity is enforced by the database itself (procrastinate's ordered lock mode).
    "CREATE UNIQUE INDEX deliveries_one_claim ON deliveries(plugin, source, entity_id)"
    " WHERE claim_id IS NOT NULL AND status = 'pending'",
    """CREATE TABLE rejections (
        id          bigserial PRIMARY KEY,
        received_at bigint NOT NULL,
        request_id  text NOT NULL,
        bucket      text NOT NULL,
        source      text NOT NULL,
        code        text NOT NULL,
        detail      text NOT NULL,
        remote_addr text,
        header_names text NOT NULL,
        body_size   bigint,
        body_sha256 text
    )""",
    "CREATE INDEX rejections_bucket ON rejections(bucket, id)",
    "CREATE INDEX rejections_code ON rejections(code, id)",
    "CREATE TABLE heartbeat (id integer PRIMARY KEY CHECK (id = 1), at bigint NOT NULL)",
    """CREATE TABLE job_leases (
        name        text PRIMARY KEY,
        holder      text NOT NULL,
        until       bigint NOT NULL
    )""",
    """CREATE TABLE shared_keys (
        name        text PRIMARY KEY,      -- api: signs tokens, cursors and sessions on every instance
        value       bytea NOT NULL
    )""",
    "CREATE TABLE schema_version (version integer NOT NULL)",
    ),
    # 2: the position ledger (issue 17), as the SQLite store's schema 9.
    (
    """CREATE TABLE ledger_state (
        id          integer PRIMARY KEY CHECK (id = 1),
        checkpoint  bigint NOT NULL,
        orphans     smallint NOT NULL
    )""",
    "INSERT INTO ledger_state (id, checkpoint, orphans) VALUES (1, 0, 0)",
    """CREATE TABLE ledger_entries (
        event_id    bigint PRIMARY KEY,
        source      text NOT NULL,
        account     text NOT NULL,
        position_id text NOT NULL,
        conflict    smallint NOT NULL,
        projected_at bigint NOT NULL,
        record      bytea NOT NULL
    )""",
    "CREATE INDEX ledger_entries_position ON ledger_entries(source, account, position_id)",
    """CREATE TABLE positions (
        id          bigserial PRIMARY KEY,
        source      text NOT NULL,
        account     text NOT NULL,
        position_id text NOT NULL,
        state       text NOT NULL,
        symbol      text,
        opened_at   text,
        updated_at  bigint NOT NULL,
        document    bytea NOT NULL,
        UNIQUE (source, account, position_id)
    )""",
    "CREATE INDEX positions_state ON positions(state, id)",
    "CREATE INDEX positions_account ON positions(account, id)",
    """CREATE TABLE anomalies (
        id          bigserial PRIMARY KEY,
        source      text NOT NULL,
        account     text NOT NULL,
        position_id text NOT NULL,
        kind        text NOT NULL,
        event_ids   text NOT NULL,
        detail      text NOT NULL,
        raised_at   bigint NOT NULL,
        resolved_at bigint,
        acked_at    bigint,
        note        text
    )""",
    "CREATE INDEX anomalies_position ON anomalies(source, account, position_id, id)",
    "CREATE INDEX anomalies_open ON anomalies(id) WHERE resolved_at IS NULL AND acked_at IS NULL",
    """CREATE TABLE position_counts (
        source      text NOT NULL,
        state       text NOT NULL,
        n           bigint NOT NULL,
        PRIMARY KEY (source, state)
    )""",
    ),
    # 3: as the SQLite store's schema 10.
    (
    "CREATE INDEX events_entity ON events(entity_id, id)",
    "ALTER TABLE receipts ADD COLUMN sent_at bigint",
    "ALTER TABLE receipts ADD COLUMN latency_us bigint",
    "CREATE INDEX receipts_received ON receipts(received_at)",
    ),
)


async def migrate(conn: Conn) -> int:
    """Bring the schema to the newest version, once across instances; returns it."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        current = (await conn.fetchval("SELECT max(version) FROM schema_version") or 0) if exists else 0
        if current > len(MIGRATIONS):
            raise RuntimeError(f"the store has schema version {current}; this gateway knows up to {len(MIGRATIONS)}")
        for version in range(current + 1, len(MIGRATIONS) + 1):
            async with conn.transaction():
                for statement in MIGRATIONS[version - 1]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK)
    return len(MIGRATIONS)


async def version(conn: Conn) -> int | None:
    """The schema version, or None when the database holds no event store."""
    if not await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
        return None
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
