"""The read API and the token endpoint through the real app over HTTP: tokens, every filter,
keyset pagination under live ingest, event detail, deliveries and retry, rejections, stats."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import orjson
import pytest
from click.testing import CliRunner

from gateway.app import GatewayApp
from gateway.auth import KEY_FILE, Tokens
from gateway.cli import main as cli
from gateway.config import Config, parse_config
from tests.conftest import MC_SECRET, TR_KEY, RunningGateway, mc_sign, ps_sign, source_table, tr_sign, wait_for

Serve = Callable[..., RunningGateway]
MakeConfig = Callable[..., Config]

READER_SECRET = "reader-secret-0123456789abcdef"
OPS_SECRET = "ops-secret-0123456789abcdefghij"
CLIENTS = [
    {"id": "reader", "secret": READER_SECRET, "scopes": ["events:read"]},
    {"id": "ops", "secret": OPS_SECRET, "scopes": ["events:read", "deliveries:write"]},
]
REQUEST_ID = re.compile(r"[0-9a-f]{16}")
OAUTH_CODES = {"invalid_client", "invalid_request", "unsupported_grant_type", "invalid_scope"}
EVENT_KEYS = {"id", "source", "scheme", "event_type", "entity_id", "dedup_key", "status", "conflicts_with", "account",
              "symbol", "received_at", "request_id", "attempt", "remote_addr", "quarantine_reason", "payload",
              "normalized"}
DELIVERY_KEYS = {"id", "event_id", "plugin", "source", "entity_id", "event_type", "status", "attempts",
                 "next_attempt_at", "created_at", "updated_at", "last_error"}


def build_config(folder: Path, *, clients: list[dict[str, Any]] | None = None, api: dict[str, Any] | None = None,
                 plugins: Iterable[dict[str, Any]] = (), extra_sources: Iterable[dict[str, Any]] = ()) -> Config:
    """A Config with one source per scheme (plus `extra_sources`), API clients and `[api]` options."""
    data = {
        "sources": [source_table("metacopier", "metacopier"), source_table("pipsync", "pipsync"),
                    source_table("tradrapi", "tradrapi"), *extra_sources],
        "store": {"path": str(folder / "gateway.db")},
        "plugins": list(plugins),
        "api": api or {},
        "clients": CLIENTS if clients is None else clients,
    }
    return parse_config(data, origin="test.toml", base_dir=folder)


@pytest.fixture
def api_config(tmp_path: Path) -> MakeConfig:
    """`build_config` in this test's own folder."""

    def make(**options: Any) -> Config:
        return build_config(tmp_path, **options)

    return make


class FakeClock:
    """An injectable clock for GatewayApp: stamps tokens, received_at and the stats window."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def iso_ms(timestamp: float) -> str:
    """The API's own spelling of a time (milliseconds, Z)."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert REQUEST_ID.fullmatch(r.headers["x-request-id"]), r.headers
    return r.json()


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = r.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["type"] == f"urn:webhook-gateway:problem:{code}"
    assert problem["title"] and problem["detail"]
    assert REQUEST_ID.fullmatch(r.headers["x-request-id"])
    assert problem["request_id"] == r.headers["x-request-id"]
    if code in OAUTH_CODES:
        assert problem["error"] == code  # RFC 6749 section 5.2
    else:
        assert "error" not in problem
    for secret in (READER_SECRET, OPS_SECRET, MC_SECRET, TR_KEY):
        assert secret not in r.text
    return problem


def token_response(gw: RunningGateway, client_id: str = "reader", secret: str = READER_SECRET,
                   scope: str | None = None) -> httpx.Response:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    if scope is not None:
        form["scope"] = scope
    return gw.client.post("/oauth/token", data=form)


def get_token(gw: RunningGateway, client_id: str = "reader", secret: str = READER_SECRET,
              scope: str | None = None) -> str:
    token: str = ok(token_response(gw, client_id, secret, scope))["access_token"]
    return token


@dataclass
class Caller:
    """Calls the API as one client (or anonymously when `token` is None)."""

    gw: RunningGateway
    token: str | None = None
    headers: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.gw.client.get(path, params=params, headers=self.headers)

    def post(self, path: str) -> httpx.Response:
        return self.gw.client.post(path, headers=self.headers)

    def json(self, path: str, **params: Any) -> Any:
        return ok(self.get(path, **params))

    def event_ids(self, **params: Any) -> list[int]:
        return [e["id"] for e in self.json("/api/v1/events", **params)["events"]]


def reader(gw: RunningGateway) -> Caller:
    return Caller(gw, get_token(gw))


def ops(gw: RunningGateway) -> Caller:
    return Caller(gw, get_token(gw, "ops", OPS_SECRET))


# --- sending real, signed webhooks ------------------------------------------------------------

def ingest(gw: RunningGateway, source: str, body: bytes, headers: dict[str, str]) -> list[int]:
    r = gw.post(f"/hooks/{source}", body, headers)
    assert r.status_code == 200, r.text
    assert all(e["status"] in ("stored", "quarantined") for e in r.json()["events"]), r.text
    return [e["id"] for e in r.json()["events"]]


def mc_body(event_type: str, position: str | None, account: str = "acc-1", symbol: str = "EURUSD") -> bytes:
    doc: dict[str, Any] = {"type": event_type, "accountId": account}
    if position is not None:
        doc["position"] = {"id": position, "symbol": symbol}
    return orjson.dumps(doc)


def mc(gw: RunningGateway, event_type: str, position: str | None, account: str = "acc-1",
       symbol: str = "EURUSD", source: str = "metacopier") -> int:
    body = mc_body(event_type, position, account, symbol)
    (event_id,) = ingest(gw, source, body, mc_sign(body))
    return event_id


def ps(gw: RunningGateway, event_type: str, position: str, account: str = "acc-1", symbol: str = "EURUSD") -> int:
    body = orjson.dumps({"id": f"evt-{position}", "type": event_type, "created": int(time.time()),
                         "data": {"position_id": position, "account_id": account, "symbol": symbol}})
    (event_id,) = ingest(gw, "pipsync", body, ps_sign(body))
    return event_id


