"""Loading the TOML config: the typed result, every validation error, secrets kept hidden."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from unittest.mock import patch

import pytest

from gateway._secret import Secret
from gateway.config import (
    Config,
    ConfigError,
    ServerConfig,
    SourceConfig,
    StoreConfig,
    load_config,
)
from gateway.schemes import tradrapi
from tests.conftest import MC_SECRET, MC_SECRET_NEW, PS_SECRET, TR_KEY

MC_NEXT = "mc-next-secret-from-the-environment-0123"
BEARER = "bearer-token-0123456789"

# One valid source per scheme, to pad configs whose errors are elsewhere.
MC_SOURCE = f"""
[[sources]]
name = "mc"
scheme = "metacopier"
secret = "{MC_SECRET}"
"""

FULL_CONFIG = f"""
[server]
host = "0.0.0.0"
port = 9000
max_body_bytes = 2048

[store]
path = "data/events.db"
synchronous = "NORMAL"
busy_timeout_ms = 250

[[sources]]
name = "mc"
scheme = "metacopier"
secrets = ["{MC_SECRET}", "env:MC_NEXT"]
tolerance_seconds = 60
auth = "hmac"
require_timestamp = false
allow_ips = ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7", "::1"]

[[sources]]
name = "mc-bearer"
scheme = "metacopier"
auth = "bearer"
secret = "{BEARER}"

[[sources]]
name = "mc.open"
scheme = "metacopier"
auth = "none"
allow_ips = ["127.0.0.1"]

[[sources]]
name = "ps_1"
scheme = "pipsync"
secret = "{PS_SECRET}"
dedup_fields = ["data.position_id", "id"]
tolerance_seconds = 604800

[[sources]]
name = "tr"
scheme = "tradrapi"
secrets = ["{TR_KEY}"]
tolerance_seconds = 1
"""


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str], Path]:
    """Write a config file into tmp_path and return its path."""

    def write(text: str, name: str = "gateway.toml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def config_errors(path: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def assert_error(errors: list[str], path: Path, key: str, fragment: str) -> None:
    """One message starts with the file, then names the key, then says what is wrong."""
    prefix = f"{path}: {key}: "
    matching = [e for e in errors if e.startswith(prefix)]
    assert matching, f"no error for {key!r} in {errors}"
    assert any(fragment in e for e in matching), f"{fragment!r} not in {matching}"


# --- a valid config ---------------------------------------------------------------------------


def test_full_config_loads_into_frozen_typed_objects(write: Callable[[str], Path]) -> None:
    path = write(FULL_CONFIG)
    config = load_config(path, environ={"MC_NEXT": MC_NEXT})

    net = ipaddress.ip_network
    expected = Config(
        sources={
            "mc": SourceConfig(
                name="mc",
                scheme="metacopier",
                secrets=(Secret(MC_SECRET), Secret(MC_NEXT)),
                tolerance_seconds=60,
                options={"auth": "hmac", "require_timestamp": False},
                allow_ips=(net("10.0.0.0/8"), net("2001:db8::/32"), net("192.168.1.7/32"), net("::1/128")),
            ),
            "mc-bearer": SourceConfig(name="mc-bearer", scheme="metacopier", secrets=(Secret(BEARER),),
                                      options={"auth": "bearer", "require_timestamp": True}),
            "mc.open": SourceConfig(name="mc.open", scheme="metacopier",
                                    options={"auth": "none", "require_timestamp": True},
                                    allow_ips=(net("127.0.0.1/32"),)),
            "ps_1": SourceConfig(name="ps_1", scheme="pipsync", secrets=(Secret(PS_SECRET),),
                                 tolerance_seconds=604800, dedup_fields=("data.position_id", "id")),
            "tr": SourceConfig(name="tr", scheme="tradrapi", secrets=(Secret(TR_KEY),), tolerance_seconds=1),
        },
        server=ServerConfig(host="0.0.0.0", port=9000, max_body_bytes=2048),
        store=StoreConfig(path=path.resolve().parent / "data" / "events.db", synchronous="NORMAL",
                          busy_timeout_ms=250),
        origin=str(path),
        base_dir=path.resolve().parent,
    )
    assert config == expected
    assert list(config.sources) == ["mc", "mc-bearer", "mc.open", "ps_1", "tr"]
    assert [s.reveal() for s in config.sources["mc"].secrets] == [MC_SECRET, MC_NEXT]
    assert config.sources["mc.open"].secrets == ()

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.store = StoreConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sources["mc"].secrets = ()  # type: ignore[misc]


def test_omitted_options_take_their_defaults(write: Callable[[str], Path]) -> None:
    path = write(MC_SOURCE)
    config = load_config(path, environ={})
    assert config.server == ServerConfig(host="127.0.0.1", port=8080, max_body_bytes=1024 * 1024)
    assert config.store == StoreConfig(path=path.resolve().parent / "var" / "gateway.db",
                                       synchronous="FULL", busy_timeout_ms=5000)
    assert config.sources["mc"] == SourceConfig(
        name="mc", scheme="metacopier", secrets=(Secret(MC_SECRET),), tolerance_seconds=300,
        allow_ips=(), dedup_fields=None, options={"auth": "hmac", "require_timestamp": True},
    )


def test_relative_store_path_resolves_against_the_config_folder(
    write: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write('[store]\npath = "var/x.db"\n' + MC_SOURCE, name="conf/gw.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path(os.path.relpath(path, elsewhere)), environ={})
    assert config.store.path == (tmp_path / "conf" / "var" / "x.db").resolve()
    assert config.store.path.is_absolute()


def test_absolute_store_path_is_kept(write: Callable[[str], Path], tmp_path: Path) -> None:
    absolute = tmp_path / "abs" / "g.db"
    path = write(f"[store]\npath = '{absolute}'\n" + MC_SOURCE, name="conf/gw.toml")
    assert load_config(path, environ={}).store.path == absolute


def test_synchronous_is_case_insensitive(write: Callable[[str], Path]) -> None:
    path = write('[store]\nsynchronous = "normal"\n' + MC_SOURCE)
    assert load_config(path, environ={}).store.synchronous == "NORMAL"


def test_secret_length_bounds_are_inclusive(write: Callable[[str], Path]) -> None:
    path = write(f"""
