"""Store faults through the real app: a full disk, a read-only store file and a database locked
by another process each get 503 `store_unavailable` (never a 2xx, never a crash), /readyz says
so, and ingest recovers by itself once the fault clears. Every event answered 2xx is on disk.

The faults are real: a size-limited tmpfs, the immutable attribute (which even root cannot
write through) and a second process holding SQLite's write lock. Mounting and chattr need root,
which CI has.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import Config, parse_config
from tests.conftest import RunningGateway, mc_sign, source_table

Serve = Callable[..., RunningGateway]
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount") or not shutil.which("chattr"),
                                reason="real disk faults need root (mount, chattr)")


def config_for(store: Path, **store_options: Any) -> Config:
    return parse_config({"sources": [source_table("metacopier", "metacopier")],
                         "store": {"path": str(store), **store_options}}, origin="test.toml", base_dir=store.parent)


def event(n: int, padding: int = 0) -> bytes:
    return orjson.dumps({"type": "position.opened", "accountId": "acc-1",
                         "position": {"id": f"fault-{n}", "symbol": "EURUSD", "note": "x" * padding}})


def post_event(gw: RunningGateway, n: int, padding: int = 0) -> tuple[int, dict[str, Any]]:
    """POST event `n`, signed; its status and problem or receipt, whatever they are."""
    body = event(n, padding)
    r = gw.post("/hooks/metacopier", body, mc_sign(body))
    return r.status_code, r.json()


def stored_positions(db: Path) -> set[str]:
    """The position ids of the stored events (their entity is `position:<id>`)."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
        entities = {row[0] for row in conn.execute("SELECT entity_id FROM events")}
    assert all(entity.startswith("position:") for entity in entities), entities
    return {entity.removeprefix("position:") for entity in entities}


