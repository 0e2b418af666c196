"""`gateway positions`, `gateway anomalies` and `gateway ledger` as a user runs them: real
subprocesses against a real server and store (gateway/cli_ledger.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.conftest import wait_for
from tests.test_cli import Server, run


def _json(*args: str, cwd: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in run(*args, "--json", cwd=cwd).stdout.splitlines()]


def _send(server: Server, source: str, event_type: str, position: str, volume: str, cwd: Path) -> None:
    sent = run("send", source, "--event", event_type, "--position", position, "--volume", volume,
               "--url", server.url, cwd=cwd)
    assert '"status": "stored"' in sent.stdout, sent.stdout


def test_positions_anomalies_and_acknowledging(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        _send(server, "metacopier", "position.opened", "mc-1", "1", tmp_path)
        _send(server, "metacopier", "position.closed", "mc-1", "0.4", tmp_path)
        _send(server, "pipsync", "trade.opened", "ps-1", "2", tmp_path)
        _send(server, "tradrapi", "close_position", "tr-lost", "1", tmp_path)  # its open never came
        wait_for(lambda: len(_json("positions", cwd=tmp_path)) == 3, 10, "the ledger to follow")
        found = {p["position_id"]: p for p in _json("positions", cwd=tmp_path)}
        assert (found["mc-1"]["state"], found["mc-1"]["open_volume"]) == ("partially_closed", 0.6)
        assert (found["ps-1"]["state"], found["tr-lost"]["state"]) == ("open", "closed")
        table = run("positions", "--state", "partially_closed", cwd=tmp_path).stdout.splitlines()
        assert table[0].split()[:4] == ["SOURCE", "ACCOUNT", "POSITION", "STATE"] and len(table) == 2
        assert "mc-1" in table[1] and "0.6" in table[1]
        assert [p["position_id"] for p in _json("positions", "--anomalous", cwd=tmp_path)] == ["tr-lost"]

        [anomaly] = _json("anomalies", "--open", cwd=tmp_path)
        assert (anomaly["kind"], anomaly["position_id"]) == ("close_without_open", "tr-lost")
        acked = run("anomalies", "ack", str(anomaly["id"]), "--note", "opened before go-live", cwd=tmp_path)
        assert f"acknowledged close_without_open {anomaly['id']}" in acked.stdout
        assert _json("anomalies", "--open", cwd=tmp_path) == []
        listed = run("anomalies", cwd=tmp_path).stdout
        assert "acknowledged" in listed and "opened before go-live" in listed
        missing = run("anomalies", "ack", "999999", "--note", "x", cwd=tmp_path, check=False)
        assert missing.returncode == 1 and "no anomaly 999999" in missing.stderr
        assert run("anomalies", "ack", "1", "--note", " ", cwd=tmp_path, check=False).returncode == 2

        status = run("ledger", "status", cwd=tmp_path).stdout
        assert "checkpoint 4 of 4 events" in status, status
        # a rebuild while the gateway runs: its projector does the work, the command follows it
        before = _json("positions", cwd=tmp_path)
        rebuilt = run("ledger", "rebuild", cwd=tmp_path)
        assert "a running gateway projects the ledger" in rebuilt.stderr
        assert "ledger rebuilt: 1 open, 1 partially_closed, 1 closed; 0 open anomalies" in rebuilt.stdout
        after = _json("positions", cwd=tmp_path)
        assert [{k: v for k, v in p.items() if k not in ("id", "updated_at")} for p in after] == [
            {k: v for k, v in p.items() if k not in ("id", "updated_at")} for p in before]
    finally:
        server.stop()
    # with no gateway running, the command projects itself, with a progress bar
    rebuilt = run("ledger", "rebuild", cwd=tmp_path)
    assert "rebuilding the ledger" in rebuilt.stderr and "a running gateway" not in rebuilt.stderr
    assert "ledger rebuilt: 1 open" in rebuilt.stdout
    assert [p["position_id"] for p in _json("positions", cwd=tmp_path)] == [p["position_id"] for p in before]


def test_reconcile_good_and_bad_snapshots(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        _send(server, "metacopier", "position.opened", "kept", "1", tmp_path)
        _send(server, "metacopier", "position.opened", "partly", "2", tmp_path)
        _send(server, "metacopier", "position.closed", "partly", "0.5", tmp_path)
        _send(server, "metacopier", "position.opened", "gone", "1", tmp_path)
        wait_for(lambda: len(_json("positions", cwd=tmp_path)) == 3, 10, "the ledger to follow")
    finally:
        server.stop()
    account = _json("positions", cwd=tmp_path)[0]["account"]
    good = tmp_path / "good.csv"
    good.write_text("account,position_id,symbol,side,volume\n"
                    f"{account},kept,EURUSD,buy,1\n{account},partly,EURUSD,buy,1.5\n{account},gone,EURUSD,buy,1\n")
    agreed = run("ledger", "reconcile", "--source", "metacopier", str(good), cwd=tmp_path)
    assert "3 open position(s) on the platform; the ledger agrees" in agreed.stdout

    differing = tmp_path / "differing.jsonl"
    differing.write_text("\n".join(orjson.dumps(row).decode() for row in (
        {"account": account, "position_id": "kept", "symbol": "EURUSD", "side": "buy", "volume": 1},
        {"account": account, "position_id": "partly", "symbol": "EURUSD", "side": "buy", "volume": 2},
        {"account": account, "position_id": "unknown", "symbol": "GBPUSD", "side": "sell", "volume": 3},
    )) + "\n")
    report = run("ledger", "reconcile", "--source", "metacopier", str(differing), cwd=tmp_path, check=False)
    assert report.returncode == 1, report.stdout + report.stderr
    assert report.stdout.splitlines()[0].split()[:3] == ["DIFFERENCE", "ACCOUNT", "POSITION"]
    assert "a missed close" in report.stdout and "a missed open" in report.stdout
    as_json = run("ledger", "reconcile", "--source", "metacopier", "--json", str(differing), cwd=tmp_path,
                  check=False)
    kinds = sorted((d["kind"], d["position_id"]) for d in map(orjson.loads, as_json.stdout.splitlines()))
    assert kinds == [("missing_in_ledger", "unknown"), ("missing_on_platform", "gone"), ("volume_differs", "partly")]
    # taken before anything was opened: nothing the ledger has since is a difference
    early = run("ledger", "reconcile", "--source", "metacopier", "--as-of", "2000-01-01T00:00:00Z", "--json",
                str(differing), cwd=tmp_path, check=False)
    assert [orjson.loads(line)["position_id"] for line in early.stdout.splitlines()] == ["unknown"]

    bad = tmp_path / "bad.csv"
    bad.write_text("account,position_id,symbol,side,volume\nacc,1,EURUSD,buy,1\nacc,2,EURUSD,buy,lots\n")
    refused = run("ledger", "reconcile", "--source", "metacopier", str(bad), cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "line 3" in refused.stderr, refused.stderr
    unknown = run("ledger", "reconcile", "--source", "nope", str(good), cwd=tmp_path, check=False)
    assert unknown.returncode == 2 and "unknown source" in unknown.stderr
