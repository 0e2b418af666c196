"""The browser's session cookie (no token in any URL), and the proof that no token reaches the
gateway's log lines, uvicorn's access log included, after every kind of stream."""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway import logs
from gateway.app import GatewayApp
from gateway.config import ClientConfig, Config
from gateway.server import GatewayServer, uvicorn_config
from tests.conftest import GATEWAY, MC_SECRET, RunningGateway, send, source_table, wait_for

SECRET = "session-client-secret-0123"
SIGN_IN = {"grant_type": "client_credentials", "client_id": "dash", "client_secret": SECRET}


@pytest.fixture
def gw(make_config: Callable[..., Config], serve: Callable[..., RunningGateway]) -> RunningGateway:
    return serve(make_config(only=[source_table("metacopier", "metacopier")],
                             server={"trusted_proxies": ["127.0.0.1"]},
                             clients=[{"id": "dash", "secret": SECRET, "scopes": ["events:read"]}]))


def sign_in(gw: RunningGateway, **headers: str) -> httpx.Response:
    r = gw.client.post("/api/v1/session", data=SIGN_IN, headers=headers)
    assert r.status_code == 200, r.text
    return r


def test_sign_in_sets_an_httponly_strict_cookie_and_never_shows_the_token(gw: RunningGateway) -> None:
    r = sign_in(gw)
    assert r.json() == {"client_id": "dash", "scope": "events:read", "expires_in": 3600}
    cookie = r.headers["set-cookie"]
    name, _, rest = cookie.partition("=")
    token = rest.partition(";")[0]
    assert name == "gateway_session" and token and token not in r.text
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/api/", "max-age=3600"} <= attributes
    assert "secure" not in attributes  # plain http, from a client that is no TLS proxy
    assert r.headers["cache-control"] == "no-store"

    gw.client.cookies.clear()
    answer = gw.client.get("/api/v1/session", headers={"Cookie": f"gateway_session={token}"})
    assert answer.status_code == 200 and answer.json()["client_id"] == "dash"
    assert gw.client.get("/api/v1/events", headers={"Cookie": f"gateway_session={token}"}).status_code == 200
    assert gw.client.get("/api/v1/events").status_code == 401

    out = gw.client.delete("/api/v1/session", headers={"Cookie": f"gateway_session={token}"})
    assert out.status_code == 204 and 'gateway_session=""' in out.headers["set-cookie"]
    assert "max-age=0" in out.headers["set-cookie"].lower()


def test_the_cookie_is_secure_when_a_trusted_proxy_says_tls(gw: RunningGateway) -> None:
    # 127.0.0.1 is a trusted proxy in this config; "https" is the first (the browser's) hop
    cookie = sign_in(gw, **{"X-Forwarded-Proto": "https"}).headers["set-cookie"]
    assert "secure" in {a.strip().lower() for a in cookie.split(";")}
    assert "secure" not in sign_in(gw, **{"X-Forwarded-Proto": "http"}).headers["set-cookie"].lower()


def test_an_untrusted_peer_cannot_ask_for_secure(make_config: Callable[..., Config],
                                                 serve: Callable[..., RunningGateway]) -> None:
    gw = serve(make_config(only=[source_table("metacopier", "metacopier")],
                           clients=[{"id": "dash", "secret": SECRET, "scopes": ["events:read"]}]))
    assert "secure" not in sign_in(gw, **{"X-Forwarded-Proto": "https"}).headers["set-cookie"].lower()


