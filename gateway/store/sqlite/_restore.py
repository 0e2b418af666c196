"""Restoring a `gateway backup` file in place of the store, without ever handing out an id
twice: ids issued after the backup was taken (to plugins as `event.id` and `webhook-id`, to
streams as resume points) must stay issued. The restored store's id sequences start above the
highest of (the backup's, the store it replaces, `id_floor`)."""

from __future__ import annotations

import shutil
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from gateway.store.sqlite._writer import connect

TABLES = ("receipts", "events", "deliveries")


@dataclass(frozen=True, slots=True)
class Restored:
    ids: dict[str, int]  # the highest id handed out so far, per table: the next one is above
    replaced: Path | None  # where the store it replaced was moved to


def highest_ids(path: Path) -> dict[str, int]:
    """The highest id each table ever handed out (AUTOINCREMENT's sequence, else the largest
    id there: stores older than schema 7 reused pruned ids)."""
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        found = {}
        for table in TABLES:
            row = db.execute(f"SELECT max(id) FROM {table}").fetchone()
            found[table] = row[0] or 0
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
            for name, seq in db.execute("SELECT name, seq FROM sqlite_sequence"):
                if name in found:
                    found[name] = max(found[name], seq)
        return found


def restore(store: Path, backup: Path, id_floor: int = 0, synchronous: str = "FULL") -> Restored:
    """Put `backup` in place of the store file (which is moved aside, never deleted); the
    gateway must be stopped. Raises FileNotFoundError or sqlite3.DatabaseError for a backup
    that is not a store."""
    floor = highest_ids(backup)  # also proves it is a store, before anything is touched
    if store.exists():
        for table, seq in highest_ids(store).items():
            floor[table] = max(floor[table], seq)
    staged = store.with_name(store.name + ".restoring")
    staged.unlink(missing_ok=True)
    shutil.copyfile(backup, staged)
    db = connect(staged, synchronous, 5000)  # migrated to this release's schema
    try:
        db.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            floor[table] = max(floor[table], id_floor)
            db.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
            db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, floor[table]))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    replaced = None
    if store.exists():
        replaced = store.with_name(f"{store.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
        store.rename(replaced)
        for suffix in ("-wal", "-shm"):
            side = store.with_name(store.name + suffix)
            if side.exists():
                side.rename(replaced.with_name(replaced.name + suffix))
    for suffix in ("-wal", "-shm"):
        store.with_name(staged.name + suffix).unlink(missing_ok=True)
    staged.rename(store)
    return Restored(ids=floor, replaced=replaced)
