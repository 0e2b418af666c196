"""SQLite schema and its migrations. Each entry moves the schema up one version."""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: receipts (one row per authenticated request that brought a new event) and events.
    (
    """CREATE TABLE receipts (
        id          INTEGER PRIMARY KEY,
        request_id  TEXT NOT NULL,
        source      TEXT NOT NULL,
        received_at INTEGER NOT NULL,      -- Unix time, microseconds
        remote_addr TEXT,
        attempt     INTEGER,               -- the sender's own delivery attempt counter
        headers     BLOB NOT NULL,         -- JSON [[name, value], ...], credentials removed
        body        BLOB NOT NULL          -- the raw request body, byte for byte
    )""",
    """CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        receipt_id  INTEGER NOT NULL REFERENCES receipts(id),
        source      TEXT NOT NULL,
        scheme      TEXT NOT NULL,
        event_type  TEXT NOT NULL,         -- '' when quarantined without a readable type
        entity_id   TEXT NOT NULL,
        dedup_key   TEXT NOT NULL UNIQUE,  -- source:event_type:entity_id, kept forever
        status      TEXT NOT NULL,         -- stored | quarantined
        account     TEXT,
        symbol      TEXT,
        received_at INTEGER NOT NULL,
        payload     BLOB,                  -- this event's JSON; NULL: the receipt body is the event
        quarantine_reason TEXT
    )""",
    "CREATE INDEX events_source ON events(source, id)",
    "CREATE INDEX events_receipt ON events(receipt_id)",
    ),
    # 2: the outbox. One row per (plugin, event), written in the event's own transaction.
    (
    """CREATE TABLE deliveries (
        id              INTEGER PRIMARY KEY,
        event_id        INTEGER NOT NULL REFERENCES events(id),
        plugin          TEXT NOT NULL,
        source          TEXT NOT NULL,     -- with entity_id: the ordering key per plugin
        entity_id       TEXT NOT NULL,
        status          TEXT NOT NULL,     -- pending | delivered | dead
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,  -- Unix time, microseconds
        created_at      INTEGER NOT NULL,  -- the event's receive time
        updated_at      INTEGER NOT NULL,
        last_error      TEXT,
        UNIQUE (plugin, event_id)          -- replay reuses the row: never a second copy
    )""",
    "CREATE INDEX deliveries_pending ON deliveries(plugin, id) WHERE status = 'pending'",
    "CREATE INDEX deliveries_order ON deliveries(plugin, source, entity_id, id) WHERE status = 'pending'",
    "CREATE INDEX deliveries_status ON deliveries(plugin, status, id)",
    "CREATE INDEX deliveries_event ON deliveries(event_id)",
    ),
    # 3: what the read API filters on, and the bounded log of rejected requests.
    (
    "CREATE INDEX events_type ON events(event_type, id)",
    "CREATE INDEX events_account ON events(account, id) WHERE account IS NOT NULL",
    "CREATE INDEX events_symbol ON events(symbol, id) WHERE symbol IS NOT NULL",
    "CREATE INDEX events_received ON events(received_at)",
    """CREATE TABLE rejections (
        id          INTEGER PRIMARY KEY,
        received_at INTEGER NOT NULL,      -- Unix time, microseconds
        request_id  TEXT NOT NULL,
        bucket      TEXT NOT NULL,         -- the source, or '?' for unknown names: bounds the table
        source      TEXT NOT NULL,         -- the name as requested (truncated)
        code        TEXT NOT NULL,
        detail      TEXT NOT NULL,
        remote_addr TEXT,
        header_names TEXT NOT NULL,        -- JSON list; never values, so never a credential
        body_size   INTEGER,
        body_sha256 TEXT                   -- never the body of an unauthenticated request
    )""",
    "CREATE INDEX rejections_bucket ON rejections(bucket, id)",
    "CREATE INDEX rejections_code ON rejections(code, id)",
    ),
    # 4: one row that /readyz rewrites to prove the store is writable.
    (
    "CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL)",
    ),
    # 5: the heartbeat writes 64 KiB, about one large batch: on a nearly full disk a one-page
    # heartbeat still fits into the WAL while ingest no longer does, and /readyz would lie.
    (
    "ALTER TABLE heartbeat ADD COLUMN probe BLOB",
    ),
    # 6: claims. A runner claims due deliveries under a lease (Unix time, microseconds); while it
    # holds, nobody else gets them, and only the holder's claim id may record their outcome.
    (
    "ALTER TABLE deliveries ADD COLUMN claim_id INTEGER",
    "ALTER TABLE deliveries ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0",
    ),
    # 7: identities (issue 12). A key may now hold several versions of one occurrence: unique on
    # (dedup_key, fingerprint), a `conflict` pointing at the first version. Ids are never reused
    # (AUTOINCREMENT: sqlite_sequence keeps the highest id ever handed out, across pruning).
    # SQLite can neither drop an inline UNIQUE nor add AUTOINCREMENT: the tables are rebuilt.
    # `fingerprint` is NULL on the rows moved over until the gateway recomputes their
    # identities from the bytes it kept (`SQLiteStore.reidentify`, at the first start).
    (
    """CREATE TABLE receipts_v7 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id  TEXT NOT NULL,
        source      TEXT NOT NULL,
        received_at INTEGER NOT NULL,      -- Unix time, microseconds
        remote_addr TEXT,
        attempt     INTEGER,               -- the sender's own delivery attempt counter
        headers     BLOB NOT NULL,         -- JSON [[name, value], ...], credentials removed
        body        BLOB NOT NULL          -- the raw request body, byte for byte
    )""",
    "INSERT INTO receipts_v7 SELECT id, request_id, source, received_at, remote_addr, attempt, headers, body"
    " FROM receipts",
    "DROP TABLE receipts",
    "ALTER TABLE receipts_v7 RENAME TO receipts",
    """CREATE TABLE events_v7 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        receipt_id  INTEGER NOT NULL REFERENCES receipts(id),
        source      TEXT NOT NULL,
        scheme      TEXT NOT NULL,
        event_type  TEXT NOT NULL,         -- '' when quarantined without a readable type
        entity_id   TEXT NOT NULL,         -- the business entity: orders delivery
        dedup_key   TEXT NOT NULL,         -- the identity of one occurrence, kept forever
        fingerprint BLOB,                  -- SHA-256 of the canonical content; NULL: not yet recomputed
        status      TEXT NOT NULL,         -- stored | quarantined | conflict
        conflicts_with INTEGER,            -- a conflict: the first stored version's id
        account     TEXT,
        symbol      TEXT,
        received_at INTEGER NOT NULL,
        payload     BLOB,                  -- this event's JSON; NULL: the receipt body is the event
        quarantine_reason TEXT
    )""",
    "INSERT INTO events_v7 (id, receipt_id, source, scheme, event_type, entity_id, dedup_key, status, account,"
    " symbol, received_at, payload, quarantine_reason) SELECT id, receipt_id, source, scheme, event_type,"
    " entity_id, dedup_key, status, account, symbol, received_at, payload, quarantine_reason FROM events",
    "DROP TABLE events",
    "ALTER TABLE events_v7 RENAME TO events",
    "CREATE UNIQUE INDEX events_identity ON events(dedup_key, fingerprint)",
    "CREATE INDEX events_source ON events(source, id)",
    "CREATE INDEX events_receipt ON events(receipt_id)",
    "CREATE INDEX events_type ON events(event_type, id)",
    "CREATE INDEX events_account ON events(account, id) WHERE account IS NOT NULL",
    "CREATE INDEX events_symbol ON events(symbol, id) WHERE symbol IS NOT NULL",
    "CREATE INDEX events_received ON events(received_at)",
    "CREATE INDEX events_unidentified ON events(id) WHERE fingerprint IS NULL",
    """CREATE TABLE deliveries_v7 (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id        INTEGER NOT NULL REFERENCES events(id),
        plugin          TEXT NOT NULL,
        source          TEXT NOT NULL,     -- with entity_id: the ordering key per plugin
        entity_id       TEXT NOT NULL,
        status          TEXT NOT NULL,     -- pending | delivered | dead
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,  -- Unix time, microseconds
        created_at      INTEGER NOT NULL,  -- the event's receive time
        updated_at      INTEGER NOT NULL,
        last_error      TEXT,
        claim_id        INTEGER,
        lease_until     INTEGER NOT NULL DEFAULT 0,
        UNIQUE (plugin, event_id)          -- replay reuses the row: never a second copy
    )""",
    "INSERT INTO deliveries_v7 SELECT id, event_id, plugin, source, entity_id, status, attempts, next_attempt_at,"
    " created_at, updated_at, last_error, claim_id, lease_until FROM deliveries",
    "DROP TABLE deliveries",
    "ALTER TABLE deliveries_v7 RENAME TO deliveries",
    "CREATE INDEX deliveries_pending ON deliveries(plugin, id) WHERE status = 'pending'",
    "CREATE INDEX deliveries_order ON deliveries(plugin, source, entity_id, id) WHERE status = 'pending'",
    "CREATE INDEX deliveries_status ON deliveries(plugin, status, id)",
    "CREATE INDEX deliveries_event ON deliveries(event_id)",
    ),
    # 8: leases on background jobs (retention): one process at a time runs each, whoever holds it.
    (
    """CREATE TABLE job_leases (
        name        TEXT PRIMARY KEY,
        holder      TEXT NOT NULL,         -- host:pid:random of the process holding it
        until       INTEGER NOT NULL       -- Unix time, microseconds
    )""",
    ),
    # 9: the position ledger (issue 17), a projection of the events kept by gateway.projector.
    (
    """CREATE TABLE ledger_state (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        checkpoint  INTEGER NOT NULL,      -- the highest event id projected
        orphans     INTEGER NOT NULL       -- 1 after a rebuild: fold positions whose events are pruned
    )""",
    "INSERT INTO ledger_state (id, checkpoint, orphans) VALUES (1, 0, 0)",
    """CREATE TABLE ledger_entries (
        event_id    INTEGER PRIMARY KEY,   -- no foreign key: an entry outlives its event's pruning
        source      TEXT NOT NULL,
        account     TEXT NOT NULL,
        position_id TEXT NOT NULL,
        conflict    INTEGER NOT NULL,      -- the event is a `conflict` (another version)
        projected_at INTEGER NOT NULL,     -- Unix time, microseconds: the ledger's lag is measured on it
        record      BLOB NOT NULL          -- the normalized event, JSON
    )""",
    "CREATE INDEX ledger_entries_position ON ledger_entries(source, account, position_id)",
    """CREATE TABLE positions (
        id          INTEGER PRIMARY KEY,   -- in the order positions were first seen: the listing's keyset
        source      TEXT NOT NULL,
        account     TEXT NOT NULL,
        position_id TEXT NOT NULL,
        state       TEXT NOT NULL,         -- open | partially_closed | closed
        symbol      TEXT,
        opened_at   TEXT,                  -- ISO 8601 UTC: stale_open is looked for on it
        updated_at  INTEGER NOT NULL,
        document    BLOB NOT NULL,         -- the folded position, JSON
        UNIQUE (source, account, position_id)
    )""",
    "CREATE INDEX positions_state ON positions(state, id)",
    "CREATE INDEX positions_account ON positions(account, id)",
    """CREATE TABLE anomalies (
        id          INTEGER PRIMARY KEY,
        source      TEXT NOT NULL,
        account     TEXT NOT NULL,
        position_id TEXT NOT NULL,
        kind        TEXT NOT NULL,
        event_ids   TEXT NOT NULL,         -- JSON [id, ...]
        detail      TEXT NOT NULL,
        raised_at   INTEGER NOT NULL,
        resolved_at INTEGER,
        acked_at    INTEGER,
        note        TEXT
    )""",
    "CREATE INDEX anomalies_position ON anomalies(source, account, position_id, id)",
    "CREATE INDEX anomalies_open ON anomalies(id) WHERE resolved_at IS NULL AND acked_at IS NULL",
    """CREATE TABLE position_counts (
        source      TEXT NOT NULL,
        state       TEXT NOT NULL,
        n           INTEGER NOT NULL,
        PRIMARY KEY (source, state)
    )""",
    ),
    # 10: events found by their business entity (the console's search, `entity=` on /events).
    (
    "CREATE INDEX events_entity ON events(entity_id, id)",
    # what the console's overview reads per receipt, for every process and across restarts
    "ALTER TABLE receipts ADD COLUMN sent_at INTEGER",  # the sender's timestamp (us), when its scheme signs one
    "ALTER TABLE receipts ADD COLUMN latency_us INTEGER",  # from receipt to the write of its group
    "CREATE INDEX receipts_received ON receipts(received_at)",
    ),
)


class SchemaTooNew(Exception):
    pass


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns it. Idempotent."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    current = row[0] or 0
    if current > len(MIGRATIONS):
        raise SchemaTooNew(
            f"the store has schema version {current}; this gateway knows up to {len(MIGRATIONS)}"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process (a worker, a second gateway) may have applied it while we waited.
            if (conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0) >= version:
                conn.execute("COMMIT")
                continue
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