def tr_member(pid: int, event_type: str = "open_position", account: int = 7, symbol: str = "EURUSD") -> dict[str, Any]:
    return {"brandId": 1, "serverId": 2, "accountId": account, "eventType": event_type, "platform": "MT5",
            "payload": {"id": pid, "symbol": symbol}}


def tr_batch(members: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"payload": members, "count": len(members), "attempts": 1})


def tr(gw: RunningGateway, members: list[dict[str, Any]], source: str = "tradrapi") -> list[int]:
    return ingest(gw, source, tr_batch(members), tr_sign())


def plugin(name: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "use": "tests.fanout_plugins:recorder", "retry_backoff_seconds": 0.01,
            "retry_backoff_max_seconds": 0.05, "options": options}


# --- one gateway shared by the tests that only read -------------------------------------------

BASIC_SECRET = "s%3A:/+%ecret-0123456789"  # ':', '%', '+' and '/' must survive the Basic encoding
SPACED_SECRET = "correct horse battery staple"
BASIC_CLIENTS = [{"id": "basic.client", "secret": BASIC_SECRET, "scopes": ["events:read"]},
                 {"id": "spacey", "secret": SPACED_SECRET, "scopes": ["events:read"]}]
Corpus = tuple[Caller, dict[str, int]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """One gateway for the read-only tests, with events that differ from `base` in one field each,
    sent as real signed webhooks."""
    config = build_config(tmp_path_factory.mktemp("corpus"), clients=[*CLIENTS, *BASIC_CLIENTS],
                          extra_sources=[source_table("mc-second", "metacopier", allow_shared_secret=True)])
    with RunningGateway(GatewayApp(config)) as gw:
        ids = {
            "base": mc(gw, "position.opened", "p1"),
            "closed": mc(gw, "position.closed", "p1"),  # type
            "history": mc(gw, "history.updated", None),  # type, and no symbol
            "acc2": mc(gw, "position.opened", "p2", account="acc-2"),  # account
            "gold": mc(gw, "position.opened", "p3", symbol="XAUUSD"),  # symbol
            "second": mc(gw, "position.opened", "p4", source="mc-second"),  # source, same scheme
            "ps": ps(gw, "trade.opened", "ps-1"),  # scheme
        }
        ids["tr_open"], ids["tr_close"] = tr(gw, [tr_member(901), tr_member(901, "close_position")])
        ids["junk"] = ingest(gw, "metacopier", b"not json", mc_sign(b"not json"))[0]  # status
        assert list(ids.values()) == sorted(ids.values())
        yield reader(gw), ids


ALL = ["base", "closed", "history", "acc2", "gold", "second", "ps", "tr_open", "tr_close", "junk"]


def stop_then_check(gw: RunningGateway, check: Callable[[], object]) -> None:
    """Stop the server, then check: a 500's traceback is logged by the server thread after the response
    is sent, and CPython 3.11 formats tracebacks with `ast`, which is not safe to race with pytest's own."""
    gw.__exit__()
    check()


# --- POST /oauth/token -----------------------------------------------------------------------

def test_token_from_form_body_grants_the_clients_scopes_and_works(corpus: Corpus) -> None:
    gw = corpus[0].gw
    r = token_response(gw, "ops", OPS_SECRET)
    doc = ok(r)
    assert r.headers["cache-control"] == "no-store"
    assert set(doc) == {"access_token", "token_type", "expires_in", "scope"}
    assert (doc["token_type"], doc["expires_in"], doc["scope"]) == ("Bearer", 3600, "events:read deliveries:write")
    listed = ok(gw.client.get("/api/v1/events", headers={"Authorization": f"Bearer {doc['access_token']}"}))
    assert len(listed["events"]) == len(ALL)
    # the scheme name is case-insensitive (RFC 6750 section 2.1)
    assert gw.client.get("/api/v1/events", headers={"Authorization": f"bearer {doc['access_token']}"}).status_code \
        == 200


def test_token_ttl_comes_from_the_config(api_config: MakeConfig, serve: Serve) -> None:
    gw = serve(api_config(api={"token_ttl_seconds": 120}))
    assert ok(token_response(gw))["expires_in"] == 120


def basic_token_request(gw: RunningGateway, credentials: str) -> httpx.Response:
    return gw.client.post("/oauth/token", content=b"grant_type=client_credentials",
                          headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
                                   "Content-Type": "application/x-www-form-urlencoded"})


def test_token_with_http_basic_and_form_encoded_credentials(corpus: Corpus) -> None:
    """RFC 6749 section 2.3.1: id and secret are form-urlencoded, then joined by ':' and base64-encoded."""
    gw = corpus[0].gw
    r = basic_token_request(gw, f"{quote('basic.client', safe='')}:{quote(BASIC_SECRET, safe='')}")
    doc = ok(r)
    assert doc["scope"] == "events:read" and r.headers["cache-control"] == "no-store"
    assert len(Caller(gw, doc["access_token"]).event_ids()) == len(ALL)
    assert_problem(basic_token_request(gw, f"basic.client:{quote(BASIC_SECRET + 'x', safe='')}"), 401,
                   "invalid_client")


def test_token_with_http_basic_decodes_plus_as_a_space(corpus: Corpus) -> None:
    """Form encoding (RFC 6749 Appendix B) turns a space into '+': unquote_plus, not unquote."""
    credentials = f"{quote_plus('spacey')}:{quote_plus(SPACED_SECRET)}"  # "correct+horse+battery+staple"
    assert ok(basic_token_request(corpus[0].gw, credentials))["token_type"] == "Bearer"


def test_token_scope_may_narrow_but_not_widen(corpus: Corpus) -> None:
    gw = corpus[0].gw
    narrowed = ok(token_response(gw, "ops", OPS_SECRET, scope="events:read"))
    assert narrowed["scope"] == "events:read"
    problem = assert_problem(Caller(gw, narrowed["access_token"]).post("/api/v1/deliveries/1/retry"), 403,
                             "insufficient_scope")
    assert "deliveries:write" in problem["detail"]
    for scope in ("deliveries:write", "events:read deliveries:write", "admin"):
        r = token_response(gw, "reader", READER_SECRET, scope=scope)
        assert "events:read" in assert_problem(r, 400, "invalid_scope")["detail"]  # what it may ask for
    assert ok(token_response(gw, "ops", OPS_SECRET, scope="deliveries:write events:read"))["scope"] \
        == "deliveries:write events:read"


