"""`gateway migrate-store`: a SQLite store of 100,000 events moved to PostgreSQL, interrupted
and resumed, gives the same API listings (events with their ids, statuses and payloads;
deliveries with their states), and ids go on from where SQLite left them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from gateway.config import StoreConfig
from gateway.model import ParsedEvent
from gateway.store import DeliveryResult, Receipt, open_store
from tests.conftest import GATEWAY, ROOT, postgres_schema, postgres_sql, wait_for

EVENTS = 100_000
BATCH = 500


async def make_sqlite_store(path: Path) -> None:
    """EVENTS events in batches, every one routed to a plugin; some deliveries done, some dead."""
    store = open_store(StoreConfig(path=path))
    await store.open()
    try:
        for b in range(EVENTS // BATCH):
            receipt = Receipt(request_id=f"r{b}", source="tr", scheme="tradrapi", received_at=1_763_633_702 + b,
                              remote_addr="203.0.113.7", attempt=1, headers=(("content-type", "application/json"),),
                              body=b'{"payload":[]}')
            events = [ParsedEvent(event_type="open_position", entity_id=f"position:{b}-{n}", identity=(f"{b}-{n}",),
                                  fingerprint=f"{b}-{n}".encode(), payload=b'{"id":%d}' % n, account=f"acc-{n % 7}")
                      for n in range(BATCH)]
            await store.ingest(receipt, events, [["journal"]] * BATCH)
        claims = await store.claim_due("journal", time.time(), 300, 60)
        await store.finish_deliveries([DeliveryResult(id=c.delivery_id, claim_id=c.claim_id,
                                                      status="delivered" if i % 3 else "dead",
                                                      next_attempt_at=0, error=None if i % 3 else "refused")
                                       for i, c in enumerate(claims)])
    finally:
        await store.close()


async def listings(config: StoreConfig) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    store = open_store(config, readonly=True)
    await store.open()
    try:
        events = [(e.id, e.dedup_key, e.status, e.entity_id, e.account, e.received_at, e.payload, e.request_id)
                  for e in await store.list_events(limit=EVENTS + 10)]
        deliveries = [(d.id, d.event_id, d.status, d.attempts, d.last_error)
                      for d in await store.list_deliveries(limit=EVENTS + 10)]
        return events, deliveries
    finally:
        await store.close()


def test_a_100k_store_moves_to_postgresql_interrupted_and_resumed(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    asyncio.run(make_sqlite_store(db))
    with postgres_schema() as url:
        command = [GATEWAY, "migrate-store", "--from", f"sqlite:///{db}", "--to", url]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _count(url, "events") >= 10_000, 120, "the copy to be under way")
        first.send_signal(signal.SIGKILL)  # interrupted in the middle of the events
        first.wait()
        copied_before = _count(url, "events")
        assert 10_000 <= copied_before < EVENTS

        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and "give --resume" in refused.stderr

        resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"{EVENTS - copied_before} events" in resumed.stdout  # only what was missing
        assert f"copying {db} to " in resumed.stderr  # the progress bar's label (its bar is drawn on a terminal)

        sqlite_events, sqlite_deliveries = asyncio.run(listings(StoreConfig(path=db)))
        pg_events, pg_deliveries = asyncio.run(listings(StoreConfig(path=tmp_path / "pg", url=url)))
        assert len(pg_events) == EVENTS and pg_events == sqlite_events
        assert len(pg_deliveries) == EVENTS and pg_deliveries == sqlite_deliveries
        assert {d[2] for d in pg_deliveries} == {"pending", "delivered", "dead"}
        assert int(postgres_sql(url, "SELECT value FROM id_counters WHERE name = 'events'")[0][0]) == EVENTS


def _count(url: str, table: str) -> int:
    """Rows in `table` of the target (0 before the copy created it)."""
    if postgres_sql(url, f"SELECT to_regclass('{table}') IS NULL")[0][0]:
        return 0
    return int(postgres_sql(url, f"SELECT count(*) FROM {table}")[0][0])