def test_a_failed_sign_in_sets_no_cookie(gw: RunningGateway) -> None:
    r = gw.client.post("/api/v1/session", data={**SIGN_IN, "client_secret": "wrong-secret-0000"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_client"
    assert "set-cookie" not in r.headers
    r = gw.client.get("/api/v1/session")
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"


def test_the_cookie_opens_the_sse_stream_and_the_websocket(gw: RunningGateway) -> None:
    token = sign_in(gw).cookies["gateway_session"]
    gw.client.cookies.clear()
    first = send(gw, {"type": "position.opened", "position": {"id": "c1"}})
    with gw.client.stream("GET", "/api/v1/stream?since=0", headers={"Cookie": f"gateway_session={token}"}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert wait_for(lambda: next(lines) == f"id: {first}", what="the event's id line")
    with connect(gw.url.replace("http", "ws") + "/api/v1/ws?since=0",
                 additional_headers={"Cookie": f"gateway_session={token}"}) as ws:
        assert f'"id":{first}' in str(ws.recv(timeout=5))


@pytest.mark.parametrize("path", ["/api/v1/stream", "/api/v1/events", "/api/v1/session"])
def test_a_token_in_the_url_is_refused_without_echoing_it(gw: RunningGateway, path: str) -> None:
    token = sign_in(gw).cookies["gateway_session"]
    gw.client.cookies.clear()
    r = gw.client.get(path, params={"access_token": token})
    assert r.status_code == 400 and r.json()["code"] == "invalid_parameter", r.text
    assert "access_token in the URL" in r.json()["detail"]
    assert token not in r.text and token not in str(r.headers)
    with pytest.raises(InvalidStatus), connect(gw.url.replace("http", "ws") + f"/api/v1/ws?access_token={token}"):
        pass


# --- item 6: no token in the gateway's log lines ----------------------------------------------


@pytest.fixture
def logged(make_config: Callable[..., Config], tmp_path: Path,
           caplog: pytest.LogCaptureFixture) -> Iterator[tuple[RunningGateway, list[str]]]:
    """The gateway with uvicorn's access log on (at INFO, like every gateway logger), and every
    token it issues."""
    config = make_config(only=[source_table("metacopier", "metacopier")],
                         clients=[{"id": "dash", "secret": SECRET, "scopes": ["events:read"]}])
    app = GatewayApp(config)
    issued: list[str] = []
    issue = app.tokens.issue

    def recording(client: ClientConfig, scopes: tuple[str, ...]) -> str:
        issued.append(issue(client, scopes))
        return issued[-1]

    app.tokens.issue = recording  # type: ignore[method-assign]
    gw = RunningGateway.__new__(RunningGateway)
    gw.app = app
    gw.server = GatewayServer(uvicorn_config(app, config.server, host="127.0.0.1", port=0, log_level="info",
                                             access_log=True, timeout_graceful_shutdown=2))
    gw.thread = threading.Thread(target=gw.server.run, daemon=True)
    with caplog.at_level(logging.INFO), gw:
        yield gw, issued


def test_no_token_in_any_log_line_after_every_kind_of_stream(
    logged: tuple[RunningGateway, list[str]], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    gw, issued = logged
    ws_url = gw.url.replace("http", "ws") + "/api/v1/ws?since=0"
    first = send(gw, {"type": "position.opened", "position": {"id": "l1"}})
    cookie = sign_in(gw).cookies["gateway_session"]  # the dashboard's way: a cookie
    gw.client.cookies.clear()
    assert gw.client.get("/api/v1/session", headers={"Cookie": f"gateway_session={cookie}"}).status_code == 200
    with gw.client.stream("GET", "/api/v1/stream?since=0", headers={"Cookie": f"gateway_session={cookie}"}) as response:
        lines = response.iter_lines()
        wait_for(lambda: next(lines) == f"id: {first}", what="the event over SSE with the cookie")
    with connect(ws_url, additional_headers={"Cookie": f"gateway_session={cookie}"}) as ws:
        assert f'"id":{first}' in str(ws.recv(timeout=5))
    bearer = gw.client.post("/oauth/token", data=SIGN_IN).json()["access_token"]  # every other client's way
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {bearer}"}) as ws:
        assert f'"id":{first}' in str(ws.recv(timeout=5))
    (tmp_path / "tail.toml").write_text(f"""
[store]
path = "{tmp_path / 'tail.db'}"
[[sources]]
name = "metacopier"
scheme = "metacopier"
secret = "{MC_SECRET}"
[[clients]]
id = "dash"
secret = "{SECRET}"
""")
    tail = subprocess.run([GATEWAY, "tail", "--config", str(tmp_path / "tail.toml"), "--url", gw.url, "--since", "0",
                           "--count", "1"], capture_output=True, timeout=30, check=False)
    assert tail.returncode == 0 and str(first).encode() in tail.stdout, tail.stderr
    assert len(issued) == 3 and cookie in issued and bearer in issued  # the session's, ours, gateway tail's

    formatters = [logs.JsonFormatter(), logs.TextFormatter()]
    logged = [formatter.format(record) for record in caplog.records for formatter in formatters]
    assert any("/api/v1/stream?since=0" in line for line in logged)  # the access log is on, with URLs
    assert any("WebSocket /api/v1/ws" in line for line in logged)
    leaked = [line for line in logged for token in issued if token in line or token[:40] in line]
    assert leaked == []
    assert not [token for token in issued if token.encode() in tail.stdout + tail.stderr]
