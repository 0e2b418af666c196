"""What the console reads and does, through the real app over a socket: sign-in options, events by
entity with their trading meaning, deliveries counted by the store and retried all at once, and
the overview, whose numbers must equal the store's (gateway/overview_api.py, gateway/api.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from gateway.config import Config
from gateway.schemes import metacopier
from tests.conftest import RunningGateway, mc_sign, send, source_table, wait_for

SECRET = "console-client-secret-0123"


@pytest.fixture
def gw(make_config: Callable[..., Config], serve: Callable[..., RunningGateway]) -> RunningGateway:
    return serve(make_config(
        plugins=[{"name": "crm", "use": "tests.fanout_plugins:recorder", "options": {"permanent": True}},
                 {"name": "idle", "use": "tests.fanout_plugins:recorder", "sources": ["nothing-matches"]}],
        clients=[{"id": "desk", "secret": SECRET, "scopes": ["events:read", "deliveries:write"]}],
    ))


def auth(gw: RunningGateway) -> dict[str, str]:
    r = gw.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "desk",
                                              "client_secret": SECRET})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_login_options_say_what_a_sign_in_page_needs(
        gw: RunningGateway, make_config: Callable[..., Config], serve: Callable[..., RunningGateway]) -> None:
    assert httpx.get(f"{gw.url}/api/v1/login-options").json() == {"public": False, "clients_configured": True}
    bare = serve(make_config(only=[source_table("metacopier", "metacopier")], api={"public": True}))
    assert bare.client.get("/api/v1/login-options").json() == {"public": True, "clients_configured": False}


def test_events_by_entity_carry_their_trading_meaning(gw: RunningGateway) -> None:
    headers = auth(gw)
    send(gw, metacopier.sample("position.opened", position="p-7", volume=1.5))
    send(gw, metacopier.sample("position.opened", position="p-8"))
    send(gw, metacopier.sample("position.closed", position="p-7", volume=1.5))
    found = gw.client.get("/api/v1/events", params={"entity": "position:p-7"}, headers=headers).json()["events"]
    assert [e["event_type"] for e in found] == ["position.closed", "position.opened"]
    assert [(e["normalized"]["kind"], e["normalized"]["volume"], e["normalized"]["side"]) for e in found] == [
        ("position.closed", 1.5, "buy"), ("position.opened", 1.5, "buy")]
    history = {"type": "history.updated", "accountId": "acc-1", "timestamp": "2026-11-20T10:00:00Z"}
    send(gw, history)
    [newest] = gw.client.get("/api/v1/events", params={"limit": 1}, headers=headers).json()["events"]
    assert newest["event_type"] == "history.updated" and newest["normalized"] is None


def test_dead_deliveries_are_counted_by_the_store_and_retried_at_once(gw: RunningGateway) -> None:
    headers = auth(gw)
    count = 30
    for n in range(count):
        send(gw, metacopier.sample("position.opened", position=f"d{n}"))

    def summary() -> dict[str, Any]:
        plugins = gw.client.get("/api/v1/deliveries/summary", headers=headers).json()["plugins"]
        return {p["plugin"]: p for p in plugins}

    wait_for(lambda: summary()["crm"]["dead"] == count, 20, "every delivery refused")
    assert summary()["idle"] == {"plugin": "idle", "pending": 0, "delivered": 0, "dead": 0, "configured": True,
                                 "oldest_pending_at": None}
    refused = gw.client.post("/api/v1/deliveries/retry", json={"plugin": "crm", "status": "dead"},
                             headers={**headers, "Authorization": "Bearer nope"})
    assert refused.status_code == 401
    for bad in ({"plugin": "crm"}, {"plugin": "crm", "status": "pending"}, {"status": "dead"}, []):
        r = gw.client.post("/api/v1/deliveries/retry", json=bad, headers=headers)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), bad
    r = gw.client.post("/api/v1/deliveries/retry", json={"plugin": "nope", "status": "dead"}, headers=headers)
    assert r.status_code == 404
    gw.app.plugins["crm"].permanent = False  # type: ignore[attr-defined]  # the plugin is fixed
    r = gw.client.post("/api/v1/deliveries/retry", json={"plugin": "crm", "status": "dead"}, headers=headers)
    assert (r.status_code, r.json()) == (202, {"plugin": "crm", "retried": count})
    wait_for(lambda: summary()["crm"]["delivered"] == count, 20, "every delivery made")
    assert summary()["crm"]["dead"] == 0
    dead_listed = gw.client.get("/api/v1/deliveries", params={"plugin": "crm", "event_type": "position.opened",
                                                              "source": "metacopier"}, headers=headers).json()
    assert len(dead_listed["deliveries"]) == count


def test_the_overview_equals_the_store(gw: RunningGateway) -> None:
    headers = auth(gw)
    for n in range(7):
        send(gw, metacopier.sample("position.opened", position=f"o{n}"))
    body = orjson.dumps({"type": "position.opened", "position": {"id": "late"}})
    sign = mc_sign(body, ts_ms=int((time.time() - 2) * 1000))  # a sender 2 s behind
    assert gw.post("/hooks/metacopier", body, sign).status_code == 200
    gw.post("/hooks/metacopier", b"{}", {"X-MetaCopier-Signature": "0" * 64})  # a rejection
    gw.flush()
    for window in ("15m", "1h", "24h", "7d"):
        r = gw.client.get("/api/v1/overview", params={"window": window}, headers=headers)
        assert r.status_code == 200, r.text
        data = r.json()
        assert len(data["buckets"]) == {"15m": 15, "1h": 60, "24h": 96, "7d": 168}[window]
        assert data["sources"] == ["metacopier", "pipsync", "tradrapi"] == list(data["events"])
        stored = sum(sum(counts) for counts in data["events"]["metacopier"].values())
        listed = gw.client.get("/api/v1/stats", params={"since": data["since"], "until": data["until"]},
                               headers=headers).json()
        assert stored == sum(c["count"] for c in listed["counts"] if c["source"] == "metacopier") == 8
        assert sum(sum(counts) for counts in data["rejections"]["metacopier"].values()) == 1
        assert data["latency_p99_ms"]["metacopier"] is not None and data["latency_p99_ms"]["metacopier"] < 5000
        skew = data["clock_skew_seconds"]["metacopier"]
        assert skew["max_abs"] == pytest.approx(2.0, abs=0.5)
        assert {d["plugin"] for d in data["deliveries"]} == {"crm", "idle"}
    assert gw.client.get("/api/v1/overview", params={"window": "1y"}, headers=headers).status_code == 400
