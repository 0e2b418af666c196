"""/healthz and /readyz through the real app: real store faults, recovery, plugin runners."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from gateway.config import Config
from tests.conftest import MC_BODY, RunningGateway, mc_sign

Serve = Callable[..., RunningGateway]


def test_healthz_and_readyz_when_all_is_well(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(plugins=[{"name": "sink", "use": "tests.fanout_plugins:recorder"}]))
    assert gw.client.get("/healthz").json() == {"status": "ok"}
    ready = gw.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"store": "ok"}, "plugins": {"sink": {"health": "ok"}}}


def test_readyz_fails_while_another_process_holds_the_store_and_recovers(
    make_config: Callable[..., Config], serve: Serve, tmp_path: object
) -> None:
    config = make_config()
    gw = serve(Config(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                         "store": type(config.store)(path=config.store.path, busy_timeout_ms=300)}))
    locker = sqlite3.connect(config.store.path, isolation_level=None, timeout=5)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        r = gw.client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "not ready"
        assert "store" in r.json()["checks"] and r.json()["checks"]["store"] != "ok"
        ingest = gw.post("/hooks/metacopier", MC_BODY, mc_sign(MC_BODY))
        assert ingest.status_code == 503 and ingest.json()["code"] == "store_unavailable"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert gw.client.get("/readyz").status_code == 200  # recovers by itself
    assert gw.post("/hooks/metacopier", MC_BODY, mc_sign(MC_BODY)).status_code == 200


def test_readyz_names_a_store_that_refuses_writes(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config())
    with sqlite3.connect(gw.app.config.store.path) as conn:  # a real write fault, injected in SQLite
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON heartbeat BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    r = gw.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["store"].startswith("not writable")
    with sqlite3.connect(gw.app.config.store.path) as conn:
        conn.execute("DROP TRIGGER refuse")
    assert gw.client.get("/readyz").status_code == 200


def test_metrics_on_a_separate_listener(tmp_path, make_config, serve) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from gateway.config import parse_config
    from tests.conftest import free_port, source_table

    port = free_port()
    config = parse_config({"sources": [source_table("metacopier", "metacopier")],
                           "store": {"path": str(tmp_path / "g.db")},
                           "metrics": {"listen": f"127.0.0.1:{port}"}}, origin="t", base_dir=tmp_path)
    gw = serve(config)
    gw.post("/hooks/metacopier", MC_BODY, mc_sign(MC_BODY))
    separate = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert separate.status_code == 200
    assert 'gateway_events_total{event_type="position.opened",source="metacopier",status="stored"} 1.0' \
        in separate.text
    assert gw.client.get("/metrics").status_code == 404  # not on the public port any more


def test_metrics_allow_ips(tmp_path, serve) -> None:  # type: ignore[no-untyped-def]
    from gateway.config import parse_config
    from tests.conftest import source_table

    def gateway_with(allow: list[str]) -> RunningGateway:
        return serve(parse_config({"sources": [source_table("metacopier", "metacopier")],
                                   "store": {"path": str(tmp_path / f"{len(allow)}.db")},
                                   "metrics": {"allow_ips": allow}}, origin="t", base_dir=tmp_path))

    denied = gateway_with(["10.0.0.0/8"]).client.get("/metrics")
    assert denied.status_code == 403 and denied.json()["code"] == "ip_denied"
    assert gateway_with(["10.0.0.0/8", "127.0.0.1"]).client.get("/metrics").status_code == 200