@pytest.mark.parametrize(
    "form",
    [{"client_id": "reader", "client_secret": "wrong-secret-0123456789"},
     {"client_id": "nobody", "client_secret": READER_SECRET},
     {"client_id": "reader"},
     {"client_secret": READER_SECRET},
     {"client_id": "reader", "client_secret": ""}],
    ids=["wrong-secret", "unknown-id", "no-secret", "no-id", "empty-secret"],
)
def test_token_invalid_form_credentials_are_400_without_a_challenge(corpus: Corpus, form: dict[str, str]) -> None:
    """RFC 6749 section 5.2: only a client that authenticated with HTTP Basic is challenged (a browser
    would pop up a credentials dialog)."""
    r = corpus[0].gw.client.post("/oauth/token", data={"grant_type": "client_credentials", **form})
    assert_problem(r, 400, "invalid_client")
    assert "www-authenticate" not in r.headers


@pytest.mark.parametrize(
    ("basic", "form"),
    [
        ("!!not base64!!", {}),
        (base64.b64encode(b"no-colon-here").decode(), {}),
        (base64.b64encode(b"\xff\xfe:\xff").decode(), {}),
        (base64.b64encode(f"reader:{READER_SECRET}x".encode()).decode(), {}),
        (base64.b64encode(f"nobody:{READER_SECRET}".encode()).decode(), {}),
        (base64.b64encode(b"reader:wrong").decode(), {"client_id": "reader", "client_secret": READER_SECRET}),
    ],
    ids=["garbage", "no-colon", "not-utf8", "wrong-secret", "unknown-id", "basic-wins-over-form"],
)
def test_token_invalid_basic_credentials_are_401_with_a_basic_challenge(
    corpus: Corpus, basic: str, form: dict[str, str]
) -> None:
    r = corpus[0].gw.client.post("/oauth/token", data={"grant_type": "client_credentials", **form},
                                 headers={"Authorization": f"Basic {basic}"})
    assert_problem(r, 401, "invalid_client")
    assert r.headers["www-authenticate"] == "Basic"


def test_token_request_errors(corpus: Corpus) -> None:
    gw = corpus[0].gw
    for grant in ({"grant_type": "password"}, {"grant_type": "authorization_code"}, {}):
        r = gw.client.post("/oauth/token", data={**grant, "client_id": "reader", "client_secret": READER_SECRET})
        assert_problem(r, 400, "unsupported_grant_type")
    r = gw.client.post("/oauth/token", content=b"grant_type=client_credentials&client_id=\xff\xfe")
    assert_problem(r, 400, "invalid_request")
    r = gw.client.post("/oauth/token", content=b"grant_type=client_credentials&pad=" + b"x" * 9000)
    assert_problem(r, 400, "invalid_request")
    assert_problem(gw.client.get("/oauth/token"), 405, "method_not_allowed")


# --- who may call /api/v1 ---------------------------------------------------------------------

ENDPOINTS = [("GET", "/api/v1/events"), ("GET", "/api/v1/events/1"), ("GET", "/api/v1/deliveries"),
             ("GET", "/api/v1/rejections"), ("GET", "/api/v1/stats"), ("POST", "/api/v1/deliveries/1/retry")]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_needs_a_token(corpus: Corpus, method: str, path: str) -> None:
    r = corpus[0].gw.client.request(method, path)
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"


def tamper(text: str, index: int) -> str:
    """`text` with the character at `index` replaced by another URL-safe one."""
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1:]


def test_garbage_forged_and_tampered_tokens_are_invalid(corpus: Corpus) -> None:
    gw = corpus[0].gw
    config = gw.app.config
    good = get_token(gw)
    payload, stamp, signature = good.split(".")
    forged = Tokens(config.api, os.urandom(32)).issue(config.api.clients["ops"], ("events:read", "deliveries:write"))
    headers = [
        "Bearer garbage", "Bearer a.b.c", "Bearer", "Token " + good, "Basic " + good, good,
        f"Bearer {forged}",
        f"Bearer {tamper(good, 3)}",  # the claims
        f"Bearer {payload}.{tamper(stamp, 1)}.{signature}",  # the time of issue
        f"Bearer {payload}.{stamp}.{tamper(signature, 4)}",  # the signature
        f"Bearer {payload}.{stamp}",
    ]
    for header in headers:
        for method, path in ENDPOINTS:
            r = gw.client.request(method, path, headers={"Authorization": header})
            assert_problem(r, 401, "invalid_token")
            assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"', header
    assert len(Caller(gw, good).event_ids()) == len(ALL)  # the untampered token still works


def test_expired_token(api_config: MakeConfig, serve: Serve) -> None:
    clock = FakeClock(time.time())
    gw = serve(api_config(api={"token_ttl_seconds": 60}), clock=clock)
    caller = reader(gw)
    clock.now += 59
    assert caller.json("/api/v1/events") == {"events": [], "next_cursor": None}
    clock.now += 2
    r = caller.get("/api/v1/events")
    assert "expired" in assert_problem(r, 401, "token_expired")["detail"]
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'  # RFC 6750 section 3.1
    assert reader(gw).json("/api/v1/events")["events"] == []  # a fresh token works again


def test_insufficient_scope_for_retry(corpus: Corpus) -> None:
    r = corpus[0].post("/api/v1/deliveries/1/retry")
    assert_problem(r, 403, "insufficient_scope")
    assert r.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'


