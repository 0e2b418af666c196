"""The SQLite transaction: which groups wait for the disk (SQLite specifics, so on the file)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway.store.committer import Ingest, Op, needs_sync
from gateway.store.sqlite._writer import SQLiteTransactor
from tests.store.conftest import event, receipt


def _synchronous(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA synchronous").fetchone()[0])  # 1 NORMAL, 2 FULL


def test_only_bookkeeping_groups_commit_without_waiting_for_the_disk(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    writer = SQLiteTransactor(tmp_path / "x.db", "FULL", 5000)
    try:
        def op(durable: bool) -> Op[sqlite3.Connection]:
            return Op(_synchronous, loop.create_future(), durable=durable)

        ingest = Ingest(receipt(), [event()], None, loop.create_future())
        assert not needs_sync([op(False), op(False)])
        assert needs_sync([op(False), op(True)]) and needs_sync([op(False), ingest])
        # claims and outcomes alone: NORMAL for that commit, FULL again after it
        assert writer.transaction([op(False), op(False)]).results == [1, 1]
        assert writer.transaction([op(True)]).results == [2]
        # with a webhook's events in the group, the commit waits for the disk
        assert writer.transaction([op(False), ingest]).results[0] == 2
    finally:
        writer.reset()
        loop.close()


def test_a_store_configured_normal_stays_normal(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    writer = SQLiteTransactor(tmp_path / "x.db", "NORMAL", 5000)
    try:
        assert writer.transaction([Op(_synchronous, loop.create_future(), durable=False)]).results == [1]
        assert writer.transaction([Op(_synchronous, loop.create_future())]).results == [1]
    finally:
        writer.reset()
        loop.close()