[[sources]]
name = "mc"
scheme = "metacopier"
secret = "{"m" * 32}"
[[sources]]
name = "mc-b"
scheme = "metacopier"
auth = "bearer"
secret = "{"b" * 16}"
[[sources]]
name = "ps"
scheme = "pipsync"
secret = "{"p" * 8}"
[[sources]]
name = "tr-short"
scheme = "tradrapi"
secret = "{"t" * 20}"
[[sources]]
name = "tr-long"
scheme = "tradrapi"
secret = "{"t" * 140}"
""")
    assert len(load_config(path, environ={}).sources) == 5


# --- env: secrets -----------------------------------------------------------------------------


def test_env_secret_is_read_from_the_environ_argument(
    write: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MC_NEXT", "from-the-process-environment-not-used-0123")
    path = write('[[sources]]\nname = "mc"\nscheme = "metacopier"\nsecret = "env:MC_NEXT"\n')
    config = load_config(path, environ={"MC_NEXT": MC_NEXT})
    assert config.sources["mc"].secrets == (Secret(MC_NEXT),)


@pytest.mark.parametrize("environ", [{}, {"MC_NEXT": ""}], ids=["missing", "empty"])
def test_missing_or_empty_env_secret_is_an_error(write: Callable[[str], Path], environ: dict[str, str]) -> None:
    path = write(f'[[sources]]\nname = "mc"\nscheme = "metacopier"\nsecrets = ["{MC_SECRET}", "env:MC_NEXT"]\n')
    errors = config_errors(path, environ)
    assert_error(errors, path, "sources[0] (mc).secrets[1]", "environment variable MC_NEXT is not set or empty")
    assert len(errors) == 1


def test_env_secret_is_length_checked(write: Callable[[str], Path]) -> None:
    path = write('[[sources]]\nname = "mc"\nscheme = "metacopier"\nsecret = "env:MC_NEXT"\n')
    errors = config_errors(path, {"MC_NEXT": "short-value"})
    assert_error(errors, path, "sources[0] (mc).secrets[0]", "is 11 characters; MetaCopier requires")
    assert "short-value" not in "\n".join(errors)


# --- every error names the file, the key and the problem --------------------------------------

SOURCE_ERRORS: list[tuple[str, str, str, str]] = [
    # (id, the [[sources]] table, key, fragment of the message)
    ("unknown-key-typo", f'name = "mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\nallow_ip = []',
     "sources[0].allow_ip", "unknown key (known: allow_ips, allow_shared_secret, auth,"),
    ("missing-name", f'scheme = "metacopier"\nsecret = "{MC_SECRET}"',
     "sources[0].name", "is required"),
    ("name-not-a-string", f'name = 7\nscheme = "metacopier"\nsecret = "{MC_SECRET}"',
     "sources[0].name", "must be str, got int 7"),
    ("bad-name-chars", f'name = "m c/x"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"',
     "sources[0].name", "'m c/x' must be 1-64 letters, digits, '_', '.' or '-'"),
    ("name-starts-with-dot", f'name = ".mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"',
     "sources[0].name", "must be 1-64 letters"),
    ("name-too-long", f'name = "{"m" * 65}"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"',
     "sources[0].name", "must be 1-64 letters"),
    ("unknown-scheme", f'name = "mc"\nscheme = "zapier"\nsecret = "{MC_SECRET}"',
     "sources[0] (mc).scheme", "must be one of metacopier, pipsync, tradrapi, got 'zapier'"),
    ("missing-scheme", f'name = "mc"\nsecret = "{MC_SECRET}"',
     "sources[0] (mc).scheme", "must be one of metacopier, pipsync, tradrapi, got None"),
    ("auth-on-pipsync", f'name = "ps"\nscheme = "pipsync"\nauth = "hmac"\nsecret = "{PS_SECRET}"',
     "sources[0] (ps).auth", "applies to metacopier sources only"),
    ("unknown-auth", f'name = "mc"\nscheme = "metacopier"\nauth = "basic"\nsecret = "{MC_SECRET}"',
     "sources[0] (mc).auth", "must be one of hmac, bearer, none, got 'basic'"),
    ("require-timestamp-on-tradrapi",
     f'name = "tr"\nscheme = "tradrapi"\nrequire_timestamp = false\nsecret = "{TR_KEY}"',
     "sources[0] (tr).require_timestamp", "applies to metacopier sources only"),
    ("require-timestamp-not-bool",
     f'name = "mc"\nscheme = "metacopier"\nrequire_timestamp = "yes"\nsecret = "{MC_SECRET}"',
     "sources[0] (mc).require_timestamp", "must be bool, got str 'yes'"),
    ("auth-none-without-allow-ips", 'name = "mc"\nscheme = "metacopier"\nauth = "none"',
     "sources[0] (mc).auth", 'auth = "none" is refused unless allow_ips limits who may send'),
    ("auth-none-with-secrets",
     f'name = "mc"\nscheme = "metacopier"\nauth = "none"\nallow_ips = ["10.0.0.1"]\nsecret = "{MC_SECRET}"',
     "sources[0] (mc).secrets", 'auth = "none" takes no secrets'),
    ("no-secrets", 'name = "ps"\nscheme = "pipsync"',
     "sources[0] (ps).secrets", "at least one secret is required"),
    ("empty-secrets-list", 'name = "ps"\nscheme = "pipsync"\nsecrets = []',
     "sources[0] (ps).secrets", "at least one secret is required"),
    ("secret-and-secrets", f'name = "ps"\nscheme = "pipsync"\nsecret = "{PS_SECRET}"\nsecrets = ["{PS_SECRET}"]',
     "sources[0] (ps).secrets", "give either secret or secrets, not both"),
    ("secrets-not-a-list", f'name = "ps"\nscheme = "pipsync"\nsecrets = "{PS_SECRET}"',
     "sources[0] (ps).secrets", "must be a list of strings"),
    ("secret-not-a-string", 'name = "ps"\nscheme = "pipsync"\nsecrets = [12345678]',
     "sources[0] (ps).secrets[0]", "must be a non-empty string"),
    ("secret-empty", 'name = "ps"\nscheme = "pipsync"\nsecret = ""',
     "sources[0] (ps).secrets[0]", "must be a non-empty string"),
    ("metacopier-hmac-secret-too-short",
     f'name = "mc"\nscheme = "metacopier"\nsecrets = ["{MC_SECRET}", "{"s" * 31}"]',
     "sources[0] (mc).secrets[1]", "is 31 characters; MetaCopier requires HMAC secrets of at least 32"),
    ("metacopier-bearer-token-too-short", f'name = "mc"\nscheme = "metacopier"\nauth = "bearer"\nsecret = "{"b" * 15}"',
     "sources[0] (mc).secrets[0]", "is 15 characters; use a bearer token of at least 16"),
    ("pipsync-secret-too-short", 'name = "ps"\nscheme = "pipsync"\nsecret = "whsec_1"',
     "sources[0] (ps).secrets[0]", "is 7 characters"),
    ("tradrapi-key-too-short", f'name = "tr"\nscheme = "tradrapi"\nsecret = "{"k" * 19}"',
     "sources[0] (tr).secrets[0]", "is 19 characters; TradrAPI keys are 20 to 140 characters"),
    ("tradrapi-key-too-long", f'name = "tr"\nscheme = "tradrapi"\nsecret = "{"k" * 141}"',
     "sources[0] (tr).secrets[0]", "is 141 characters; TradrAPI keys are 20 to 140 characters"),
    ("bad-cidr",
     f'name = "mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\nallow_ips = ["10.0.0.0/8", "10.0.0.0/33"]',
     "sources[0] (mc).allow_ips[1]", "'10.0.0.0/33' is not an IP address or CIDR"),
    ("bad-ip", f'name = "mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\nallow_ips = ["localhost"]',
     "sources[0] (mc).allow_ips[0]", "'localhost' is not an IP address or CIDR"),
    ("bad-ipv6", f'name = "mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\nallow_ips = ["2001:db8::/129"]',
     "sources[0] (mc).allow_ips[0]", "is not an IP address or CIDR"),
    ("allow-ips-not-a-list", f'name = "mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\nallow_ips = "10.0.0.1"',
     "sources[0] (mc).allow_ips", "must be list, got str '10.0.0.1'"),
    ("tolerance-zero", f'name = "mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\ntolerance_seconds = 0',
     "sources[0] (mc).tolerance_seconds", "must be between 1 and 604800, got 0"),
    ("tolerance-over-a-week", f'name = "mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\ntolerance_seconds = 604801',
     "sources[0] (mc).tolerance_seconds", "must be between 1 and 604800, got 604801"),
    ("tolerance-float", f'name = "mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\ntolerance_seconds = 30.5',
     "sources[0] (mc).tolerance_seconds", "must be int, got float 30.5"),
    ("tolerance-bool", f'name = "mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\ntolerance_seconds = true',
     "sources[0] (mc).tolerance_seconds", "must be int, got bool True"),
    ("dedup-fields-empty", f'name = "ps"\nscheme = "pipsync"\nsecret = "{PS_SECRET}"\ndedup_fields = []',
     "sources[0] (ps).dedup_fields", 'must be a non-empty list of paths like "position.id"'),
    ("dedup-fields-dot", f'name = "ps"\nscheme = "pipsync"\nsecret = "{PS_SECRET}"\ndedup_fields = ["."]',
     "sources[0] (ps).dedup_fields", "must be a non-empty list of paths"),
]


@pytest.mark.parametrize(("table", "key", "fragment"), [c[1:] for c in SOURCE_ERRORS],
                         ids=[c[0] for c in SOURCE_ERRORS])
def test_source_error(write: Callable[[str], Path], table: str, key: str, fragment: str) -> None:
    path = write(MC_SOURCE.replace('"mc"', '"first"') + "\n[[sources]]\n" + table + "\n")
    errors = config_errors(path)
    assert_error(errors, path, key.replace("sources[0]", "sources[1]"), fragment)


TOP_ERRORS: list[tuple[str, str, str, str]] = [
    ("unknown-top-level-key", 'colour = "blue"\n' + MC_SOURCE, "colour",
     "unknown key (known: api, clients, metrics, plugins, server, sources, store)"),
    ("unknown-server-key", '[server]\nhots = "0.0.0.0"\n' + MC_SOURCE, "server.hots", "unknown key"),
    ("unknown-store-key", '[store]\nfile = "x.db"\n' + MC_SOURCE, "store.file", "unknown key"),
    ("server-not-a-table", "server = 5\n" + MC_SOURCE, "server", "must be a table, got int"),
    ("port-bool", "[server]\nport = true\n" + MC_SOURCE, "server.port", "must be int, got bool True"),
    ("port-string", '[server]\nport = "8080"\n' + MC_SOURCE, "server.port", "must be int, got str '8080'"),
    ("port-too-high", "[server]\nport = 65536\n" + MC_SOURCE, "server.port",
     "must be between 0 and 65535, got 65536"),
    ("port-negative", "[server]\nport = -1\n" + MC_SOURCE, "server.port", "must be between 0 and 65535, got -1"),
    ("max-body-too-small", "[server]\nmax_body_bytes = 1023\n" + MC_SOURCE, "server.max_body_bytes",
     "must be between 1024 and 67108864, got 1023"),
    ("max-body-too-large", "[server]\nmax_body_bytes = 67108865\n" + MC_SOURCE, "server.max_body_bytes",
     "must be between 1024 and 67108864, got 67108865"),
    ("synchronous-off", '[store]\nsynchronous = "OFF"\n' + MC_SOURCE, "store.synchronous",
     "must be FULL or NORMAL, got 'OFF'"),
    ("busy-timeout-bool", "[store]\nbusy_timeout_ms = false\n" + MC_SOURCE, "store.busy_timeout_ms",
     "must be int, got bool False"),
    ("no-sources", '[server]\nport = 8080\n', "sources", "at least one [[sources]] table is required"),
    ("sources-is-a-table", f'[sources]\nname = "mc"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\n', "sources",
     "at least one [[sources]] table is required"),
    ("sources-member-not-a-table", "sources = [1]\n", "sources[0]", "must be a table ([[sources]])"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), [c[1:] for c in TOP_ERRORS], ids=[c[0] for c in TOP_ERRORS])
def test_top_level_error(write: Callable[[str], Path], text: str, key: str, fragment: str) -> None:
    path = write(text)
    assert_error(config_errors(path), path, key, fragment)


def test_bounds_are_inclusive(write: Callable[[str], Path]) -> None:
    path = write("[server]\nport = 0\nmax_body_bytes = 1024\n" + MC_SOURCE)
    assert load_config(path, environ={}).server == ServerConfig(port=0, max_body_bytes=1024)
    path = write("[server]\nport = 65535\nmax_body_bytes = 67108864\n" + MC_SOURCE)
    assert load_config(path, environ={}).server == ServerConfig(port=65535, max_body_bytes=67108864)


def test_duplicate_source_names(write: Callable[[str], Path]) -> None:
    path = write(MC_SOURCE + MC_SOURCE.replace(MC_SECRET, MC_SECRET_NEW))
    errors = config_errors(path)
    assert errors == [f"{path}: sources[1].name: 'mc' is used by another source"]


def test_name_with_trailing_newline_is_refused(write: Callable[[str], Path]) -> None:
    path = write(f'[[sources]]\nname = "mc\\n"\nscheme = "metacopier"\nsecret = "{MC_SECRET}"\n')
    assert_error(config_errors(path), path, "sources[0].name", "must be 1-64 letters")


def test_all_errors_are_collected_in_one_config_error(write: Callable[[str], Path]) -> None:
    path = write(f"""