def test_tokens_survive_a_restart_but_not_the_removal_or_narrowing_of_their_client(
    api_config: MakeConfig, serve: Serve, tmp_path: Path
) -> None:
    gw = serve(api_config())
    key_file = tmp_path / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
    key = key_file.read_bytes()
    reader_token, ops_token = get_token(gw), get_token(gw, "ops", OPS_SECRET)
    gw.__exit__()

    # the same store folder: the key is reused; "reader" is gone, "ops" may only read now
    gw2 = serve(api_config(clients=[{"id": "ops", "secret": OPS_SECRET, "scopes": ["events:read"]}]))
    assert key_file.read_bytes() == key
    assert "no longer configured" in assert_problem(Caller(gw2, reader_token).get("/api/v1/events"), 401,
                                                    "invalid_token")["detail"]
    assert Caller(gw2, ops_token).json("/api/v1/events")["events"] == []
    assert_problem(Caller(gw2, ops_token).post("/api/v1/deliveries/1/retry"), 403, "insufficient_scope")
    assert_problem(token_response(gw2), 400, "invalid_client")


def test_public_api_reads_without_a_token_but_retry_still_needs_one(api_config: MakeConfig, serve: Serve) -> None:
    gw = serve(api_config(api={"public": True}))
    event_id = mc(gw, "position.opened", "pub-1")
    anonymous = Caller(gw)
    assert anonymous.event_ids() == [event_id]
    assert anonymous.json(f"/api/v1/events/{event_id}")["id"] == event_id
    assert anonymous.json("/api/v1/deliveries") == {"deliveries": []}
    assert anonymous.json("/api/v1/rejections") == {"rejections": []}
    assert anonymous.json("/api/v1/stats")["total"] == 1
    assert_problem(anonymous.post("/api/v1/deliveries/1/retry"), 401, "unauthorized")
    # a token that is sent is checked, even where none is needed
    assert_problem(Caller(gw, "garbage").get("/api/v1/events"), 401, "invalid_token")
    assert_problem(reader(gw).post("/api/v1/deliveries/1/retry"), 403, "insufficient_scope")


# --- GET /api/v1/events: shape and filters ----------------------------------------------------

def write_cli_config(config: Config, folder: Path) -> Path:
    path = folder / "cli.toml"
    path.write_text(f'[store]\npath = "{config.store.path}"\n[[sources]]\nname = "metacopier"\n'
                    f'scheme = "metacopier"\nsecret = "{MC_SECRET}"\n')
    return path


