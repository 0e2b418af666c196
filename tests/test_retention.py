"""Retention (pruning) and online backups, on real SQLite files and real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.config import Config, StoreConfig
from gateway.model import ParsedEvent
from gateway.store import DeliveryResult, Receipt, Rejection, open_store
from tests.conftest import RunningGateway, mc_sign, wait_for
from tests.store_reads import events

DAY = 86400.0
GATEWAY = str(Path(sys.executable).parent / "gateway")


def receipt(request_id: str, received_at: float, body: bytes = b"{}") -> Receipt:
    return Receipt(request_id, "src", "metacopier", received_at, "127.0.0.1", None, [], body)


def counts(path: Path) -> dict[str, int]:
    """Rows per table, read from the file: pruning must also drop orphaned receipts and
    finished delivery rows, which the store contract does not count."""
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("events", "receipts", "deliveries", "rejections")}


@pytest.mark.anyio
async def test_prune_keeps_recent_and_undelivered_events(tmp_path: Path) -> None:
    store = open_store(StoreConfig(path=tmp_path / "s.db"))
    await store.open()
    now = time.time()
    try:
        old = now - 40 * DAY
        await store.ingest(receipt("old-batch", old), [ParsedEvent("t", "a"), ParsedEvent("t", "b")], [["p"], ["p"]])
        await store.ingest(receipt("old-waiting", old), [ParsedEvent("t", "c")], [["p"]])
        await store.ingest(receipt("new", now), [ParsedEvent("t", "d")], [["p"]])
        claims = await store.claim_due("p", now, 10, 60)
        finished = [c for c in claims if c.event.entity_id in ("a", "b", "d")]  # "c" stays pending
        await store.finish_deliveries([DeliveryResult(c.delivery_id, c.claim_id, "delivered") for c in finished])
        store.record_rejection(Rejection(old, "rej-old", "src", "bad_signature", "x", None, (), 1, None))
        store.record_rejection(Rejection(now, "rej-new", "src", "bad_signature", "x", None, (), 1, None))
        await store.flush()
        assert counts(tmp_path / "s.db") == {"events": 4, "receipts": 3, "deliveries": 4, "rejections": 2}

        assert await store.prune(now - 30 * DAY, batch=1) == 1  # batches as small as asked
        assert await store.prune(now - 30 * DAY, batch=1) == 1
        assert await store.prune(now - 30 * DAY, batch=1) == 0  # "c" waits for its plugin
        assert [e.entity_id for e in await store.list_events()] == ["d", "c"]
        assert counts(tmp_path / "s.db") == {"events": 2, "receipts": 2, "deliveries": 2, "rejections": 1}
        # once "c" is delivered, it goes too, with its receipt
        await store.release([c for c in claims if c not in finished])
        (waiting,) = await store.claim_due("p", now, 10, 60)
        await store.finish_deliveries([DeliveryResult(waiting.delivery_id, waiting.claim_id, "dead", 0, "gave up")])
        assert await store.prune(now - 30 * DAY) == 1
        assert counts(tmp_path / "s.db") == {"events": 1, "receipts": 1, "deliveries": 1, "rejections": 1}
    finally:
        await store.close()


def test_background_retention_prunes_old_events(tmp_path: Path, make_config: Callable[..., Config],
                                                serve: Callable[..., RunningGateway]) -> None:
    config = make_config()
    config = Config(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                       "store": StoreConfig(path=config.store.path, retention_days=30)})

    async def seed() -> None:
        store = open_store(config.store)
        await store.open()
        await store.ingest(receipt("ancient", time.time() - 90 * DAY), [ParsedEvent("t", "ancient")])
        await store.close()

    asyncio.run(seed())
    gw = serve(config)
    body = orjson.dumps({"type": "position.opened", "position": {"id": "fresh"}})
    assert gw.post("/hooks/metacopier", body, mc_sign(body)).status_code == 200
    wait_for(lambda: [e.entity_id for e in events(config)] == ["position:fresh"], what="only the fresh event left",
             seen=lambda: [e.entity_id for e in events(config)])


def test_two_gateways_on_one_store_take_turns_at_retention(tmp_path: Path, make_config: Callable[..., Config],
                                                            serve: Callable[..., RunningGateway]) -> None:
    config = make_config()
    config = Config(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                       "store": StoreConfig(path=config.store.path, retention_days=30)})
    first = serve(config)
    wait_for(lambda: lease_holders(config) == [first.app.holder], what="the first gateway's retention lease")
    second = serve(config)  # blue/green on one host: its retention finds the job held
    second.flush()
    time.sleep(0.2)
    assert lease_holders(config) == [first.app.holder]
    first.__exit__()  # stopping gives the lease up; the other takes it at its next round
    assert lease_holders(config) == []
    assert second.thread.is_alive()


def lease_holders(config: Config) -> list[str]:
    with contextlib.closing(sqlite3.connect(config.store.path)) as db:
        return [row[0] for row in db.execute("SELECT holder FROM job_leases WHERE name = 'retention'")]


def test_backup_under_write_load_holds_every_acknowledged_event(
    tmp_path: Path, make_config: Callable[..., Config], serve: Callable[..., RunningGateway]
) -> None:
    gw = serve(make_config())
    acked: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            i = 0
            while not stop.is_set() and i < 5000:
                body = orjson.dumps({"type": "position.opened", "position": {"id": f"bk-{i}"}, "pad": "x" * 500})
                r = client.post("/hooks/metacopier", content=body, headers=mc_sign(body))
                assert r.status_code == 200
                acked.append(r.json()["events"][0]["id"])
                i += 1

    writers = [threading.Thread(target=load) for _ in range(2)]
    for w in writers:
        w.start()

    def running() -> bool:
        return all(w.is_alive() for w in writers)

    wait_for(lambda: len(acked) > 50 or not running(), what="writes under way", seen=lambda: len(acked))
    acked_before = list(acked)
    config_file = tmp_path / "cli.toml"
    config_file.write_text(f'[store]\npath = "{gw.app.config.store.path}"\n[[sources]]\nname = "m"\n'
                           f'scheme = "metacopier"\nsecret = "{"s" * 40}"\n')
    target = tmp_path / "backups" / "copy.db"
    proc = subprocess.run([GATEWAY, "backup", str(target), "--config", str(config_file)], capture_output=True,
                          text=True, timeout=60)
    acked_during = len(acked)
    wait_for(lambda: len(acked) > acked_during or not running(), what="writes after the backup",
             seen=lambda: len(acked))
    stop.set()
    for w in writers:
        w.join()
    assert proc.returncode == 0, proc.stderr
    assert f"to {target}" in proc.stdout
    assert len(acked) > len(acked_before) > 50  # writes went on before, during and after
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        in_backup = {row[0] for row in conn.execute("SELECT id FROM events")}
    assert set(acked_before) <= in_backup  # everything acknowledged before the backup began
    again = subprocess.run([GATEWAY, "backup", str(target), "--config", str(config_file)], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 1 and "exists" in again.stderr  # never overwrites


def test_prune_command(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"

    async def seed() -> None:
        store = open_store(StoreConfig(path=db))
        await store.open()
        await store.ingest(receipt("old", time.time() - 10 * DAY), [ParsedEvent("t", "old")])
        await store.ingest(receipt("new", time.time()), [ParsedEvent("t", "new")])
        await store.close()

    asyncio.run(seed())
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(f'[store]\npath = "{db}"\n[[sources]]\nname = "m"\nscheme = "metacopier"\n'
                           f'secret = "{"s" * 40}"\n')
    refused = subprocess.run([GATEWAY, "prune", "--config", str(config_file)], capture_output=True, text=True)
    assert refused.returncode != 0 and "no retention" in refused.stderr
    done = subprocess.run([GATEWAY, "prune", "--days", "7", "--config", str(config_file)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "pruned 1 event(s) older than 7 day(s)" in done.stdout, done.stderr
    assert counts(db)["events"] == 1
