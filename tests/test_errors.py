"""Problems are rendered in one place (gateway/errors.py): every way the app answers with one gives
the same body, and the headers each case needs (Retry-After, Allow, WWW-Authenticate) and no others.
Through the real app over a socket: ingest (raw ASGI), Starlette's routes and the read API (the
exception handlers), the guarded protocol (bytes on the transport) and the WebSocket refusal."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway.config import Config, parse_config
from gateway.errors import CODES, GatewayError, problem
from tests.conftest import MC_BODY, RunningGateway, mc_sign, source_table

READER_SECRET = "reader-secret-0123456789abcdef"
OAUTH_CODES = {"invalid_client", "invalid_request", "unsupported_grant_type", "invalid_scope"}
CHALLENGE_HEADERS = {"allow", "retry-after", "www-authenticate"}


@pytest.fixture
def gw(tmp_path: Path, serve: Callable[[Config], RunningGateway]) -> RunningGateway:
    """One source per case: open, rate-limited to one request per 100 s; an API client; a small head cap."""
    return serve(parse_config({
        "sources": [source_table("metacopier", "metacopier"),
                    source_table("limited", "metacopier", rate_limit=0.01, rate_burst=1, allow_shared_secret=True)],
        "store": {"path": str(tmp_path / "gateway.db")},
        "clients": [{"id": "reader", "secret": READER_SECRET, "scopes": ["events:read"]}],
        "server": {"max_header_bytes": 4096},
    }, origin="test.toml", base_dir=tmp_path))


def assert_problem(r: httpx.Response, status: int, code: str, **headers: str) -> dict[str, Any]:
    """The problem+json every path renders, with exactly `headers` among Allow, Retry-After and
    WWW-Authenticate (keyword names with '_' for '-')."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    expected = {"type": f"urn:webhook-gateway:problem:{code}", "title": CODES[code][1], "status": status,
                "code": code, "request_id": r.headers["x-request-id"]}
    assert {k: body[k] for k in expected} == expected
    assert body["detail"]
    assert ("error" in body) == (code in OAUTH_CODES)
    wanted = {name.replace("_", "-"): value for name, value in headers.items()}
    assert {k: v for k, v in r.headers.items() if k in CHALLENGE_HEADERS} == wanted
    return body


def test_retry_after_when_the_sender_should_try_again(gw: RunningGateway) -> None:
    assert gw.post("/hooks/limited", MC_BODY, mc_sign(MC_BODY)).status_code == 200
    limited = gw.post("/hooks/limited", MC_BODY, mc_sign(MC_BODY))
    assert_problem(limited, 429, "rate_limited", retry_after="100")  # the bucket refills in 100 s


def test_allow_on_every_405(gw: RunningGateway) -> None:
    assert_problem(gw.client.get("/hooks/metacopier"), 405, "method_not_allowed", allow="POST")  # ingest
    healthz = gw.client.post("/healthz")  # Starlette's router (it lists a route's methods in any order)
    assert_problem(healthz, 405, "method_not_allowed", allow=healthz.headers.get("allow", "missing"))
    assert set(healthz.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert_problem(gw.client.get("/oauth/token"), 405, "method_not_allowed", allow="POST")  # the API
    head = gw.client.head("/hooks/metacopier")
    assert head.status_code == 405 and head.headers["allow"] == "POST" and head.content == b""


def test_www_authenticate_on_the_api_only(gw: RunningGateway) -> None:
    api = gw.client
    assert_problem(api.get("/api/v1/events"), 401, "unauthorized", www_authenticate="Bearer")
    assert_problem(api.get("/api/v1/events", headers={"Authorization": "Bearer nope"}), 401, "invalid_token",
                   www_authenticate='Bearer error="invalid_token"')
    assert_problem(api.get("/api/v1/stream"), 401, "unauthorized", www_authenticate="Bearer")  # the SSE stream
    token = api.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "reader",
                                           "client_secret": READER_SECRET}).json()["access_token"]
    assert_problem(api.post("/api/v1/deliveries/1/retry", headers={"Authorization": f"Bearer {token}"}), 403,
                   "insufficient_scope", www_authenticate='Bearer error="insufficient_scope"')
    # the token endpoint: a Basic challenge for failed Basic credentials, none for a failed form (a 400)
    assert_problem(api.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=("reader", "wrong")),
                   401, "invalid_client", www_authenticate="Basic")
    assert_problem(api.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "reader",
                                                  "client_secret": "wrong"}), 400, "invalid_client")
    # a webhook's signature is not an HTTP authentication scheme: no challenge
    assert_problem(gw.post("/hooks/metacopier", MC_BODY, mc_sign(b"other")), 401, "bad_signature")
    assert_problem(gw.post("/hooks/metacopier", MC_BODY), 401, "missing_signature")


def test_errors_raised_by_routes_and_the_router_render_alike(gw: RunningGateway) -> None:
    assert assert_problem(gw.client.get("/nothing-here"), 404, "not_found")["detail"] == "Not Found"
    assert_problem(gw.post("/hooks/nope", MC_BODY, mc_sign(MC_BODY)), 404, "unknown_source")
    token = gw.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "reader",
                                                 "client_secret": READER_SECRET}).json()["access_token"]
    r = gw.client.get("/api/v1/events/99", headers={"Authorization": f"Bearer {token}"})
    assert assert_problem(r, 404, "not_found")["detail"] == "no event 99"


def test_the_guarded_protocol_writes_the_same_problem(gw: RunningGateway) -> None:
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 5000 + b"\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):  # the protocol closes the connection after its answer
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers.pop("content-length") == str(len(body))
    request_id = headers.pop("x-request-id")
    assert re.fullmatch(r"[0-9a-f]{16}", request_id)
    assert headers == {"content-type": "application/problem+json", "connection": "close"}
    assert orjson.loads(body) == {
        "type": "urn:webhook-gateway:problem:header_too_large", "title": "Request header too large",
        "status": 431, "detail": "the request line and headers exceed 4096 bytes", "code": "header_too_large",
        "request_id": request_id,
    }


def test_a_refused_websocket_is_closed_by_the_same_handler(gw: RunningGateway,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "gateway.http"), pytest.raises(InvalidStatus) as refused, \
            connect(gw.url.replace("http://", "ws://") + "/api/v1/ws"):
        pass
    assert refused.value.response.status_code == 403  # closed before accept: uvicorn answers 403
    assert "websocket refused: unauthorized: send Authorization" in caplog.text


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_code_renders_its_own_status_and_title(code: str) -> None:
    status, headers, body = problem(GatewayError(code, "what happened"), "0123456789abcdef")
    assert status == CODES[code][0]
    assert orjson.loads(body)["title"] == CODES[code][1]
    # headers only when a case calls for them: a challenge for the API's own 401 and 403 codes
    assert {name for name, _ in headers} <= {b"www-authenticate"}