def until_ok(gw: RunningGateway, n: int, seconds: float = 10) -> tuple[int, dict[str, Any]]:
    """Resend like a sender would, until a 2xx or the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        status, body = post_event(gw, n)
        if status == 200 or time.monotonic() > deadline:
            return status, body
        assert status == 503 and body["code"] == "store_unavailable", (status, body)
        time.sleep(0.2)  # a sender's retry pace, not a wait for the store


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB filesystem of its own: it fills up for real."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@needs_root
def test_a_full_disk_gets_503_and_ingest_resumes_when_space_is_freed(tmpfs: Path, serve: Serve) -> None:
    db = tmpfs / "gateway.db"
    gw = serve(config_for(db))
    filler = tmpfs / "filler"
    with filler.open("wb") as fh:  # leave about 150 KB free
        free = shutil.disk_usage(tmpfs).free
        fh.write(b"\0" * max(0, free - 150_000))
    acked: set[str] = set()
    statuses: list[int] = []
    for n in range(400):  # 400 x 2 KB cannot fit into 150 KB
        status, body = post_event(gw, n, padding=2000)
        statuses.append(status)
        if status == 200:
            acked.add(f"fault-{n}")
        else:
            assert status == 503 and body["code"] == "store_unavailable", (status, body)
        if statuses[-3:] == [503, 503, 503]:
            break
    assert 503 in statuses and acked, statuses  # it stored while there was room, then refused
    ready = gw.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["store"] != "ok"
    assert gw.client.get("/healthz").status_code == 200  # degraded, not dead

    filler.unlink()  # the operator frees space: nothing else is done
    status, _ = until_ok(gw, 10_000)
    assert status == 200
    assert gw.client.get("/readyz").status_code == 200
    acked.add("fault-10000")
    gw.__exit__()
    assert acked <= stored_positions(db)  # every 2xx is on disk
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@needs_root
def test_a_read_only_store_file_gets_503_and_recovers_when_writable(tmp_path: Path, serve: Serve) -> None:
    db = tmp_path / "gateway.db"
    first = serve(config_for(db))
    assert post_event(first, 1)[0] == 200
    first.__exit__()
    subprocess.run(["chattr", "+i", str(db)], check=True)
    try:
        gw = serve(config_for(db))  # starts anyway: the store may become writable
        for n in range(2, 6):
            status, body = post_event(gw, n)
            assert status == 503 and body["code"] == "store_unavailable", (status, body)
        ready = gw.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["store"].startswith("not writable")
        assert gw.client.get("/api/v1/openapi.json").status_code == 200  # the rest keeps serving
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    status, _ = until_ok(gw, 6)
    assert status == 200
    assert gw.client.get("/readyz").status_code == 200
    gw.__exit__()
    assert stored_positions(db) == {"fault-1", "fault-6"}  # nothing refused was half-written


LOCKERS = {
    # another program (the sqlite3 shell, a backup tool) in a write transaction
    "sqlite": "import sqlite3, sys\n"
              "conn = sqlite3.connect({db!r}, isolation_level=None)\n"
              "conn.execute('BEGIN EXCLUSIVE')\n"
              "print('locked', flush=True)\n"
              "sys.stdin.read()\n"
              "conn.execute('ROLLBACK')\n",
    # another gateway process stalled in its turn to write (the writers' own lock)
    "gateway": "import fcntl, os, sys\n"
               "fd = os.open({db!r} + '-writer.lock', os.O_RDWR | os.O_CREAT)\n"
               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
               "print('locked', flush=True)\n"
               "sys.stdin.read()\n",
}


@pytest.mark.parametrize("holder", sorted(LOCKERS))
def test_a_lock_held_by_another_process_gets_503_and_clears(tmp_path: Path, serve: Serve, holder: str) -> None:
    db = tmp_path / "gateway.db"
    gw = serve(config_for(db, busy_timeout_ms=300))
    assert post_event(gw, 1)[0] == 200
    locker = subprocess.Popen([sys.executable, "-c", LOCKERS[holder].format(db=str(db))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        for n in range(2, 5):
            status, body = post_event(gw, n)
            assert status == 503 and body["code"] == "store_unavailable", (status, body)
        ready = gw.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["store"] != "ok"
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(timeout=10)
        if locker.stdout is not None:
            locker.stdout.close()
    status, _ = until_ok(gw, 5)
    assert status == 200
    assert gw.client.get("/readyz").status_code == 200
    gw.__exit__()
    assert stored_positions(db) == {"fault-1", "fault-5"}


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_file_deleted_or_replaced_while_running_gets_503_until_it_is_back(
        tmp_path: Path, serve: Serve, how: str, caplog: pytest.LogCaptureFixture) -> None:
    """Item 11: the path no longer names the open store. Ingest and /readyz answer 503, no new
    empty store is created in its place, and putting the original file back resumes ingest."""
    db = tmp_path / "gateway.db"
    gw = serve(config_for(db))
    assert post_event(gw, 1)[0] == 200
    aside = tmp_path / "aside.db"
    os.link(db, aside)  # a second name, so that the operator can put it back
    db.unlink()  # `rm gateway.db`
    if how == "replaced":  # e.g. an old backup copied over it
        other = tmp_path / "old-backup.db"
        with sqlite3.connect(other) as conn:
            conn.execute("CREATE TABLE other (x)")
        conn.close()
        shutil.copyfile(other, db)
    for n in range(2, 5):
        status, body = post_event(gw, n)
        assert status == 503 and body["code"] == "store_unavailable", (status, body)
        assert how in body["detail"], body
    ready = gw.client.get("/readyz")
    assert ready.status_code == 503 and how in ready.json()["checks"]["store"], ready.json()
    assert db.exists() == (how == "replaced")  # never a new empty store in its place
    assert any(how in r.getMessage() and str(db) in r.getMessage() for r in caplog.records), caplog.text

    aside.replace(db)  # the operator puts the original file back
    status, _ = until_ok(gw, 5)
    assert status == 200
    assert gw.client.get("/readyz").status_code == 200
    gw.__exit__()
    assert stored_positions(db) == {"fault-1", "fault-5"}  # nothing refused went into the old file
