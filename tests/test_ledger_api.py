"""The position ledger through the real app over a socket: the three senders' webhooks in, the
projector running in the app, the API, the metrics (gateway/ledger_api.py, gateway/projector.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Config
from gateway.schemes import metacopier, pipsync, tradrapi
from tests.conftest import RunningGateway, mc_sign, ps_sign, tr_sign, wait_for

READER, WRITER = "reader-secret-0123456789", "writer-secret-0123456789"


@pytest.fixture
def gw(make_config: Callable[..., Config], serve: Callable[[Config], RunningGateway]) -> RunningGateway:
    return serve(make_config(clients=[
        {"id": "reader", "secret": READER, "scopes": ["events:read"]},
        {"id": "writer", "secret": WRITER, "scopes": ["events:read", "deliveries:write"]},
    ]))


def auth(gw: RunningGateway, client: str, secret: str) -> dict[str, str]:
    r = gw.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client,
                                              "client_secret": secret})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def positions(gw: RunningGateway, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = gw.client.get("/api/v1/positions", params=params, headers=headers)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["positions"]
    return found


def post(gw: RunningGateway, scheme: str, body: bytes) -> None:
    sign = {"metacopier": mc_sign, "pipsync": ps_sign, "tradrapi": lambda _b: tr_sign()}[scheme]
    r = gw.post(f"/hooks/{scheme}", body, sign(body))
    assert r.status_code == 200, r.text


def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    text = gw.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no {name} {labels} in /metrics")


def test_three_senders_positions_follow_their_webhooks(gw: RunningGateway) -> None:
    reader = auth(gw, "reader", READER)
    post(gw, "metacopier", metacopier.sample("position.opened", position="mc-1", volume=1.0))
    post(gw, "pipsync", pipsync.sample("trade.opened", position="ps-1", volume=0.5))
    post(gw, "tradrapi", tradrapi.sample("open_position", position="tr-1", volume=2.0))
    wait_for(lambda: len(positions(gw, reader)) == 3, 5, "three positions")
    post(gw, "metacopier", metacopier.sample("position.closed", position="mc-1", volume=0.25))
    post(gw, "pipsync", pipsync.sample("trade.closed", position="ps-1", volume=0.5))
    wait_for(lambda: {p["position_id"]: p["state"] for p in positions(gw, reader)}
             == {"mc-1": "partially_closed", "ps-1": "closed", "tr-1": "open"}, 5, "the closes")
    [mc] = positions(gw, reader, source="metacopier")
    assert (mc["side"], mc["symbol"], mc["opened_volume"], mc["open_volume"]) == ("buy", "EURUSD", 1.0, 0.75)
    assert [p["position_id"] for p in positions(gw, reader, state="open")] == ["tr-1"]
    assert positions(gw, reader, symbol="XAUUSD") == [] and positions(gw, reader, anomalous="true") == []

    detail = gw.client.get(f"/api/v1/positions/metacopier/{mc['account'] or '-'}/mc-1", headers=reader).json()
    assert [e["kind"] for e in detail["events"]] == ["position.opened", "position.closed"]
    assert detail["events"][1]["volume"] == 0.25 and detail["anomaly_records"] == []
    assert gw.client.get("/api/v1/positions/metacopier/nobody/none", headers=reader).json()["code"] == "not_found"
    # the gauges are measured once a second
    wait_for(lambda: metric(gw, "gateway_positions", source="pipsync", state="closed") == 1, 5, "the gauge")
    assert metric(gw, "gateway_positions", source="metacopier", state="partially_closed") == 1
    assert metric(gw, "gateway_positions", source="metacopier", state="open") == 0
    assert metric(gw, "gateway_ledger_lag_seconds") == 0


def test_an_anomaly_is_listed_counted_and_acknowledged(gw: RunningGateway) -> None:
    reader, writer = auth(gw, "reader", READER), auth(gw, "writer", WRITER)
    post(gw, "metacopier", metacopier.sample("position.closed", position="lost-open", volume=1.0))
    wait_for(lambda: gw.client.get("/api/v1/anomalies", headers=reader).json()["anomalies"], 5, "an anomaly")
    [anomaly] = gw.client.get("/api/v1/anomalies", params={"open": "true"}, headers=reader).json()["anomalies"]
    assert (anomaly["kind"], anomaly["position_id"], anomaly["open"]) == ("close_without_open", "lost-open", True)
    assert [p["position_id"] for p in positions(gw, reader, anomalous="true")] == ["lost-open"]
    assert metric(gw, "gateway_ledger_anomalies_total", source="metacopier", kind="close_without_open") == 1
    assert metric(gw, "gateway_ledger_anomalies_total", source="metacopier", kind="overclosed") == 0

    url = f"/api/v1/anomalies/{anomaly['id']}/ack"
    assert gw.client.post(url, json={"note": "x"}, headers=reader).json()["code"] == "insufficient_scope"
    for bad in (b"not json", b'{"note": ""}', b'{"note": 5}', b"[]"):
        r = gw.client.post(url, content=bad, headers=writer)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), bad
    assert gw.client.post(url, content=b'{"note": "' + b"x" * 9000 + b'"}', headers=writer).status_code == 413
    assert gw.client.post("/api/v1/anomalies/999999/ack", json={"note": "x"}, headers=writer).status_code == 404
    r = gw.client.post(url, json={"note": "the open was sent before we went live"}, headers=writer)
    assert r.status_code == 200 and r.json()["note"] == "the open was sent before we went live"
    assert r.json()["open"] is False and r.json()["acknowledged_at"] is not None
    assert gw.client.get("/api/v1/anomalies", params={"open": "true"}, headers=reader).json()["anomalies"] == []
    [listed] = gw.client.get("/api/v1/anomalies", params={"open": "false"}, headers=reader).json()["anomalies"]
    assert listed["id"] == anomaly["id"]  # acknowledged: still listed, marked as such
    assert positions(gw, reader, anomalous="true") == []


def test_paging_and_bad_parameters(gw: RunningGateway) -> None:
    reader = auth(gw, "reader", READER)
    for n in range(5):
        post(gw, "metacopier", metacopier.sample("position.opened", position=f"p{n}"))
    wait_for(lambda: len(positions(gw, reader)) == 5, 5, "five positions")
    seen, cursor = [], None
    while True:
        page = gw.client.get("/api/v1/positions", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                             headers=reader).json()
        seen += [p["position_id"] for p in page["positions"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == ["p4", "p3", "p2", "p1", "p0"]
    events_cursor = gw.client.get("/api/v1/events", params={"limit": 1}, headers=reader).json()["next_cursor"]
    for params in ({"state": "gone"}, {"anomalous": "yes"}, {"limit": "0"}, {"cursor": events_cursor},
                   {"cursor": "forged"}):
        r = gw.client.get("/api/v1/positions", params=params, headers=reader)
        assert r.status_code == 400 and r.json()["code"] in ("invalid_parameter", "invalid_cursor"), params
    assert gw.client.get("/api/v1/anomalies", params={"kind": "odd"}, headers=reader).status_code == 400
    assert httpx.get(f"{gw.url}/api/v1/positions").status_code == 401
