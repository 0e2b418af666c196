"""The token endpoint and tokens through the real app over HTTP, issue 13: a rotated client
secret revokes the tokens issued under the old one (item 7); failed guesses at /oauth/token are
throttled per client id and per address, logged as rejections and counted (item 5)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Config, parse_config
from tests.conftest import RunningGateway, source_table

Serve = Callable[..., RunningGateway]
SECRET = "reader-secret-0123456789abcdef"
ROTATED = "reader-rotated-secret-0123456789"


def config_data(folder: Path, secret: str = SECRET, **api: Any) -> dict[str, Any]:
    return {"sources": [source_table("metacopier", "metacopier")], "store": {"path": str(folder / "gateway.db")},
            "api": api, "clients": [{"id": "reader", "secret": secret, "scopes": ["events:read"]}]}


def config(folder: Path, secret: str = SECRET, **api: Any) -> Config:
    return parse_config(config_data(folder, secret, **api), origin="test.toml", base_dir=folder)


def token_request(gw: RunningGateway, secret: str, client_id: str = "reader",
                  headers: dict[str, str] | None = None) -> httpx.Response:
    return gw.client.post("/oauth/token", headers=headers or {},
                          data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})


def events(gw: RunningGateway, token: str) -> httpx.Response:
    return gw.client.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})


# --- item 7 ------------------------------------------------------------------------------------

def test_rotating_a_clients_secret_revokes_the_tokens_issued_under_the_old_one(tmp_path: Path, serve: Serve) -> None:
    gw = serve(config(tmp_path))
    old = token_request(gw, SECRET).json()["access_token"]
    assert events(gw, old).status_code == 200
    gw.__exit__()

    gw = serve(config(tmp_path, ROTATED))  # the same signing key: tokens survive a restart...
    r = events(gw, old)
    assert r.status_code == 401 and r.json()["code"] == "invalid_token"  # ...but not a new secret
    assert "secret has changed" in r.json()["detail"]
    assert token_request(gw, SECRET).status_code == 400
    new = token_request(gw, ROTATED).json()["access_token"]
    assert events(gw, new).status_code == 200
    gw.__exit__()

    gw = serve(config(tmp_path, ROTATED))  # unchanged secret: the token outlives a restart
    assert events(gw, new).status_code == 200


# --- item 5 ------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def counted(gw: RunningGateway, reason: str) -> float:
    for family in text_string_to_metric_families(gw.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "gateway_token_failures_total" and sample.labels == {"reason": reason}:
                return sample.value
    raise AssertionError(f"no gateway_token_failures_total{{reason={reason!r}}}")


def test_failed_guesses_from_one_address_are_throttled_logged_and_counted(tmp_path: Path, serve: Serve) -> None:
    clock = FakeClock()
    gw = serve(config(tmp_path, token_failures_per_minute=3, public=True), clock=clock)
    for guess in range(3):
        r = token_request(gw, f"wrong-guess-{guess:020d}")
        assert r.status_code == 400 and r.json()["code"] == "invalid_client"
        clock.now += 1
    r = token_request(gw, SECRET)  # the right secret too: answering it would confirm the guess
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) == 57  # a minute after the oldest failure
    assert token_request(gw, SECRET, client_id="someone-else").status_code == 429  # the address is throttled

    clock.now += 57
    assert token_request(gw, SECRET).status_code == 200

    assert (counted(gw, "invalid_client"), counted(gw, "throttled")) == (3, 2)
    gw.flush()
    rejections = gw.client.get("/api/v1/rejections", params={"source": "/oauth/token"}).json()["rejections"]
    assert [r["code"] for r in rejections] == ["rate_limited"] * 2 + ["invalid_client"] * 3
    assert {r["remote_addr"] for r in rejections} == {"127.0.0.1"}
    assert "(reader)" in rejections[-1]["detail"] and "(an unknown client id)" in rejections[0]["detail"]
    assert all(r["body_sha256"] is None for r in rejections)
    assert SECRET not in str(rejections) and "wrong-guess" not in str(rejections)


def test_failed_guesses_at_one_client_id_from_many_addresses_are_throttled(tmp_path: Path, serve: Serve) -> None:
    clock = FakeClock()
    gw = serve(parse_config({**config_data(tmp_path, token_failures_per_minute=3),
                             "server": {"trusted_proxies": ["127.0.0.1/32"]}}, origin="test.toml", base_dir=tmp_path),
               clock=clock)

    def from_address(address: str, secret: str, client_id: str = "reader") -> httpx.Response:
        return token_request(gw, secret, client_id, headers={"X-Forwarded-For": address})

    for n in range(3):
        assert from_address(f"198.51.100.{n}", "wrong-secret-0123456789").status_code == 400
    r = from_address("203.0.113.9", SECRET)  # a fresh address, the right secret: the id is throttled
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 60
    assert from_address("203.0.113.9", "whatever-secret-0123", client_id="nobody").status_code == 400
    clock.now += 60
    assert from_address("203.0.113.9", SECRET).status_code == 200
    gw.flush()
    token = from_address("203.0.113.10", SECRET).json()["access_token"]
    rejections = gw.client.get("/api/v1/rejections", params={"source": "/oauth/token"},
                               headers={"Authorization": f"Bearer {token}"}).json()["rejections"]
    assert [r["remote_addr"] for r in rejections] == ["203.0.113.9"] * 2 + [f"198.51.100.{n}" for n in (2, 1, 0)]


def test_the_throttle_is_on_by_default(tmp_path: Path, serve: Serve) -> None:
    gw = serve(config(tmp_path))
    codes = [token_request(gw, f"wrong-guess-{n:020d}").status_code for n in range(12)]
    assert codes == [400] * 10 + [429] * 2