typo = 1
[server]
port = true
[store]
synchronous = "OFF"
[[sources]]
name = "ps"
scheme = "pipsync"
auth = "hmac"
[[sources]]
name = "mc"
scheme = "metacopier"
secrets = ["{"s" * 10}"]
tolerance_seconds = 0
""")
    errors = config_errors(path)
    assert_error(errors, path, "typo", "unknown key")
    assert_error(errors, path, "server.port", "must be int")
    assert_error(errors, path, "store.synchronous", "must be FULL or NORMAL")
    assert_error(errors, path, "sources[0] (ps).auth", "metacopier sources only")
    assert_error(errors, path, "sources[0] (ps).secrets", "at least one secret is required")
    assert_error(errors, path, "sources[1] (mc).secrets[0]", "is 10 characters")
    assert_error(errors, path, "sources[1] (mc).tolerance_seconds", "must be between 1 and 604800")
    assert len(errors) == 7
    assert all(e.startswith(f"{path}: ") for e in errors)
    assert "s" * 10 not in "\n".join(errors)  # a rejected secret is not echoed


# --- the file itself --------------------------------------------------------------------------


def test_invalid_toml(write: Callable[[str], Path]) -> None:
    path = write('[server\nport = 1\n')
    errors = config_errors(path)
    assert len(errors) == 1
    assert errors[0].startswith(f"{path}: not valid TOML: ")


def test_non_utf8_file_is_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b'[server]\nhost = "\xff\xfe"\n')
    errors = config_errors(path)
    assert len(errors) == 1
    assert errors[0].startswith(f"{path}: not valid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    assert config_errors(path) == [f"{path}: cannot read: No such file or directory"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    errors = config_errors(tmp_path)
    assert len(errors) == 1
    assert errors[0].startswith(f"{tmp_path}: cannot read: ")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(write: Callable[[str], Path]) -> None:
    path = write(MC_SOURCE)
    path.chmod(0)
    try:
        assert config_errors(path) == [f"{path}: cannot read: Permission denied"]
    finally:
        path.chmod(0o600)


# --- secrets stay hidden ----------------------------------------------------------------------


def test_secret_never_shows_its_value(write: Callable[[str], Path]) -> None:
    secret = Secret(MC_SECRET)
    assert repr(secret) == str(secret) == f"{secret}" == "Secret('**********')"
    assert secret.reveal() == MC_SECRET
    assert secret.key == MC_SECRET.encode()

    config = load_config(write(FULL_CONFIG), environ={"MC_NEXT": MC_NEXT})
    source = config.sources["mc"]
    for text in (repr(source), str(source), repr(config), str(config), repr(config.sources)):
        for value in (MC_SECRET, MC_NEXT, BEARER, PS_SECRET, TR_KEY):
            assert value not in text
    assert "Secret('**********')" in repr(config)


def test_secret_hashes_the_key_once_for_tradrapi(write: Callable[[str], Path]) -> None:
    # The test vector from docs/senders.md.
    sha1 = "e2eb5eaa018f8a000f08232be248ecf04825fe54"
    assert Secret(TR_KEY).derive(tradrapi.sha1_hex) == sha1
    # ... computed when the config loads, not when a request comes
    path = write(f'[[sources]]\nname = "tr"\nscheme = "tradrapi"\nsecret = "{TR_KEY}"\n')
    (secret,) = load_config(path, environ={}).sources["tr"].secrets
    with patch.object(tradrapi.hashlib, "sha1", side_effect=AssertionError("hashed per request")):
        assert secret.derive(tradrapi.sha1_hex) == sha1


def test_secret_cannot_be_pickled(write: Callable[[str], Path]) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(MC_SECRET))
    config = load_config(write(MC_SOURCE), environ={})
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(config.sources["mc"], protocol=protocol)


def test_secret_equality_compares_values() -> None:
    assert Secret(MC_SECRET) == Secret(MC_SECRET)
    assert Secret(MC_SECRET) != Secret(MC_SECRET_NEW)
    assert Secret(MC_SECRET) != MC_SECRET
    assert hash(Secret(MC_SECRET)) == hash(Secret(MC_SECRET))


# --- allow_ips --------------------------------------------------------------------------------


def source_allowing(*nets: str) -> SourceConfig:
    return SourceConfig(name="s", scheme="metacopier", allow_ips=tuple(ipaddress.ip_network(n) for n in nets))


def test_empty_allowlist_allows_any_address() -> None:
    source = source_allowing()
    for address in ("10.0.0.1", "2001:db8::1", None, "not an ip"):
        assert source.allows(address)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.168.1.7", True),
        ("192.168.1.8", False),
        ("2001:db8::1", True),
        ("2001:db8:ffff::1", True),
        ("2001:db9::1", False),
        ("::1", False),
        (None, False),
        ("", False),
        ("not an ip", False),
        ("10.0.0.1:5000", False),
        ("10.0.0.0/8", False),
        ("::ffff:10.0.0.1", True),  # IPv4-mapped, as a dual-stack socket reports IPv4 peers
        ("::ffff:11.0.0.1", False),
    ],
)
def test_allowlist(address: str | None, allowed: bool) -> None:
    assert source_allowing("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32").allows(address) is allowed


# --- abuse limits -----------------------------------------------------------------------------


def test_abuse_limits_default_to_generous_values(write: Callable[[str], Path]) -> None:
    config = load_config(write(MC_SOURCE), environ={})
    server = config.server
    assert (server.trusted_proxies, server.max_in_flight, server.max_connections, server.max_header_bytes,
            server.client_timeout_seconds) == ((), 256, 2048, 16384, 30.0)
    assert (config.sources["mc"].rate_limit, config.sources["mc"].rate_burst) == (0.0, 0)  # no rate limit


def test_abuse_limits_load(write: Callable[[str], Path]) -> None:
    path = write("""
