"""A store written by the release before identities (schema 5, tests/store/data/schema5.sqlite,
made by that release's own code: make_schema5_store.py) is upgraded in place at the first start:
its events keep their ids and content, are named by the new identities, still deduplicate the
senders' retries, and two events that now share an identity are both kept, the later one a
`conflict`. Then `gateway restore` of an old backup keeps ids above any already handed out."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, parse_config
from tests.conftest import RunningGateway, mc_sign, ps_sign, source_table, tr_sign

DATA = Path(__file__).resolve().parent / "data"
MANIFEST = json.loads((DATA / "schema5.json").read_text())
Serve = Callable[..., RunningGateway]


def sent(name: str) -> dict[str, Any]:
    request: dict[str, Any] = next(r for r in MANIFEST["requests"] if r["name"] == name)
    return request


def old_ids(name: str) -> list[int]:
    return [e["id"] for e in sent(name)["answer"]["events"]]


def sign(source: str, body: bytes) -> dict[str, str]:
    return {"metacopier": lambda: mc_sign(body), "pipsync": lambda: ps_sign(body), "tradrapi": tr_sign}[source]()


@pytest.fixture
def upgraded(tmp_path: Path) -> Config:
    """A config over a copy of the old store."""
    shutil.copyfile(DATA / "schema5.sqlite", tmp_path / "gateway.db")
    data = {"sources": [source_table(n, n) for n in ("metacopier", "pipsync", "tradrapi")],
            "store": {"path": str(tmp_path / "gateway.db")}, "api": {"public": True}}
    return parse_config(data, origin="test.toml", base_dir=tmp_path)


def events(gw: RunningGateway) -> dict[int, dict[str, Any]]:
    listed = gw.client.get("/api/v1/events", params={"order": "oldest", "limit": 1000}).json()["events"]
    return {e["id"]: e for e in listed}


def test_the_fixture_is_what_the_old_release_wrote() -> None:
    assert MANIFEST["schema"] == 5
    with closing(sqlite3.connect(DATA / "schema5.sqlite")) as db:
        assert db.execute("SELECT max(version) FROM schema_version").fetchone() == (5,)
        keys = dict(db.execute("SELECT id, dedup_key FROM events"))
    # the old rules: the entity id alone, and two PipSync events of one event id both stored
    assert keys[old_ids("opened")[0]] == "metacopier:position.opened:555"
    assert old_ids("ps-first") != old_ids("ps-same-id")


def test_old_events_are_named_again_and_keep_their_ids(upgraded: Config, serve: Serve) -> None:
    gw = serve(upgraded)
    stored = events(gw)
    all_old = [i for r in MANIFEST["requests"] for i in old_ids(r["name"])]
    assert sorted(stored) == sorted(all_old)  # nothing lost, nothing added
    opened = stored[old_ids("opened")[0]]
    assert (opened["dedup_key"], opened["entity_id"], opened["status"], opened["conflicts_with"]) == (
        "metacopier:position.opened:555@2026-11-20T10:15:01Z", "position:555", "stored", None)
    closed = stored[old_ids("partial-close-1")[0]]
    assert (closed["dedup_key"], closed["entity_id"]) == ("metacopier:position.closed:555@2026-11-20T11:00:00Z",
                                                         "position:555")
    first, same_id = stored[old_ids("ps-first")[0]], stored[old_ids("ps-same-id")[0]]
    assert first["dedup_key"] == same_id["dedup_key"] == "pipsync:trade.opened:evt_A"
    assert (first["status"], first["conflicts_with"]) == ("stored", None)
    assert (same_id["status"], same_id["conflicts_with"]) == ("conflict", first["id"])
    account, position = (stored[i] for i in old_ids("tr-batch"))
    assert (account["dedup_key"], account["entity_id"]) == ("tradrapi:account_created:99121@1763633700000",
                                                            "account:99121")
    assert (position["dedup_key"], position["entity_id"]) == ("tradrapi:open_position:5561201@op-1", "position:t-1")
    quarantined = stored[old_ids("quarantined")[0]]
    assert quarantined["status"] == "quarantined" and quarantined["dedup_key"].startswith("metacopier:-:#sha256-")


def test_retries_of_old_events_are_still_duplicates(upgraded: Config, serve: Serve) -> None:
    gw = serve(upgraded)
    for request in MANIFEST["requests"]:
        body = request["body"].encode()
        answer = gw.post(f"/hooks/{request['source']}", body, sign(request["source"], body))
        assert answer.status_code == 200, answer.text
        assert [(e["id"], e["status"]) for e in answer.json()["events"]] == [
            (i, "duplicate") for i in old_ids(request["name"])], request["name"]


def test_what_the_old_rules_merged_is_now_stored(upgraded: Config, serve: Serve) -> None:
    gw = serve(upgraded)
    old = json.loads(sent("partial-close-1")["body"])
    old["position"] |= {"volume": 0.3, "closeTime": "2026-11-20T12:00:00Z"}
    body = json.dumps(old).encode()
    (entry,) = gw.post("/hooks/metacopier", body, mc_sign(body)).json()["events"]
    assert entry["status"] == "stored"
    assert entry["id"] > max(i for r in MANIFEST["requests"] for i in old_ids(r["name"]))


def test_the_upgrade_runs_once(upgraded: Config, serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="gateway")
    serve(upgraded).__exit__()
    assert any("identities of 8 stored event(s) recomputed" in r.getMessage() for r in caplog.records)
    caplog.clear()
    gw = serve(upgraded)
    assert not any("recomputed" in r.getMessage() for r in caplog.records)
    assert len(events(gw)) == 8


def gateway_cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=60)


def test_restoring_an_old_backup_never_hands_out_an_id_twice(tmp_path: Path, serve: Serve) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    config_file = folder / "gateway.toml"
    config_file.write_text(
        '[store]\npath = "gateway.db"\n[api]\npublic = true\n'
        + "".join(f'[[sources]]\nname = "{n}"\nscheme = "{n}"\nsecrets = {json.dumps(source_table(n, n)["secrets"])}\n'
                  for n in ("metacopier", "pipsync")))
    config = parse_config({"store": {"path": "gateway.db"}, "api": {"public": True},
                           "sources": [source_table(n, n) for n in ("metacopier", "pipsync")]},
                          origin=str(config_file), base_dir=folder)

    def post(gw: RunningGateway, n: int) -> int:
        body = json.dumps({"id": f"evt_{n}", "type": "trade.opened", "data": {"position_id": str(n)}}).encode()
        entry = gw.post("/hooks/pipsync", body, ps_sign(body)).json()["events"][0]
        assert entry["status"] == "stored"
        return int(entry["id"])

    gw = serve(config)
    before = [post(gw, n) for n in range(3)]
    backup = tmp_path / "backup.sqlite"
    assert gateway_cli("backup", str(backup), config=config_file).returncode == 0
    after = [post(gw, n) for n in range(3, 6)]  # handed out after the backup: never again
    gw.__exit__()

    done = gateway_cli("restore", str(backup), config=config_file)
    assert done.returncode == 0, done.stderr
    assert f"next ids above: receipts {max(after)}, events {max(after)}" in done.stdout
    moved = [p.name for p in folder.iterdir() if p.name.startswith("gateway.db.replaced-")]
    assert any(not name.endswith(("-wal", "-shm")) for name in moved), moved  # moved aside, not deleted

    gw = serve(config)
    assert sorted(events(gw)) == before  # the backup's content
    assert post(gw, 6) > max(after)

    # the replaced store lost too: --id-floor names the highest id downstream has seen
    gw.__exit__()
    for path in folder.iterdir():
        if path.name.startswith("gateway.db"):
            path.unlink()
    assert gateway_cli("restore", str(backup), "--id-floor", "1000", config=config_file).returncode == 0
    gw = serve(config)
    assert post(gw, 7) == 1001


def test_restore_refuses_a_file_that_is_no_store(tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(f'[store]\npath = "gateway.db"\n[[sources]]\nname = "pipsync"\nscheme = "pipsync"\n'
                           f'secret = "{source_table("pipsync", "pipsync")["secrets"][0]}"\n')
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    done = gateway_cli("restore", str(junk), config=config_file)
    assert done.returncode == 1
    assert "is not a gateway store" in done.stderr
    assert not (tmp_path / "gateway.db").exists()


def test_reading_commands_ask_for_the_upgrade_instead_of_failing(tmp_path: Path) -> None:
    shutil.copyfile(DATA / "schema5.sqlite", tmp_path / "gateway.db")
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(f'[store]\npath = "gateway.db"\n[[sources]]\nname = "pipsync"\nscheme = "pipsync"\n'
                           f'secret = "{source_table("pipsync", "pipsync")["secrets"][0]}"\n')
    listed = gateway_cli("events", config=config_file)
    assert listed.returncode == 1
    assert "has schema 5, older than this gateway's" in listed.stderr
    assert "start the gateway once to upgrade it" in listed.stderr
    assert "Traceback" not in listed.stderr
