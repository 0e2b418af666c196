"""deploy/ checked for real: promtool validates and unit-tests the alert rules, every metric
the alerts and the Grafana dashboard use exists, and a real Prometheus (Debian's package,
installed by scripts/setup test) scrapes a running gateway."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.config import Config
from tests.conftest import RunningGateway, free_port, mc_sign, wait_for

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(PROMTOOL is None or PROMETHEUS is None,
                                      reason="Debian's prometheus package is installed by scripts/setup test")


@needs_prometheus
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert PROMTOOL is not None
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        proc = subprocess.run([PROMTOOL, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS" in proc.stdout + proc.stderr


def _exposed(gw: RunningGateway) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in gw.client.get("/metrics").text.splitlines()
            if line and not line.startswith("#")}


def test_every_metric_in_alerts_and_dashboard_exists(make_config: Callable[..., Config],
                                                     serve: Callable[..., RunningGateway]) -> None:
    gw = serve(make_config(plugins=[{"name": "sink", "use": "tests.fanout_plugins:recorder"}]))
    body = orjson.dumps({"type": "position.opened", "position": {"id": "m-1"}})
    gw.post("/hooks/metacopier", body, mc_sign(body))
    gw.post("/hooks/metacopier", body, {})
    exposed = _exposed(gw) | {"up"}
    texts = [(DEPLOY / "prometheus" / "alerts.yml").read_text()]
    texts += [panel["targets"][0]["expr"]
              for panel in json.loads((DEPLOY / "grafana" / "trading-webhook-gateway.json").read_text())["panels"]]
    used = {name for text in texts for name in re.findall(r"\b(gateway_[a-z_]+|up)\b", text)}
    assert len(used) > 12
    assert used <= exposed, used - exposed


def test_systemd_unit_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "trading-webhook-gateway.service")
    service = unit["Service"]
    assert service["User"] == "gateway"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/trading-webhook-gateway"
    assert service["NoNewPrivileges"] == "yes" and service["Restart"] == "on-failure"
    assert service["ExecStart"].endswith("gateway run --config /etc/trading-webhook-gateway/gateway.toml")


@needs_prometheus
def test_a_real_prometheus_scrapes_the_gateway(tmp_path: Path, make_config: Callable[..., Config],
                                               serve: Callable[..., RunningGateway]) -> None:
    assert PROMETHEUS is not None
    gw = serve(make_config())
    for i in range(3):
        body = orjson.dumps({"type": "position.opened", "position": {"id": f"prom-{i}"}})
        assert gw.post("/hooks/metacopier", body, mc_sign(body)).status_code == 200
    target = gw.url.removeprefix("http://")
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s").replace("127.0.0.1:8080", target)
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        query = 'gateway_events_total{source="metacopier",status="stored"}'

        def scraped() -> list[dict[str, object]]:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=2)
            except httpx.TransportError:
                return []
            result: list[dict[str, object]] = r.json()["data"]["result"] if r.status_code == 200 else []
            return result

        result = wait_for(scraped, 60, "Prometheus to scrape the gateway's events",
                          seen=lambda: (tmp_path / "prometheus.log").read_text()[-2000:], interval=0.5)
        value = result[0]["value"]
        assert isinstance(value, list) and float(value[1]) == 3
        rules = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).json()
        alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text().count("- alert: ")
        assert len(rules["data"]["groups"][0]["rules"]) == alerts  # the alert rules loaded, every one
        targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()
        assert targets["data"]["activeTargets"][0]["health"] == "up"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
