"""deploy/ checked for real: promtool validates and unit-tests the alert rules, every metric
the alerts and the Grafana dashboard use exists, and a real Prometheus (Debian's package,
installed by scripts/setup test) scrapes a running gateway."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import tomllib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.config import Config
from tests.conftest import GATEWAY, ROOT, RunningGateway, free_port, mc_sign, start_gateway, wait_for
from tests.nginx import nginx as run_nginx

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
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
    dashboard = json.loads((DEPLOY / "grafana" / "trading-webhook-gateway.json").read_text())
    panels = [panel for top in dashboard["panels"] for panel in (top, *top.get("panels", []))]  # rows hold theirs
    texts += [target["expr"] for panel in panels for target in panel.get("targets", [])]
    texts += [variable["query"] for variable in dashboard["templating"]["list"] if variable["type"] == "query"]
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


def _unit() -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "trading-webhook-gateway.service")
    return unit["Service"]


def test_systemd_gives_a_clean_stop_time_to_finish() -> None:
    """Item 20: systemd's SIGKILL must not cut short the shutdown the gateway is allowed."""
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    shutdown = float(example["server"]["shutdown_timeout_seconds"])
    assert float(_unit()["TimeoutStopSec"]) >= shutdown + 10
    assert _unit()["StateDirectory"] == "trading-webhook-gateway"  # STATE_DIRECTORY, writable (item 16)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze comes with Debian's systemd package")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """The unit as shipped, with ExecStart pointing at this checkout's gateway (verify checks
    that the program exists)."""
    assert SYSTEMD_ANALYZE is not None
    text = (DEPLOY / "systemd" / "trading-webhook-gateway.service").read_text()
    shipped = "/opt/trading-webhook-gateway/.venv/bin/gateway"
    assert shipped in text
    unit = tmp_path / "trading-webhook-gateway.service"
    unit.write_text(text.replace(shipped, GATEWAY))
    socket_unit = tmp_path / "trading-webhook-gateway.socket"
    shutil.copy(DEPLOY / "systemd" / "trading-webhook-gateway.socket", socket_unit)
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit), str(socket_unit)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trading-webhook-gateway" not in proc.stdout + proc.stderr  # no warning about it either


def test_the_socket_unit_listens_where_the_service_would_and_reload_is_sighup() -> None:
    """Socket activation (issue 15): systemd holds the example config's address, so a restart
    queues connections; `systemctl reload` sends the supervisor SIGHUP, and `stop` signals the
    supervisor alone (KillMode=mixed), which drains its workers: a SIGTERM to every worker as
    well would be each one's second signal, an exit without draining."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "trading-webhook-gateway.socket")
    server = tomllib.loads((ROOT / "config.example.toml").read_text())["server"]
    assert unit["Socket"]["ListenStream"] == f"{server['host']}:{server['port']}"
    service = _unit()
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillMode"] == "mixed"
    text = (DEPLOY / "systemd" / "trading-webhook-gateway.service").read_text()
    assert "Wants=trading-webhook-gateway.socket" in text
    assert "After=network-online.target trading-webhook-gateway.socket" in text


def test_dockerignore_keeps_data_and_secrets_out_of_the_build_context() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in (".git", "**/.venv", "var", "**/*.db", "**/*.db-wal", "**/secrets.env", "**/gateway.toml",
                   "**/*.key"):
        assert needed in patterns, needed
    copied = {word for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")
              and "--from" not in line for word in line.split()[1:-1]}
    assert copied == {"pyproject.toml", "README.md", "gateway"}
    assert not copied & set(patterns)


def _healthcheck() -> list[str]:
    line = next(x for x in (DEPLOY / "Dockerfile").read_text().splitlines() if x.startswith("HEALTHCHECK"))
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    return command


def test_docker_health_check_follows_the_configured_port(tmp_path: Path) -> None:
    """Item 20: the image's health check, run as written, against a gateway on a port that is
    not 8080 (the check used to hard-code 8080)."""
    command = _healthcheck()
    assert "8080" not in " ".join(command)
    command = [c.replace("/etc/gateway/gateway.toml", str(tmp_path / "gateway.toml")) for c in command]
    command[0] = str(Path(GATEWAY).parent / "python")
    proc, port = start_gateway(tmp_path)
    assert port != 8080
    try:
        healthy = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    down = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert down.returncode != 0


def test_container_files_set_a_writable_state_directory() -> None:
    """Item 16: /etc/gateway is mounted read-only; relative data paths go to the volume."""
    assert "STATE_DIRECTORY=/var/lib/gateway" in (DEPLOY / "Dockerfile").read_text()
    compose = (DEPLOY / "compose.yaml").read_text()
    assert "STATE_DIRECTORY: /var/lib/gateway" in compose
    assert "gateway.toml:/etc/gateway/gateway.toml:ro" in compose and "gateway-data:/var/lib/gateway" in compose