def test_events_have_the_cli_json_shape(api_config: MakeConfig, serve: Serve, tmp_path: Path) -> None:
    clock = FakeClock(float(int(time.time())) - 30.25)
    config = api_config()
    gw = serve(config, clock=clock)
    body = mc_body("position.opened", "shape-1", account="acc-9", symbol="XAUUSD")
    sent = gw.post("/hooks/metacopier", body, mc_sign(body)).json()
    clock.now += 1
    junk = b"not json"
    junk_id = ingest(gw, "metacopier", junk, mc_sign(junk))[0]
    clock.now += 1
    members = [tr_member(501), tr_member(502, "close_position", symbol="GBPUSD")]
    tr_ids = tr(gw, members)

    listed = reader(gw).json("/api/v1/events")
    assert listed["next_cursor"] is None
    events = listed["events"]
    assert [e["id"] for e in events] == [*reversed(tr_ids), junk_id, sent["events"][0]["id"]]
    assert all(set(e) == EVENT_KEYS for e in events)
    assert events[-1] == {
        "id": sent["events"][0]["id"], "source": "metacopier", "scheme": "metacopier",
        "event_type": "position.opened", "entity_id": "position:shape-1",
        "dedup_key": "metacopier:position.opened:shape-1",  # no openTime: the position id alone
        "status": "stored", "conflicts_with": None, "account": "acc-9", "symbol": "XAUUSD",
        "received_at": iso_ms(clock.now - 2), "request_id": sent["request_id"], "attempt": 1,
        "remote_addr": "127.0.0.1", "quarantine_reason": None,
        "payload": orjson.loads(body), "normalized": events[-1]["normalized"],
    }
    assert (events[-1]["normalized"]["kind"], events[-1]["normalized"]["position_id"],
            events[-1]["normalized"]["symbol"], events[-1]["normalized"]["event_id"]) == (
        "position.opened", "shape-1", "XAUUSD", sent["events"][0]["id"])
    quarantined = events[2]
    assert quarantined["normalized"] is None
    digest = hashlib.sha256(junk).hexdigest()
    assert (quarantined["status"], quarantined["event_type"], quarantined["payload"]) == ("quarantined", None, None)
    assert quarantined["entity_id"] == f"sha256-{digest}"
    assert quarantined["dedup_key"] == f"metacopier:-:#sha256-{digest}"  # named by its exact bytes
    assert quarantined["quarantine_reason"].startswith("not valid JSON")
    assert quarantined["received_at"] == iso_ms(clock.now - 1)
    close = events[0]
    assert (close["source"], close["scheme"], close["event_type"], close["entity_id"], close["account"],
            close["symbol"], close["payload"]) == ("tradrapi", "tradrapi", "close_position", "position:502", "7",
                                                   "GBPUSD", members[1])

    result = CliRunner().invoke(cli, ["events", "--config", str(write_cli_config(config, tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    assert [orjson.loads(line) for line in result.output.splitlines()] == events


ALL = ["base", "closed", "history", "acc2", "gold", "second", "ps", "tr_open", "tr_close", "junk"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ALL),
        ({"source": "mc-second"}, ["second"]),
        ({"source": "metacopier"}, ["base", "closed", "history", "acc2", "gold", "junk"]),
        ({"source": "nope"}, []),
        ({"scheme": "metacopier"}, ["base", "closed", "history", "acc2", "gold", "second", "junk"]),
        ({"scheme": "pipsync"}, ["ps"]),
        ({"scheme": "tradrapi"}, ["tr_open", "tr_close"]),
        ({"type": "position.*"}, ["base", "closed", "acc2", "gold", "second"]),
        ({"type": "position.opened"}, ["base", "acc2", "gold", "second"]),
        ({"type": "position.closed"}, ["closed"]),
        ({"type": "*_position"}, ["tr_open", "tr_close"]),
        ({"type": "trade.opened"}, ["ps"]),
        ({"type": "Position.*"}, []),  # globs are case-sensitive
        ({"account": "acc-2"}, ["acc2"]),
        ({"account": "7"}, ["tr_open", "tr_close"]),
        ({"account": "acc-1"}, ["base", "closed", "history", "gold", "second", "ps"]),
        ({"symbol": "XAUUSD"}, ["gold"]),
        ({"symbol": "EURUSD"}, ["base", "closed", "acc2", "second", "ps", "tr_open", "tr_close"]),
        ({"status": "quarantined"}, ["junk"]),
        ({"status": "stored"}, ALL[:-1]),
        ({"source": "metacopier", "type": "position.*", "account": "acc-1", "symbol": "EURUSD"}, ["base", "closed"]),
        ({"scheme": "metacopier", "status": "stored", "symbol": "EURUSD", "account": "acc-1"},
         ["base", "closed", "second"]),
    ],
    ids=lambda value: "&".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else "",
)
def test_each_filter_selects_exactly_its_events(
    corpus: Corpus, params: dict[str, str], expected: list[str]
) -> None:
    caller, ids = corpus
    want = [ids[name] for name in expected]
    assert caller.event_ids(**params) == want[::-1]  # newest first by default
    assert caller.event_ids(**params, order="newest") == want[::-1]
    assert caller.event_ids(**params, order="oldest") == want


def test_limit(corpus: Corpus) -> None:
    caller, ids = corpus
    page = caller.json("/api/v1/events", limit=3)
    assert [e["id"] for e in page["events"]] == [ids["junk"], ids["tr_close"], ids["tr_open"]]
    assert isinstance(page["next_cursor"], str)
    assert caller.event_ids(limit=1, order="oldest") == [ids["base"]]
    assert caller.event_ids(limit=1000) == [ids[n] for n in reversed(ALL)]


@pytest.mark.parametrize(
    ("name", "value"),
    [("limit", "0"), ("limit", "1001"), ("limit", "-1"), ("limit", "ten"), ("limit", ""), ("limit", "1.5"),
     ("order", "sideways"), ("order", "NEWEST"), ("status", "duplicate"), ("scheme", "stripe"),
     ("since", "yesterday"), ("since", "2026-13-01T00:00:00Z"), ("until", "1763633702"), ("until", "")],
)
def test_bad_event_parameters_are_400(corpus: Corpus, name: str, value: str) -> None:
    problem = assert_problem(corpus[0].get("/api/v1/events", **{name: value}), 400, "invalid_parameter")
    assert name in problem["detail"]


def test_superscript_digit_limit_is_400(api_config: MakeConfig, serve: Serve) -> None:
    """'²'.isdigit() is True but int('²') raises: this was an unhandled 500."""
    gw = serve(api_config())
    r = reader(gw).get("/api/v1/events", limit="²")
    stop_then_check(gw, lambda: assert_problem(r, 400, "invalid_parameter"))


def test_since_is_inclusive_and_until_exclusive(api_config: MakeConfig, serve: Serve) -> None:
    base = float(int(time.time())) - 100  # within the senders' timestamp tolerance
    clock = FakeClock(base)
    gw = serve(api_config(), clock=clock)
    ids = []
    for offset in (0, 10, 20, 30):
        clock.now = base + offset
        ids.append(mc(gw, "position.opened", f"t-{offset}"))
    caller = reader(gw)
    received = {e["id"]: e["received_at"] for e in caller.json("/api/v1/events")["events"]}
    assert [received[i] for i in ids] == [iso_ms(base + o) for o in (0, 10, 20, 30)]

    assert caller.event_ids(since=iso(base + 10), order="oldest") == ids[1:]
    assert caller.event_ids(since=iso(base + 10.000001), order="oldest") == ids[2:]
    assert caller.event_ids(until=iso(base + 20), order="oldest") == ids[:2]
    assert caller.event_ids(until=iso(base + 20.000001), order="oldest") == ids[:3]
    assert caller.event_ids(since=iso(base + 10), until=iso(base + 20)) == [ids[1]]
    assert caller.event_ids(since=iso(base + 20), until=iso(base + 20)) == []
    assert caller.event_ids(since=received[ids[3]]) == [ids[3]]  # a received_at the API gave is a boundary
    # other spellings of the same instant: an offset, and no zone at all (read as UTC)
    in_paris = datetime.fromtimestamp(base + 10, UTC).astimezone(timezone(timedelta(hours=2)))
    assert caller.event_ids(since=in_paris.isoformat(), order="oldest") == ids[1:]
    naive = datetime.fromtimestamp(base + 30, UTC).replace(tzinfo=None).isoformat()
    assert caller.event_ids(until=naive, order="oldest") == ids[:3]
    assert caller.event_ids(since=iso(base + 10), until=iso(base + 30), type="position.opened", limit=1) == [ids[2]]


# --- pagination ---------------------------------------------------------------------------------

def walk(caller: Caller, order: str, limit: int, between: Callable[[], None] = lambda: None
         ) -> list[list[int]]:
    """Every page of a listing, following next_cursor; `between` runs before each next page."""
    pages: list[list[int]] = []
    params: dict[str, Any] = {"order": order, "limit": limit}
    while True:
        page = caller.json("/api/v1/events", **params)
        pages.append([e["id"] for e in page["events"]])
        if page["next_cursor"] is None:
            return pages
        assert len(pages) < 100, "the listing does not end"
        assert len(page["events"]) == limit  # only a full page promises more
        between()
        params["cursor"] = page["next_cursor"]


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_pagination_while_new_events_arrive(api_config: MakeConfig, serve: Serve, order: str) -> None:
    gw = serve(api_config())
    initial = tr(gw, [tr_member(pid) for pid in range(1, 41)])
    assert initial == list(range(initial[0], initial[0] + 40))
    arrivals: list[int] = []

    def arrive() -> None:
        for _ in range(3):
            arrivals.append(mc(gw, "position.opened", f"live-{len(arrivals)}"))

    caller = reader(gw)
    pages = walk(caller, order, 7, arrive)
    seen = [event_id for page in pages for event_id in page]
    assert len(seen) == len(set(seen))  # no event twice
    if order == "newest":
        # exactly what existed when the first page was read, newest first, no gap
        assert seen == initial[::-1]
        assert [len(p) for p in pages] == [7, 7, 7, 7, 7, 5]
        assert len(arrivals) == 15
    else:
        # every event, the newcomers at the end, no gap
        everything = caller.event_ids(order="oldest", limit=1000)
        assert seen == everything == initial + arrivals
        assert len(arrivals) > 15 and all(len(p) == 7 for p in pages[:-1]) and len(pages[-1]) < 7


def test_a_listing_of_a_multiple_of_the_page_size_ends(api_config: MakeConfig, serve: Serve) -> None:
    gw = serve(api_config())
    ids = tr(gw, [tr_member(pid) for pid in range(1, 15)])
    caller = reader(gw)
    for order, expected in (("newest", ids[::-1]), ("oldest", ids)):
        pages = walk(caller, order, 7)
        assert [e for page in pages for e in page] == expected
        assert pages[-1] == [] or len(pages[-1]) == 7


def test_bad_cursors_are_400(api_config: MakeConfig, serve: Serve) -> None:
    config = api_config()
    gw = serve(config)
    tr(gw, [tr_member(pid) for pid in range(1, 11)])
    caller = reader(gw)
    first = caller.json("/api/v1/events", limit=3)
    cursor = first["next_cursor"]
    second = caller.event_ids(limit=3, cursor=cursor)
    assert second == [7, 6, 5]
    data, signature = cursor.split(".")
    for bad in (tamper(cursor, 0), tamper(cursor, len(data) // 2), data + "." + tamper(signature, 3),
                data, "not-a-cursor", "", Tokens(config.api, os.urandom(32)).cursor({"a": 8, "o": "newest"})):
        problem = assert_problem(caller.get("/api/v1/events", limit=3, cursor=bad), 400, "invalid_cursor")
        assert "cursor" in problem["detail"]
    # a cursor belongs to the order it was made for
    assert_problem(caller.get("/api/v1/events", limit=3, cursor=cursor, order="oldest"), 400, "invalid_cursor")
    oldest = caller.json("/api/v1/events", limit=3, order="oldest")["next_cursor"]
    assert caller.event_ids(limit=3, order="oldest", cursor=oldest) == [4, 5, 6]
    assert_problem(caller.get("/api/v1/events", limit=3, cursor=oldest), 400, "invalid_cursor")


# --- GET /api/v1/events/{id} ------------------------------------------------------------------

def test_event_detail_has_the_raw_body_the_headers_kept_and_the_deliveries(
    api_config: MakeConfig, serve: Serve
) -> None:
    gw = serve(api_config(plugins=[plugin("audit")]))
    body = b' \r\n{"payload": [ {"eventType":"open_position","accountId":7,"payload":{"id":77,"symbol":"EURUSD",' \
           b'"note":"caf\xc3\xa9"}},\n {"eventType":"close_position","accountId":7,"payload":{"id":77}} ],' \
           b' "attempts": 2}\n\n'
    headers = {**tr_sign(), "X-Custom": "kept", "Authorization": "Bearer not-to-be-kept", "Cookie": "session=1"}
    opened, closed = ingest(gw, "tradrapi", body, headers)
    mc_raw = mc_body("position.opened", "detail-1")
    mc_headers = mc_sign(mc_raw)
    (mc_id,) = ingest(gw, "metacopier", mc_raw, mc_headers)
    caller = reader(gw)
    wait_for(lambda: [d["status"] for d in caller.json("/api/v1/deliveries")["deliveries"]] == ["delivered"] * 3,
             what="deliveries to audit")

    listed = {e["id"]: e for e in caller.json("/api/v1/events")["events"]}
    detail = caller.json(f"/api/v1/events/{closed}")
    assert set(detail) == EVENT_KEYS | {"body_base64", "headers", "deliveries"}
    assert {k: v for k, v in detail.items() if k in EVENT_KEYS} == listed[closed]
    assert base64.b64decode(detail["body_base64"]) == body  # the whole request, byte for byte
    assert detail["payload"] == {"eventType": "close_position", "accountId": 7, "payload": {"id": 77}}
    assert detail["attempt"] == 2
    assert all(isinstance(h, list) and len(h) == 2 for h in detail["headers"])
    names = [name for name, _ in detail["headers"]]
    assert ["x-custom", "kept"] in detail["headers"]
    assert not {"authorization", "x-webhook-secret", "cookie"} & set(names)
    assert "not-to-be-kept" not in str(detail) and tr_sign()["x-webhook-secret"] not in str(detail)
    (delivery,) = detail["deliveries"]
    assert set(delivery) == DELIVERY_KEYS
    assert {k: delivery[k] for k in ("event_id", "plugin", "source", "entity_id", "event_type", "status",
                                     "attempts", "next_attempt_at", "last_error")} == {
        "event_id": closed, "plugin": "audit", "source": "tradrapi", "entity_id": "position:77",
        "event_type": "close_position", "status": "delivered", "attempts": 1, "next_attempt_at": None,
        "last_error": None}
    assert caller.json(f"/api/v1/events/{opened}")["body_base64"] == detail["body_base64"]

    mc_detail = caller.json(f"/api/v1/events/{mc_id}")
    assert base64.b64decode(mc_detail["body_base64"]) == mc_raw
    kept = dict(mc_detail["headers"])
    assert kept["x-metacopier-timestamp"] == mc_headers["X-MetaCopier-Timestamp"]
    assert kept["x-metacopier-delivery-attempt"] == "1"
    assert [d["plugin"] for d in mc_detail["deliveries"]] == ["audit"]


def test_event_detail_of_an_unknown_id_is_404(corpus: Corpus) -> None:
    caller, ids = corpus
    event_id = max(ids.values())
    assert caller.json(f"/api/v1/events/{event_id}")["id"] == event_id
    assert str(event_id + 1) in assert_problem(caller.get(f"/api/v1/events/{event_id + 1}"), 404,
                                               "not_found")["detail"]
    assert_problem(caller.get("/api/v1/events/0"), 404, "not_found")
    assert_problem(caller.get("/api/v1/events/abc"), 404, "not_found")


def test_an_id_beyond_64_bits_is_404(api_config: MakeConfig, serve: Serve) -> None:
    """Starlette's int convertor takes any digits; SQLite's integers stop at 2**63 - 1 (this was a 500,
    and a failed writer transaction, a 503, for a retry)."""
    gw = serve(api_config())
    caller = ops(gw)
    detail = caller.get(f"/api/v1/events/{2**64}")
    with httpx.Client(base_url=gw.url, headers=caller.headers) as client:  # a 500 closes the connection
        retry = client.post(f"/api/v1/deliveries/{2**64}/retry")

    def check() -> None:
        assert_problem(detail, 404, "not_found")
        assert_problem(retry, 404, "not_found")

    stop_then_check(gw, check)


# --- deliveries and retry ------------------------------------------------------------------------

def test_deliveries_listing_filters_and_retry(api_config: MakeConfig, serve: Serve) -> None:
    gw = serve(api_config(plugins=[plugin("desk", permanent=True), plugin("audit")]))
    first = mc(gw, "position.opened", "d-1")
    second = mc(gw, "position.opened", "d-2")
    caller = reader(gw)

    def listing(**params: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = caller.json("/api/v1/deliveries", **params)["deliveries"]
        return found

    wait_for(lambda: len(listing(status="dead")) == 2 and len(listing(status="delivered")) == 2,
             what="2 dead letters at desk, 2 deliveries to audit")
    everything = listing()
    assert all(set(d) == DELIVERY_KEYS for d in everything)
    ids = [d["id"] for d in everything]
    assert ids == sorted(ids, reverse=True) and len(ids) == 4  # newest first
    assert {(d["event_id"], d["plugin"], d["status"]) for d in everything} == {
        (first, "desk", "dead"), (second, "desk", "dead"), (first, "audit", "delivered"),
        (second, "audit", "delivered")}
    dead = listing(plugin="desk")
    assert [d["event_id"] for d in dead] == [second, first]
    assert all(d["status"] == "dead" and d["attempts"] == 1 and d["next_attempt_at"] is None
               and "permanent failure" in d["last_error"] for d in dead)
    assert [d["plugin"] for d in listing(status="dead")] == ["desk", "desk"]
    assert {d["plugin"] for d in listing(event_id=first)} == {"desk", "audit"}
    assert all(d["event_id"] == first for d in listing(event_id=first))
    assert listing(plugin="audit", status="dead") == []
    assert listing(plugin="nope") == []
    assert [d["id"] for d in listing(limit=1)] == ids[:1]
    for name, value in (("status", "failed"), ("event_id", "abc"), ("event_id", "0"), ("limit", "0"),
                        ("limit", "1001")):
        assert_problem(caller.get("/api/v1/deliveries", **{name: value}), 400, "invalid_parameter")

    desk = gw.app.plugins["desk"]
    desk.permanent = False  # type: ignore[attr-defined]  # the plugin is fixed; retry one delivery
    target = next(d for d in dead if d["event_id"] == first)
    assert_problem(caller.post(f"/api/v1/deliveries/{target['id']}/retry"), 403, "insufficient_scope")
    retried = ok(ops(gw).post(f"/api/v1/deliveries/{target['id']}/retry"), 202)
    assert set(retried) == DELIVERY_KEYS
    assert (retried["id"], retried["event_id"], retried["plugin"], retried["status"], retried["attempts"],
            retried["last_error"]) == (target["id"], first, "desk", "pending", 0, None)
    assert retried["next_attempt_at"] is not None
    wait_for(lambda: [e.id for e in desk.delivered] == [first], what="the retried delivery")  # type: ignore[attr-defined]
    wait_for(lambda: [(d["id"], d["status"]) for d in listing(plugin="desk")]
             == [(dead[0]["id"], "dead"), (target["id"], "delivered")], what="the retry recorded")
    assert_problem(ops(gw).post(f"/api/v1/deliveries/{max(ids) + 1}/retry"), 404, "not_found")
    assert_problem(caller.get(f"/api/v1/deliveries/{target['id']}/retry"), 405, "method_not_allowed")


# --- rejections ------------------------------------------------------------------------------

def test_rejections_are_listed_newest_first_with_their_forensics(api_config: MakeConfig, serve: Serve) -> None:
    gw = serve(api_config())
    bad_body = mc_body("position.opened", "forged-1")
    forged_headers = mc_sign(bad_body, "w" * 40)
    forged = gw.post("/hooks/metacopier", bad_body, forged_headers)
    malformed = gw.post("/hooks/tradrapi", b"{}", {"x-webhook-secret": TR_KEY})
    unknown = gw.post("/hooks/no-such-source", b"x" * 10, {})
    assert (forged.status_code, malformed.status_code, unknown.status_code) == (401, 401, 404)
    caller = reader(gw)
    wait_for(lambda: len(caller.json("/api/v1/rejections")["rejections"]) == 3, what="3 rejections recorded")

    found = caller.json("/api/v1/rejections")["rejections"]
    assert [r["request_id"] for r in found] == [unknown.headers["x-request-id"], malformed.headers["x-request-id"],
                                                forged.headers["x-request-id"]]
    assert all(set(r) == {"id", "received_at", "request_id", "source", "code", "detail", "remote_addr",
                          "header_names", "body_size", "body_sha256"} for r in found)
    newest, middle, oldest = found
    assert (oldest["source"], oldest["code"], oldest["remote_addr"]) == ("metacopier", "bad_signature", "127.0.0.1")
    assert oldest["detail"] == forged.json()["detail"]
    assert {"x-metacopier-signature", "x-metacopier-timestamp"} <= set(oldest["header_names"])
    assert (oldest["body_size"], oldest["body_sha256"]) == (len(bad_body), hashlib.sha256(bad_body).hexdigest())
    assert (middle["source"], middle["code"], middle["body_size"]) == ("tradrapi", "malformed_signature", 2)
    assert (newest["source"], newest["code"], newest["body_size"], newest["body_sha256"]) == (
        "no-such-source", "unknown_source", 10, None)
    assert [r["id"] for r in found] == sorted((r["id"] for r in found), reverse=True)

    assert [r["code"] for r in caller.json("/api/v1/rejections", source="tradrapi")["rejections"]] \
        == ["malformed_signature"]
    assert [r["source"] for r in caller.json("/api/v1/rejections", code="bad_signature")["rejections"]] \
        == ["metacopier"]
    assert caller.json("/api/v1/rejections", source="metacopier", code="unknown_source")["rejections"] == []
    assert [r["id"] for r in caller.json("/api/v1/rejections", limit=2)["rejections"]] == [newest["id"], middle["id"]]
    assert_problem(caller.get("/api/v1/rejections", limit="0"), 400, "invalid_parameter")
    text = caller.get("/api/v1/rejections").text
    assert forged_headers["X-MetaCopier-Signature"] not in text  # never a header value
    assert TR_KEY not in text and "forged-1" not in text


# --- stats -------------------------------------------------------------------------------------

HOUR = 3600.0


def test_stats_counts_by_source_type_and_status_in_a_window(api_config: MakeConfig, serve: Serve) -> None:
    now = 1_790_000_000.0  # TradrAPI has no timestamp, so its events can be received at any time
    clock = FakeClock(now - 25 * HOUR)
    gw = serve(api_config(extra_sources=[source_table("tr-second", "tradrapi", allow_shared_secret=True)]), clock=clock)
    tr(gw, [tr_member(1)])
    clock.now = now - 2 * HOUR
    tr(gw, [tr_member(2), tr_member(3), tr_member(2, "close_position")])
    ingest(gw, "tradrapi", b"junk", tr_sign())
    clock.now = now - HOUR
    tr(gw, [tr_member(4)], source="tr-second")
    clock.now = now
    caller = reader(gw)

    def counts(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
        return sorted((c["source"], c["event_type"] or "", c["status"], c["count"]) for c in doc["counts"])

    default = caller.json("/api/v1/stats")
    assert set(default) == {"since", "until", "counts", "total"}
    assert (default["since"], default["until"]) == (iso_ms(now - 24 * HOUR), iso_ms(now))
    assert counts(default) == [("tr-second", "open_position", "stored", 1),
                               ("tradrapi", "", "quarantined", 1),
                               ("tradrapi", "close_position", "stored", 1),
                               ("tradrapi", "open_position", "stored", 2)]
    assert next(c for c in default["counts"] if c["status"] == "quarantined")["event_type"] is None
    assert default["total"] == 5

    # since inclusive, until exclusive
    window = caller.json("/api/v1/stats", since=iso(now - 25 * HOUR), until=iso(now - 2 * HOUR))
    assert (window["since"], window["until"]) == (iso_ms(now - 25 * HOUR), iso_ms(now - 2 * HOUR))
    assert counts(window) == [("tradrapi", "open_position", "stored", 1)] and window["total"] == 1
    assert caller.json("/api/v1/stats", since=iso(now - 25 * HOUR + 0.001))["total"] == 5
    everything = caller.json("/api/v1/stats", since=iso(now - 30 * HOUR), until=iso(now + 1))
    assert everything["total"] == 6
    # since defaults to until - 24 h: the first event is at that very instant, the last at until
    assert caller.json("/api/v1/stats", until=iso(now - HOUR))["total"] == 5
    assert caller.json("/api/v1/stats", since=iso(now), until=iso(now - HOUR)) == {
        "since": iso_ms(now), "until": iso_ms(now - HOUR), "counts": [], "total": 0}
    for name in ("since", "until"):
        assert_problem(caller.get("/api/v1/stats", **{name: "last week"}), 400, "invalid_parameter")


def test_stats_since_the_epoch_counts_everything(api_config: MakeConfig, serve: Serve) -> None:
    """since=1970-01-01T00:00:00Z is 0.0, which `_time(...) or default` used to replace by until - 24 h."""
    now = 1_790_000_000.0
    clock = FakeClock(now - 72 * HOUR)
    gw = serve(api_config(), clock=clock)
    tr(gw, [tr_member(1)])
    clock.now = now
    doc = reader(gw).json("/api/v1/stats", since="1970-01-01T00:00:00Z")
    assert (doc["since"], doc["total"]) == ("1970-01-01T00:00:00.000Z", 1)


# --- request ids ---------------------------------------------------------------------------------

def test_every_response_has_its_own_request_id(api_config: MakeConfig, serve: Serve) -> None:
    gw = serve(api_config(plugins=[plugin("audit")]))
    event_id = mc(gw, "position.opened", "rid-1")
    caller = ops(gw)
    wait_for(lambda: len(caller.json("/api/v1/deliveries")["deliveries"]) == 1, what="a delivery")
    delivery_id = caller.json("/api/v1/deliveries")["deliveries"][0]["id"]
    responses = [
        token_response(gw), caller.get("/api/v1/events"), caller.get(f"/api/v1/events/{event_id}"),
        caller.get("/api/v1/deliveries"), caller.post(f"/api/v1/deliveries/{delivery_id}/retry"),
        caller.get("/api/v1/rejections"), caller.get("/api/v1/stats"),
        caller.get("/api/v1/events", limit="x"), caller.get("/api/v1/events/999"), gw.client.get("/api/v1/events"),
        token_response(gw, secret="wrong-secret-0123456789"),
    ]
    request_ids = [r.headers["x-request-id"] for r in responses]
    assert all(REQUEST_ID.fullmatch(rid) for rid in request_ids)
    assert len(set(request_ids)) == len(request_ids)
    for r in responses:
        if r.status_code >= 400:
            assert r.json()["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/api/v1/stats", "/api/v1/events"])
@pytest.mark.parametrize(("name", "value"), [
    ("until", "0001-01-01T00:00:00Z"), ("since", "9999-12-31T23:59:59-23:59"), ("since", "0001-01-01T00:00:00+00:01"),
    ("until", "9999-12-31T23:59:59Z"), ("since", "1969-12-31T23:59:59Z"),
])
def test_out_of_range_times_are_400_on_every_endpoint(api_config: MakeConfig, serve: Serve, path: str, name: str,
                                                      value: str) -> None:
    """Times that overflow on conversion or on stats' one-day window were a plain-text 500
    (issue 13, item 15); one parser checks every time parameter."""
    gw = serve(api_config())
    caller = reader(gw)
    problem = assert_problem(caller.get(path, **{name: value}), 400, "invalid_parameter")
    assert name in problem["detail"]
    assert caller.get(path, since="1970-01-01T00:00:00Z", until="9999-12-30T00:00:00+05:00").status_code == 200
