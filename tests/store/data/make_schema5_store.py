"""Writes schema5.sqlite and schema5.json: a store written by the release before identities
(commit 7cd2862, schema 5), through its own HTTP ingest, for tests/store/test_migration.py.

    .venv/bin/python tests/store/data/make_schema5_store.py   # from the repository root

It runs that release's code, taken from git history (`git archive`), as a real `gateway run`
and sends it signed webhooks. The bodies and what the old gateway answered go to schema5.json.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RELEASE = "7cd2862"
HERE = Path(__file__).resolve().parent
MC_SECRET = "mc-demo-secret-0123456789abcdefghij"
PS_SECRET = "whsec_pipsync_demo_7Hq2"
TR_KEY = "tradrapi-demo-key-0123456789"

CONFIG = f"""
[server]
host = "127.0.0.1"
port = {{port}}
[store]
path = "gateway.db"
[[sources]]
name = "metacopier"
scheme = "metacopier"
secret = "{MC_SECRET}"
[[sources]]
name = "pipsync"
scheme = "pipsync"
secret = "{PS_SECRET}"
[[sources]]
name = "tradrapi"
scheme = "tradrapi"
secret = "{TR_KEY}"
[[plugins]]
name = "journal"
use = "jsonl"
[plugins.options]
path = "journal.jsonl"
"""


def mc(position: dict[str, object] | None, event_type: str, **root: object) -> bytes:
    doc: dict[str, object] = {"type": event_type, "timestamp": "2026-11-20T10:15:02.331Z", "accountId": "acc-1",
                              **root}
    if position is not None:
        doc["position"] = position
    return json.dumps(doc, separators=(",", ":")).encode()


def tr(*members: dict[str, object]) -> bytes:
    return json.dumps({"payload": list(members), "count": len(members), "attempts": 1}, separators=(",", ":")).encode()


OPEN = {"id": "555", "symbol": "EURUSD", "orderType": "Buy", "volume": 0.5, "openTime": "2026-11-20T10:15:01Z"}
REQUESTS: list[tuple[str, str, bytes]] = [
    ("opened", "metacopier", mc(OPEN, "position.opened")),
    ("partial-close-1", "metacopier",
     mc(OPEN | {"volume": 0.2, "closeTime": "2026-11-20T11:00:00Z"}, "position.closed")),
    ("history", "metacopier", mc(None, "history.updated", deals=3)),
    ("quarantined", "metacopier", b'{"type": "position.opened", "position": '),
    ("ps-first", "pipsync", json.dumps({"id": "evt_A", "type": "trade.opened", "created": 1763633702,
                                        "data": {"position_id": "771", "account_id": "acc_12", "lots": 0.5}}).encode()),
    # the same event id with other content: the old gateway stored it (another position id)
    ("ps-same-id", "pipsync",
     json.dumps({"id": "evt_A", "type": "trade.opened", "created": 1763633702,
                 "data": {"position_id": "772", "account_id": "acc_12", "lots": 0.5}}).encode()),
    ("tr-batch", "tradrapi", tr(
        {"brandId": 12, "serverId": 3, "accountId": 99121, "eventType": "account_created", "platform": "MT5",
         "payload": {"id": 99121, "currency": "USD", "createdAt": 1763633700000}},
        {"brandId": 12, "serverId": 3, "accountId": 99121, "eventType": "open_position", "platform": "MT5",
         "payload": {"id": 5561201, "platformOperationId": "op-1", "platformTradeId": "t-1", "symbol": "EURUSD",
                     "lots": 1, "openedAt": "2026-11-20T10:15:01.000Z"}})),
]


def sign(source: str, body: bytes) -> dict[str, str]:
    if source == "metacopier":
        ts = str(int(time.time() * 1000))
        sig = hmac.new(MC_SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return {"X-MetaCopier-Timestamp": ts, "X-MetaCopier-Signature": sig}
    if source == "pipsync":
        t = str(int(time.time()))
        sig = hmac.new(PS_SECRET.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
        return {"X-PipSync-Signature": f"t={t},v1={sig}"}
    return {"x-webhook-secret": hashlib.sha1(TR_KEY.encode()).hexdigest()}


def main() -> None:
    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                               check=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        code = folder / "release"
        code.mkdir()
        archive = subprocess.run(["git", "-C", str(root), "archive", RELEASE, "gateway"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (folder / "gateway.toml").write_text(CONFIG.format(port=port))
        env = {**os.environ, "PYTHONPATH": str(code)}
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", "gateway.toml"], cwd=folder,
                                env=env)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for _ in range(200):
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.05)
                sent = []
                for name, source, body in REQUESTS:
                    answer = client.post(f"/hooks/{source}", content=body, headers=sign(source, body))
                    answer.raise_for_status()
                    sent.append({"name": name, "source": source, "body": body.decode(), "answer": answer.json()})
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        with sqlite3.connect(folder / "gateway.db") as db:
            version = db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db_file = HERE / "schema5.sqlite"
        shutil.copyfile(folder / "gateway.db", db_file)
        manifest = {"release": RELEASE, "schema": version, "requests": sent}
        (HERE / "schema5.json").write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"wrote {db_file} (schema {version}, {db_file.stat().st_size} bytes) and schema5.json")


if __name__ == "__main__":
    main()