[server]
trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1"]
max_in_flight = 1
max_connections = 1
max_header_bytes = 1024
client_timeout_seconds = 2.5
""" + MC_SOURCE + 'rate_limit = 0.5\n' + MC_SOURCE.replace('"mc"', '"mc2"')
        + 'rate_limit = 20\nrate_burst = 1\nallow_shared_secret = true\n')
    config = load_config(path, environ={})
    net = ipaddress.ip_network
    assert config.server == ServerConfig(
        trusted_proxies=(net("127.0.0.1/32"), net("10.0.0.0/8"), net("::1/128")), max_in_flight=1,
        max_connections=1, max_header_bytes=1024, client_timeout_seconds=2.5,
        reserved_hook_connections=0)  # an eighth of max_connections unless set
    assert (config.sources["mc"].rate_limit, config.sources["mc"].rate_burst) == (0.5, 5)  # 10 s worth
    assert (config.sources["mc2"].rate_limit, config.sources["mc2"].rate_burst) == (20.0, 1)


LIMIT_ERRORS: list[tuple[str, str, str, str]] = [
    ("bad-proxy", '[server]\ntrusted_proxies = ["10.0.0.0/8", "nginx"]\n' + MC_SOURCE, "server.trusted_proxies[1]",
     "'nginx' is not an IP address or CIDR"),
    ("proxies-not-a-list", '[server]\ntrusted_proxies = "127.0.0.1"\n' + MC_SOURCE, "server.trusted_proxies",
     "must be list, got str"),
    ("in-flight-zero", "[server]\nmax_in_flight = 0\n" + MC_SOURCE, "server.max_in_flight",
     "must be between 1 and 100000, got 0"),
    ("connections-zero", "[server]\nmax_connections = 0\n" + MC_SOURCE, "server.max_connections",
     "must be between 1 and 1000000, got 0"),
    ("reserve-all", "[server]\nmax_connections = 64\nreserved_hook_connections = 64\n" + MC_SOURCE,
     "server.reserved_hook_connections", "must be from 0 to max_connections - 1, got 64"),
    ("workers-zero", "[server]\nworkers = 0\n" + MC_SOURCE, "server.workers", "must be between 1 and 64, got 0"),
    ("workers-many", "[server]\nworkers = 65\n" + MC_SOURCE, "server.workers", "must be between 1 and 64, got 65"),
    ("header-too-small", "[server]\nmax_header_bytes = 1023\n" + MC_SOURCE, "server.max_header_bytes",
     "must be between 1024 and 1048576, got 1023"),
    ("header-float", "[server]\nmax_header_bytes = 2048.0\n" + MC_SOURCE, "server.max_header_bytes",
     "must be int, got float"),
    ("timeout-zero", "[server]\nclient_timeout_seconds = 0\n" + MC_SOURCE, "server.client_timeout_seconds",
     "must be between 1 and 3600, got 0"),
    ("timeout-string", '[server]\nclient_timeout_seconds = "30s"\n' + MC_SOURCE, "server.client_timeout_seconds",
     "must be a number, got str"),
    ("rate-negative", MC_SOURCE + "rate_limit = -1\n", "sources[0] (mc).rate_limit", "must be between 0 and"),
    ("stale-negative", MC_SOURCE + "max_open_days = -1\n", "sources[0] (mc).max_open_days", "must be between 0"),
    ("stale-text", MC_SOURCE + 'max_open_days = "30"\n', "sources[0] (mc).max_open_days", "must be a number"),
    ("burst-without-rate", MC_SOURCE + "rate_burst = 10\n", "sources[0] (mc).rate_burst",
     "needs rate_limit (requests per second) above 0"),
    ("burst-zero", MC_SOURCE + "rate_limit = 1\nrate_burst = 0\n", "sources[0] (mc).rate_burst",
     "must be between 1 and 1000000, got 0"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), [c[1:] for c in LIMIT_ERRORS], ids=[c[0] for c in LIMIT_ERRORS])
def test_abuse_limit_errors(write: Callable[[str], Path], text: str, key: str, fragment: str) -> None:
    path = write(text)
    assert_error(config_errors(path), path, key, fragment)


PG = '[store]\nurl = "postgresql://gw@db.internal:5432/gateway"\n'
POSTGRES_ERRORS: list[tuple[str, str, str, str]] = [
    ("pool-on-sqlite", "[store]\npool_size = 5\n" + MC_SOURCE, "store.pool_size", "is a PostgreSQL setting"),
    ("password-on-sqlite", '[store]\npassword = "env:X"\n' + MC_SOURCE, "store.password", "is a PostgreSQL setting"),
    ("pool-zero", PG + "pool_size = 0\n" + MC_SOURCE, "store.pool_size", "must be between 1 and 1000, got 0"),
    ("timeout-tiny", PG + "statement_timeout_ms = 5\n" + MC_SOURCE, "store.statement_timeout_ms",
     "must be between 100 and 3600000"),
    ("sslmode", PG + 'sslmode = "always"\n' + MC_SOURCE, "store.sslmode", "must be one of disable, allow, prefer"),
    ("password-env", PG + 'password = "env:GWT_PG_MISSING"\n' + MC_SOURCE, "store.password",
     "environment variable GWT_PG_MISSING is not set"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), [c[1:] for c in POSTGRES_ERRORS],
                         ids=[c[0] for c in POSTGRES_ERRORS])
def test_postgres_setting_errors(write: Callable[[str], Path], text: str, key: str, fragment: str) -> None:
    path = write(text)
    assert_error(config_errors(path), path, key, fragment)


def test_postgres_settings_and_a_password_from_the_environment(write: Callable[[str], Path]) -> None:
    path = write(PG + 'password = "env:GWT_PG_PASSWORD"\npool_size = 4\nstatement_timeout_ms = 2000\n'
                 'application_name = "gw-east"\nsslmode = "verify-full"\n' + MC_SOURCE)
    store = load_config(path, environ={"GWT_PG_PASSWORD": "s3cret-pg"}).store
    assert store.password is not None and store.password.reveal() == "s3cret-pg"
    assert (store.pool_size, store.statement_timeout_ms, store.application_name, store.sslmode) == (
        4, 2000, "gw-east", "verify-full")
    assert store.location == "postgresql://db.internal:5432/gateway"  # no user, no password in messages
    assert "s3cret-pg" not in repr(store)


def test_a_password_in_the_store_url_counts_as_a_secret_in_the_file(write: Callable[[str], Path]) -> None:
    path = write('[store]\nurl = "postgresql://gw:pw@db/gateway"\n' + MC_SOURCE)
    assert "store.url" in load_config(path, environ={}).literal_secrets


# --- plugins: shape and where -----------------------------------------------------------------

WHERE_SOURCE = '[[sources]]\nname = "mc"\nscheme = "metacopier"\nsecret = "env:MC"\n'


@pytest.mark.parametrize(("where", "fragment"), [
    ("volume >", "the expression ends too early at position 8:\n  volume >\n          ^"),
    ("a ~ b", "Unknown token ~ at position 2:\n  a ~ b\n    ^"),
    ("a b", "Unexpected token: b at position 2"),
    ("  ", "is empty"),
])
def test_a_bad_where_is_refused_at_load_naming_the_key_and_the_position(
        write: Callable[[str], Path], where: str, fragment: str) -> None:
    path = write(WHERE_SOURCE + f'[[plugins]]\nname = "big"\nuse = "jsonl"\nwhere = "{where}"\n')
    assert_error(config_errors(path, {"MC": "m" * 40}), path, "plugins[0] (big).where", fragment)


@pytest.mark.parametrize(("where", "fragment"), [
    ("lenght(symbol) > `3`", "calls unknown function lenght() (did you mean length()?) at position 0:\n"
                             "  lenght(symbol) > `3`\n  ^"),
    ("length(a, b)", "length() takes 1 argument, got 2 at position 0"),
    ("starts_with(a)", "starts_with() takes 2 arguments, got 1"),
    ("not_null()", "not_null() takes at least 1 argument, got 0"),
    # Found wherever it sits: in a filter, an expression reference, a multiselect, a pipe.
    ("a[?length(@) == `1`].b | sort_by(@, &lenth(x))", "calls unknown function lenth() (did you mean "
                                                        "length()?) at position 37"),
    ("{k: length(a)}.k && length(a, b)", "length() takes 1 argument, got 2 at position 20"),
    ("length(a,) && length(a, b)", "length() takes 1 argument, got 2 at position 14"),  # (a,) is one
])
def test_a_where_calling_an_unknown_function_or_with_the_wrong_arguments_is_refused_at_load(
        write: Callable[[str], Path], where: str, fragment: str) -> None:
    path = write(WHERE_SOURCE + f"[[plugins]]\nname = \"big\"\nuse = \"jsonl\"\nwhere = '{where}'\n")
    assert_error(config_errors(path, {"MC": "m" * 40}), path, "plugins[0] (big).where", fragment)


def test_a_where_calling_built_in_functions_rightly_loads(write: Callable[[str], Path]) -> None:
    where = "length(symbol) > `3` && not_null(a, b, `1`) && max_by(xs, &n).n == `2` && merge(`{}`) == `{}`"
    path = write(WHERE_SOURCE + f"[[plugins]]\nname = \"p\"\nuse = \"jsonl\"\nwhere = '{where}'\n")
    condition = load_config(path, environ={"MC": "m" * 40}).plugins[0].condition
    assert condition.search({"symbol": "EURUSD", "xs": [{"n": 1}, {"n": 2}]}) is True


def test_shape_is_raw_or_normalized_and_where_compiles(write: Callable[[str], Path]) -> None:
    path = write(WHERE_SOURCE + '[[plugins]]\nname = "p"\nuse = "jsonl"\nshape = "flat"\n')
    assert_error(config_errors(path, {"MC": "m" * 40}), path, "plugins[0] (p).shape",
                 "must be one of raw, normalized, got 'flat'")
    path = write(WHERE_SOURCE + '[[plugins]]\nname = "p"\nuse = "jsonl"\nshape = "normalized"\n'
                 "where = \"account == 'real-1' && volume > `1`\"\n")
    plugin = load_config(path, environ={"MC": "m" * 40}).plugins[0]
    assert (plugin.shape, plugin.where) == ("normalized", "account == 'real-1' && volume > `1`")
    assert plugin.condition.search({"account": "real-1", "volume": 2}) is True


def test_max_open_days_is_per_source_and_off_by_default(write: Callable[[str], Path]) -> None:
    config = load_config(write(MC_SOURCE + "max_open_days = 2.5\n" + MC_SOURCE.replace('"mc"', '"mc2"')
                               + "max_open_days = 0\nallow_shared_secret = true\n"), environ={})
    assert (config.sources["mc"].max_open_days, config.sources["mc2"].max_open_days) == (2.5, None)
