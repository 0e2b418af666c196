"""Item 13: a plugin that cannot start never stops the gateway, and every plugin's health
(`ok`, `degraded`, `failed`) is in /readyz's body and in `gateway_plugin_health`, while /readyz's
status follows the store alone."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Config, parse_config
from tests.conftest import MC_BODY, MC_SECRET, RunningGateway, free_port, mc_sign, run_gateway, source_table, wait_for
from tests.store_reads import deliveries

Serve = Callable[..., RunningGateway]


def health(gw: RunningGateway, plugin: str) -> dict[str, str]:
    r = gw.client.get("/readyz")
    assert r.status_code == 200, r.text  # plugins never make the gateway unready
    result: dict[str, str] = r.json()["plugins"][plugin]
    return result


def health_metric(gw: RunningGateway, plugin: str) -> str:
    """The health whose `gateway_plugin_health` series reads 1."""
    ones = [s.labels["health"] for f in text_string_to_metric_families(gw.client.get("/metrics").text)
            if f.name == "gateway_plugin_health" for s in f.samples
            if s.labels["plugin"] == plugin and s.value == 1]
    assert len(ones) == 1, ones
    return ones[0]


def config_with(tmp_path: Path, plugin: dict[str, Any]) -> Config:
    return parse_config({"sources": [source_table("metacopier", "metacopier")],
                         "store": {"path": str(tmp_path / "gateway.db")}, "plugins": [plugin]},
                        origin="test.toml", base_dir=tmp_path)


def test_a_plugin_that_cannot_start_waits_and_starts_later(tmp_path: Path, serve: Serve) -> None:
    blocker = tmp_path / "journal"
    blocker.write_text("a file where the journal's folder should be\n")
    gw = serve(config_with(tmp_path, {"name": "journal", "use": "jsonl",
                                      "options": {"path": "journal/events.jsonl"}}))
    assert gw.post("/hooks/metacopier", MC_BODY, mc_sign(MC_BODY)).status_code == 200  # ingest runs
    state = health(gw, "journal")
    assert state["health"] == "failed" and state["reason"].startswith("cannot start"), state
    assert health_metric(gw, "journal") == "failed"
    assert [d.status for d in deliveries(gw.app.config, plugin="journal")] == ["pending"]  # waits, not lost

    blocker.unlink()  # the operator fixes it; the gateway retries the start by itself
    wait_for(lambda: health(gw, "journal")["health"] == "ok", 15, "the plugin to start",
             seen=lambda: health(gw, "journal"))
    wait_for(lambda: (tmp_path / "journal" / "events.jsonl").exists()
             and (tmp_path / "journal" / "events.jsonl").read_text().count("\n") == 1, 10, "the delivery")
    assert health_metric(gw, "journal") == "ok"


def test_a_plugin_whose_deliveries_fail_is_degraded(tmp_path: Path, serve: Serve) -> None:
    gw = serve(config_with(tmp_path, {"name": "sink", "use": "tests.fanout_plugins:recorder",
                                      "retry_backoff_seconds": 0.2, "retry_backoff_max_seconds": 0.2,
                                      "degraded_after_seconds": 1.5, "options": {"always_fail": True}}))
    assert health(gw, "sink") == {"health": "ok"}
    assert gw.post("/hooks/metacopier", MC_BODY, mc_sign(MC_BODY)).status_code == 200
    state = wait_for(lambda: (s := health(gw, "sink"))["health"] == "degraded" and s, 10, "degraded",
                     seen=lambda: health(gw, "sink"))
    assert "latest delivery attempt failed" in state["reason"] and "simulated outage" in state["reason"], state
    assert health_metric(gw, "sink") == "degraded"
    state = wait_for(lambda: "oldest pending" in (s := health(gw, "sink")).get("reason", "") and s, 10,
                     "the oldest pending delivery to age", seen=lambda: health(gw, "sink"))
    assert state["health"] == "degraded"


def test_readyz_names_a_plugin_runner_that_stopped_but_stays_ready(
        make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(plugins=[{"name": "sink", "use": "tests.fanout_plugins:recorder"}]))
    runner = gw.app.fanout.runners["sink"]
    loop_task = runner._loop_task
    assert loop_task is not None
    loop_task.get_loop().call_soon_threadsafe(loop_task.cancel)  # as if the runner had died
    wait_for(lambda: not runner.running, 5, "the runner to stop")
    assert health(gw, "sink") == {"health": "failed", "reason": "its runner stopped"}


def test_gateway_run_keeps_ingesting_when_a_plugin_cannot_start(tmp_path: Path) -> None:
    """The reported case: a jsonl plugin whose file cannot be opened made `gateway run` exit 3."""
    (tmp_path / "var").write_text("not a folder\n")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[store]\npath = "gateway.db"\n\n[[sources]]\nname = "metacopier"\nscheme = "metacopier"\n'
                      f'secret = "{MC_SECRET}"\n\n[[plugins]]\nname = "journal"\nuse = "jsonl"\n'
                      '[plugins.options]\npath = "var/journal.jsonl"\n')
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = run_gateway(["run", "--config", str(config), "--port", str(port), "--log-format", "text"],
                       cwd=tmp_path, port=port, log=log)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{base}/hooks/metacopier", content=MC_BODY, headers=mc_sign(MC_BODY),
                          timeout=10).status_code == 200
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["plugins"]["journal"]["health"] == "failed", ready.text
        assert proc.poll() is None
        assert "plugin journal cannot start" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert "Application shutdown complete" in log.read_text(), log.read_text()[-3000:]
