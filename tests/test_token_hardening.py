"""The token endpoint and tokens through the real app over HTTP, issue 13: a rotated client
secret revokes the tokens issued under the old one (item 7); failed guesses at /oauth/token are
throttled per client id and per address, logged as rejections and counted (item 5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from gateway.config import Config, parse_config
from tests.conftest import RunningGateway, source_table

Serve = Callable[..., RunningGateway]
SECRET = "reader-secret-0123456789abcdef"
ROTATED = "reader-rotated-secret-0123456789"


def config(folder: Path, secret: str = SECRET, **api: Any) -> Config:
    data = {"sources": [source_table("metacopier", "metacopier")], "store": {"path": str(folder / "gateway.db")},
            "api": api, "clients": [{"id": "reader", "secret": secret, "scopes": ["events:read"]}]}
    return parse_config(data, origin="test.toml", base_dir=folder)


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
