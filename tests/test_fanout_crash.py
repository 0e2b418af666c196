"""SIGKILL the gateway process while deliveries are behind ingest, restart it, and check that
every acknowledged event reaches every matching plugin (at least once)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

import httpx
import orjson

from tests.conftest import MC_SECRET, mc_sign
from tests.test_cli import free_port

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = str(Path(sys.executable).parent / "gateway")


def start(config: Path, port: int, log: BinaryIO) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the test plugin lives in tests/
    proc = subprocess.Popen([GATEWAY, "run", "--config", str(config), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"gateway did not start; see {log.name}")


def pending(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        count: int = conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'").fetchone()[0]
    return count


def test_sigkill_during_fanout_loses_no_acknowledged_event(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[store]
path = "gateway.db"

[[sources]]
name = "metacopier"
scheme = "metacopier"
secret = "{MC_SECRET}"

[[plugins]]
name = "journal"
use = "jsonl"
[plugins.options]
path = "journal.jsonl"

[[plugins]]
name = "slow"
use = "tests.fanout_plugins:recorder"
events = ["position.*"]
concurrency = 2
retry_backoff_seconds = 0.05
retry_backoff_max_seconds = 0.1
[plugins.options]
delay = 0.05
log = "{tmp_path / 'slow.log'}"
""")
    port = free_port()
    log = (tmp_path / "gateway.log").open("ab")
    db = tmp_path / "gateway.db"
    acked: list[tuple[int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    kills = 0

    def sender(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for i in range(400):
                if stop.is_set():
                    return
                kind = "position.opened" if i % 3 else "history.updated"
                body = orjson.dumps({"type": kind, "position": {"id": f"w{worker}-{i}"}} if kind != "history.updated"
                                    else {"type": kind, "n": f"w{worker}-{i}"})
                try:
                    r = client.post("/hooks/metacopier", content=body, headers=mc_sign(body))
                except httpx.TransportError:
                    time.sleep(0.05)  # the gateway is down: the sender would retry later
                    continue
                if r.status_code == 200:
                    with lock:
                        acked.append((r.json()["events"][0]["id"], kind))

    proc = start(config, port, log)
    threads = [threading.Thread(target=sender, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    # Kill it three times mid-traffic: during group commits and with fan-out behind.
    for _ in range(3):
        time.sleep(0.7)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        assert pending(db) > 0, "the kill should land while deliveries are still pending"
        proc = start(config, port, log)
    stop.set()
    for t in threads:
        t.join()
    try:
        deadline = time.monotonic() + 60
        while pending(db) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pending(db) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()

    assert kills == 3 and len(acked) > 300
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = dict(conn.execute("SELECT id, event_type FROM events").fetchall())
    # every acknowledged event is stored exactly once ...
    assert len({event_id for event_id, _ in acked}) == len(acked)
    assert all(stored.get(event_id) == kind for event_id, kind in acked)
    # ... and reached every plugin that matches it
    journal = {orjson.loads(line)["id"] for line in (tmp_path / "journal.jsonl").read_bytes().splitlines()}
    slow = {int(line.split()[0]) for line in (tmp_path / "slow.log").read_text().splitlines()}
    acked_ids = {event_id for event_id, _ in acked}
    assert acked_ids <= journal
    assert {event_id for event_id, kind in acked if kind.startswith("position.")} <= slow
    assert not {event_id for event_id, kind in acked if kind == "history.updated"} & slow
