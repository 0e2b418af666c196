"""Tokens and cursors (gateway.auth), the signing key file, and the [api] / [[clients]] config."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from gateway._secret import Secret
from gateway.auth import KEY_FILE, FailureThrottle, Principal, Tokens, load_or_create_key
from gateway.config import ApiConfig, ClientConfig, Config, ConfigError, parse_config
from gateway.errors import GatewayError
from tests.conftest import source_table

READER = ClientConfig(id="reader", secret=Secret("reader-secret-0123456789"), scopes=("events:read",))
OPS = ClientConfig(id="ops", secret=Secret("ops-secret-0123456789abc"), scopes=("events:read", "deliveries:write"))
KEY = bytes(range(32))
T0 = 1_790_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def api(*clients: ClientConfig, ttl: int = 60) -> ApiConfig:
    return ApiConfig(token_ttl_seconds=ttl, clients=MappingProxyType({c.id: c for c in clients}))


def raises(code: str) -> pytest.RaisesExc[GatewayError]:
    return pytest.raises(GatewayError, match=f"^{code}: ")


def others(text: str) -> list[str]:
    """Every string that differs from `text` in one character, except the last one: the last
    character of an unpadded base64 signature carries bits that decoding drops."""
    return [text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1:] for i in range(len(text) - 1)]


# --- tokens --------------------------------------------------------------------------------

def test_issue_then_verify_gives_the_client_and_its_scopes() -> None:
    tokens = Tokens(api(READER, OPS), KEY, clock=FakeClock())
    assert tokens.verify(tokens.issue(OPS, ("events:read", "deliveries:write"))) == Principal(
        "ops", frozenset({"events:read", "deliveries:write"}))
    assert tokens.verify(tokens.issue(OPS, ("events:read",))) == Principal("ops", frozenset({"events:read"}))
    assert tokens.verify(tokens.issue(READER, ("events:read",))) == Principal("reader", frozenset({"events:read"}))


def test_a_token_survives_a_restart_with_the_same_key() -> None:
    token = Tokens(api(OPS), KEY, clock=FakeClock()).issue(OPS, OPS.scopes)
    assert Tokens(api(OPS), KEY, clock=FakeClock(T0 + 30)).verify(token).client_id == "ops"


def test_scopes_are_intersected_with_the_clients_current_scopes() -> None:
    token = Tokens(api(OPS), KEY, clock=FakeClock()).issue(OPS, OPS.scopes)
    narrowed = ClientConfig(id="ops", secret=OPS.secret, scopes=("events:read",))
    assert Tokens(api(narrowed), KEY, clock=FakeClock()).verify(token) == Principal("ops", frozenset({"events:read"}))
    # a token never gains a scope the client was given after it was issued
    read_only = Tokens(api(OPS), KEY, clock=FakeClock()).issue(OPS, ("events:read",))
    assert Tokens(api(OPS), KEY, clock=FakeClock()).verify(read_only).scopes == frozenset({"events:read"})


def test_a_removed_client_invalidates_its_tokens() -> None:
    token = Tokens(api(READER, OPS), KEY, clock=FakeClock()).issue(READER, READER.scopes)
    with raises("invalid_token"):
        Tokens(api(OPS), KEY, clock=FakeClock()).verify(token)


def test_a_rotated_secret_invalidates_the_tokens_issued_under_the_old_one() -> None:
    token = Tokens(api(READER), KEY, clock=FakeClock()).issue(READER, READER.scopes)
    rotated = ClientConfig(id="reader", secret=Secret("reader-rotated-0123456789"), scopes=READER.scopes)
    with raises("invalid_token"):
        Tokens(api(rotated), KEY, clock=FakeClock()).verify(token)
    assert Tokens(api(rotated), KEY, clock=FakeClock()).verify(
        Tokens(api(rotated), KEY, clock=FakeClock()).issue(rotated, READER.scopes)).client_id == "reader"
    # the token's payload is readable: it holds no plain hash of the secret, only a keyed one
    payload = token.split(".")[0]
    assert READER.secret.reveal() not in token and len(payload) < 120


def test_expiry_follows_the_injected_clock() -> None:
    clock = FakeClock()
    tokens = Tokens(api(READER, ttl=60), KEY, clock=clock)
    token = tokens.issue(READER, READER.scopes)
    clock.now = T0 + 59
    assert tokens.verify(token).client_id == "reader"
    clock.now = T0 + 61
    with raises("token_expired") as info:
        tokens.verify(token)
    assert info.value.status == 401
    clock.now = T0 + 30
    assert tokens.verify(tokens.issue(READER, READER.scopes)).client_id == "reader"  # a new one is fine


def test_a_token_from_another_key_or_tampered_with_is_invalid() -> None:
    tokens = Tokens(api(OPS), KEY, clock=FakeClock())
    token = tokens.issue(OPS, OPS.scopes)
    with raises("invalid_token"):
        Tokens(api(OPS), os.urandom(32), clock=FakeClock()).verify(token)
    for changed in others(token):
        with raises("invalid_token"):
            tokens.verify(changed)
    for garbage in ("", "garbage", "a.b", "a.b.c", token.rsplit(".", 1)[0], token + "x", "é.é.é"):
        with raises("invalid_token"):
            tokens.verify(garbage)
    with raises("invalid_token"):  # a cursor is signed too, but it is not a token
        tokens.verify(tokens.cursor({"c": "ops", "s": ["deliveries:write"]}))


def test_authenticate() -> None:
    tokens = Tokens(api(READER, OPS), KEY)
    assert tokens.authenticate("ops", OPS.secret.reveal()) is OPS
    for client_id, secret in (("ops", READER.secret.reveal()), ("ops", ""), ("nobody", OPS.secret.reveal()),
                              ("ops", OPS.secret.reveal() + " "), ("OPS", OPS.secret.reveal()), ("", "")):
        with raises("invalid_client") as info:
            tokens.authenticate(client_id, secret)
        assert info.value.status == 401


# --- cursors ----------------------------------------------------------------------------------

def test_cursor_round_trip() -> None:
    tokens = Tokens(api(), KEY)
    data = {"a": 12345, "o": "oldest"}
    cursor = tokens.cursor(data)
    assert tokens.read_cursor(cursor) == data
    assert Tokens(api(), KEY).read_cursor(cursor) == data  # the same key after a restart
    assert cursor.count(".") == 1  # a URL-safe payload and its signature
    assert all(c.isalnum() or c in "-_." for c in cursor)


def test_tampered_or_foreign_cursors_are_invalid() -> None:
    tokens = Tokens(api(), KEY)
    cursor = tokens.cursor({"a": 12345, "o": "newest"})
    for changed in others(cursor):
        with raises("invalid_cursor") as info:
            tokens.read_cursor(changed)
        assert info.value.status == 400
    for bad in ("", "x", cursor.split(".")[0], Tokens(api(), os.urandom(32)).cursor({"a": 1, "o": "newest"})):
        with raises("invalid_cursor"):
            tokens.read_cursor(bad)
    with raises("invalid_cursor"):  # a signed value that is not an object
        tokens.read_cursor(tokens.cursor([1, 2]))  # type: ignore[arg-type]
    with raises("invalid_cursor"):  # a token is not a cursor
        tokens.read_cursor(Tokens(api(OPS), KEY).issue(OPS, OPS.scopes))


# --- the /oauth/token failure throttle ---------------------------------------------------------

def test_failure_throttle_counts_failures_per_key_over_a_sliding_minute() -> None:
    throttle = FailureThrottle(limit=2)
    keys = (("client", "reader"), ("address", "192.0.2.1"))
    assert throttle.wait(keys, T0) == 0.0
    throttle.failed(keys, T0)
    throttle.failed(keys, T0 + 10)
    assert throttle.wait(keys, T0 + 10) == 50.0
    assert throttle.wait([("client", "reader")], T0 + 20) == 40.0
    assert throttle.wait([("client", "other"), ("address", "192.0.2.2")], T0 + 20) == 0.0
    assert throttle.wait(keys, T0 + 60) == 0.0  # the first failure left the window
    throttle.failed(keys, T0 + 60)
    assert throttle.wait(keys, T0 + 60) == 10.0  # the second one has not


def test_failure_throttle_forgets_the_least_recently_failed_keys_beyond_its_bound() -> None:
    throttle = FailureThrottle(limit=1, max_keys=3)
    for n in range(5):
        throttle.failed([("address", f"192.0.2.{n}")], T0 + n)
    assert [throttle.wait([("address", f"192.0.2.{n}")], T0 + 5) > 0 for n in range(5)] == [False, False, True,
                                                                                             True, True]


# --- the signing key ------------------------------------------------------------------------

def test_load_or_create_key_creates_a_private_file_once(tmp_path: Path) -> None:
    folder = tmp_path / "var" / "state"  # created if missing
    key = load_or_create_key(folder)
    path = folder / KEY_FILE
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.stat()
    assert load_or_create_key(folder) == key
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert load_or_create_key(tmp_path / "elsewhere") != key


def test_load_or_create_key_uses_an_existing_key(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"k" * 48)
    assert load_or_create_key(tmp_path) == b"k" * 48


# --- [api] and [[clients]] in the config ---------------------------------------------------

SECRET = "client-secret-0123456789"


def parse(*, clients: Any = None, api_table: Any = None, environ: Mapping[str, str] | None = None) -> Config:
    data: dict[str, Any] = {"sources": [source_table("metacopier", "metacopier")]}
    if clients is not None:
        data["clients"] = clients
    if api_table is not None:
        data["api"] = api_table
    return parse_config(data, origin="test.toml", base_dir=Path("/srv"), environ=environ or {})


def test_api_defaults() -> None:
    config = parse()
    assert config.api == ApiConfig(public=False, token_ttl_seconds=3600, clients=MappingProxyType({}))


def test_api_and_clients_parsed() -> None:
    config = parse(
        api_table={"public": True, "token_ttl_seconds": 60},
        clients=[{"id": "dash.board_1", "secret": SECRET},
                 {"id": "ops", "secret": "env:OPS_SECRET", "scopes": ["deliveries:write", "events:read"]},
                 {"id": "exactly-16", "secret": "x" * 16, "scopes": ["deliveries:write"]}],
        environ={"OPS_SECRET": "from-the-environment-0123"},
    )
    assert (config.api.public, config.api.token_ttl_seconds) == (True, 60)
    assert dict(config.api.clients) == {
        "dash.board_1": ClientConfig(id="dash.board_1", secret=Secret(SECRET), scopes=("events:read",)),
        "ops": ClientConfig(id="ops", secret=Secret("from-the-environment-0123"),
                            scopes=("deliveries:write", "events:read")),
        "exactly-16": ClientConfig(id="exactly-16", secret=Secret("x" * 16), scopes=("deliveries:write",)),
    }
    assert parse(api_table={"token_ttl_seconds": 604800}).api.token_ttl_seconds == 604800


def test_client_secrets_never_show() -> None:
    config = parse(clients=[{"id": "a", "secret": SECRET}, {"id": "b", "secret": "env:B_SECRET"}],
                   environ={"B_SECRET": "b-secret-from-env-0123"})
    for text in (repr(config), str(config), repr(config.api), repr(config.api.clients["a"])):
        assert SECRET not in text and "b-secret-from-env-0123" not in text
        assert "Secret('**********')" in text


@pytest.mark.parametrize(
    ("clients", "api_table", "key", "message"),
    [
        ([{"id": "a", "secret": SECRET, "scopes": ["events:write"]}], None, "clients[0] (a).scopes",
         "must be a non-empty list of events:read, deliveries:write; got ['events:write']"),
        ([{"id": "a", "secret": SECRET, "scopes": []}], None, "clients[0] (a).scopes",
         "must be a non-empty list of events:read, deliveries:write; got []"),
        ([{"id": "a", "secret": SECRET, "scopes": "events:read"}], None, "clients[0] (a).scopes",
         "must be list, got str 'events:read'"),
        ([{"id": "a", "secret": "x" * 15}], None, "clients[0] (a).secret", "must be at least 16 characters"),
        ([{"id": "a", "secret": SECRET}, {"id": "a", "secret": SECRET}], None, "clients[1] (a).id",
         "'a' is used by another client"),
        ([{"secret": SECRET}], None, "clients[0].id", "is required: 1-64 letters, digits, '_', '.' or '-'"),
        ([{"id": "has space", "secret": SECRET}], None, "clients[0].id",
         "is required: 1-64 letters, digits, '_', '.' or '-'"),
        ([{"id": "a"}], None, "clients[0] (a).secret", "must be a non-empty string"),
        ([{"id": "a", "secret": ""}], None, "clients[0] (a).secret", "must be a non-empty string"),
        ([{"id": "a", "secret": "env:MISSING_SECRET"}], None, "clients[0] (a).secret",
         "environment variable MISSING_SECRET is not set or empty"),
        ([{"id": "a", "secret": "env:EMPTY_SECRET"}], None, "clients[0] (a).secret",
         "environment variable EMPTY_SECRET is not set or empty"),
        ([{"id": "a", "secret": "env:SHORT_SECRET"}], None, "clients[0] (a).secret",
         "must be at least 16 characters"),
        ([{"id": "a", "secret": SECRET, "role": "admin"}], None, "clients[0].role",
         "unknown key (known: id, scopes, secret)"),
        (["a"], None, "clients[0]", "must be a table ([[clients]])"),
        ({"id": "a", "secret": SECRET}, None, "clients", "must be an array of tables ([[clients]])"),
        (None, {"token_ttl_seconds": 59}, "api.token_ttl_seconds", "must be between 60 and 604800, got 59"),
        (None, {"token_ttl_seconds": 604801}, "api.token_ttl_seconds", "must be between 60 and 604800, got 604801"),
        (None, {"token_ttl_seconds": "1h"}, "api.token_ttl_seconds", "must be int, got str '1h'"),
        (None, {"public": "yes"}, "api.public", "must be bool, got str 'yes'"),
        (None, {"token_failures_per_minute": 0}, "api.token_failures_per_minute", "must be between 1 and 10000, got 0"),
        (None, {"open": True}, "api.open", "unknown key (known: max_streams, max_streams_per_client, public, "
         "token_failures_per_minute, token_ttl_seconds)"),
        (None, [], "api", "must be a table, got list"),
    ],
    ids=["unknown-scope", "no-scopes", "scopes-not-list", "short-secret", "duplicate-id", "missing-id", "bad-id",
         "missing-secret", "empty-secret", "env-unset", "env-empty", "env-short", "unknown-key",
         "client-not-table", "clients-not-array", "ttl-too-short", "ttl-too-long", "ttl-not-int", "public-not-bool",
         "failures-zero", "api-unknown-key", "api-not-table"],
)
def test_api_config_errors(clients: Any, api_table: Any, key: str, message: str) -> None:
    environ = {"EMPTY_SECRET": "", "SHORT_SECRET": "too-short"}
    with pytest.raises(ConfigError) as info:
        parse(clients=clients, api_table=api_table, environ=environ)
    assert info.value.errors == [f"test.toml: {key}: {message}"]
    assert SECRET not in str(info.value)


def test_a_client_id_that_is_not_a_string() -> None:
    with pytest.raises(ConfigError) as info:
        parse(clients=[{"id": 7, "secret": SECRET}])
    assert "test.toml: clients[0].id: must be str, got int 7" in info.value.errors


def test_every_client_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse(clients=[{"id": "a", "secret": "short", "scopes": ["admin"]}, {"secret": SECRET}],
              api_table={"token_ttl_seconds": 1})
    assert info.value.errors == [
        "test.toml: api.token_ttl_seconds: must be between 60 and 604800, got 1",
        "test.toml: clients[0] (a).secret: must be at least 16 characters",
        "test.toml: clients[0] (a).scopes: must be a non-empty list of events:read, deliveries:write; got ['admin']",
        "test.toml: clients[1].id: is required: 1-64 letters, digits, '_', '.' or '-'",
    ]