def test_the_postgres_compose_variant_balances_two_instances_on_one_database(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """compose.postgres.yaml: two identical gateway instances on the postgres service, behind
    the balancer whose upstreams (compose-balancer.conf, run for real by test_active_active) are
    exactly those instances, scraped by Prometheus one by one; the database never sees the
    senders' secrets; only 127.0.0.1 is published; the [store] it documents is a valid config."""
    import yaml

    text = (DEPLOY / "compose.postgres.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    instances = sorted(name for name in services if name.startswith("gateway"))
    assert instances == ["gateway-a", "gateway-b"]
    a, b = (services[name] for name in instances)
    assert a == b and "postgres.env" in a["env_file"] and "secrets.env" in a["env_file"]
    assert a["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "./gateway.toml:/etc/gateway/gateway.toml:ro" in a["volumes"] and a["read_only"] is True
    assert services["postgres"]["env_file"] == "postgres.env" and "healthcheck" in services["postgres"]
    conf = "./nginx/compose-balancer.conf:/etc/nginx/conf.d/default.conf:ro"
    assert conf in services["balancer"]["volumes"]
    balancer = (DEPLOY / "nginx" / "compose-balancer.conf").read_text()
    upstreams = re.findall(r"(?m)^\s*server ([\w-]+):8080 max_fails=0;", balancer)
    assert sorted(upstreams) == instances
    scrape = (DEPLOY / "prometheus" / "compose-postgres-prometheus.yml").read_text()
    targets = yaml.safe_load(scrape)["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"{name}:8080" for name in instances]
    assert services["prometheus"]["volumes"][0].startswith("./prometheus/compose-postgres-prometheus.yml:")
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)
    for mount in [v for s in services.values() for v in s.get("volumes", []) if v.startswith("./")]:
        assert (DEPLOY / mount.split(":")[0]).exists() or mount.split(":")[0] == "./gateway.toml", mount
    # the gateway.toml lines from the file's header, on top of the example configuration
    header = text.split("In gateway.toml:\n", 1)[1].split("\nx-gateway", 1)[0]
    snippet = "\n".join(line.removeprefix("#   ") for line in header.splitlines())
    assert "[store]" in snippet and "[server]" in snippet
    source = '\n[[sources]]\nname = "metacopier"\nscheme = "metacopier"\nsecret = "env:MC_SECRET"\n'
    (tmp_path / "gateway.toml").write_text(snippet + "\n" + source)
    monkeypatch.setenv("POSTGRES_PASSWORD", "a-long-random-string")
    monkeypatch.setenv("MC_SECRET", "mc-secret-0123456789abcdef0123456789")
    checked = subprocess.run([GATEWAY, "check-config", "--config", str(tmp_path / "gateway.toml")],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_store_file_is_created_private(make_config: Callable[..., Config],
                                           serve: Callable[..., RunningGateway]) -> None:
    """Item 20: gateway.db (and its -wal, which SQLite gives the database's mode) is 0600, like
    the secrets, whatever the umask."""
    old = os.umask(0o022)
    try:
        config = make_config()
        gw = serve(config)
        body = orjson.dumps({"type": "position.opened", "position": {"id": "private-1"}})
        assert gw.post("/hooks/metacopier", body, mc_sign(body)).status_code == 200
    finally:
        os.umask(old)
    for path in (config.store.path, config.store.path.with_name(config.store.path.name + "-wal")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# --- nginx, for real ----------------------------------------------------------------------------

class _EchoHeaders(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[str]:
    """deploy/nginx's server block, without TLS (tests/nginx.py), proxying to a server that
    answers with the headers it received."""
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHeaders)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        with run_nginx(tmp_path / "nginx", [backend.server_port]) as url:
            yield url
    finally:
        backend.shutdown()
        backend.server_close()


def test_nginx_forwards_host_and_client_on_every_route_the_websocket_too(nginx: str) -> None:
    """Item 20: a location with proxy_set_header of its own (Upgrade) inherited none of the
    server's, so the WebSocket reached the gateway without Host or X-Forwarded-*."""
    host = {"Host": "hooks.example-broker.com"}
    for path in ("/hooks/metacopier", "/api/v1/stream", "/api/v1/events", "/api/v1/ws"):
        headers = {**host, "Upgrade": "websocket", "Connection": "Upgrade"} if path.endswith("/ws") else host
        seen = httpx.get(nginx + path, headers=headers, timeout=10).json()
        assert seen.get("host") == "hooks.example-broker.com", (path, seen)
        assert seen.get("x-forwarded-for") == "127.0.0.1", (path, seen)
        assert seen.get("x-forwarded-proto") == "http", (path, seen)  # https behind TLS
    ws = httpx.get(nginx + "/api/v1/ws", headers={**host, "Upgrade": "websocket", "Connection": "Upgrade"},
                   timeout=10).json()
    assert ws["upgrade"] == "websocket" and ws["connection"] == "upgrade"


def test_nginx_bounds_slow_clients_and_connections() -> None:
    site = (DEPLOY / "nginx" / "trading-webhook-gateway.conf").read_text()
    server = site[site.index("server {"):]
    for directive in ("client_header_timeout 10s;", "client_body_timeout 10s;", "limit_conn gateway_conn"):
        assert directive in server, directive
    assert "limit_conn_zone $binary_remote_addr zone=gateway_conn:" in site[:site.index("server {")]
