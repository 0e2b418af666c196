"""The scheme registry: a scheme registered from outside gateway/ works end to end, and a
registered object that does not fit the `Scheme` protocol is refused with a clear message."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import schemes
from gateway.config import Config, ConfigError, parse_config
from gateway.schemes import SchemeError, get_scheme, register_scheme
from tests.conftest import MC_SECRET, RunningGateway

TOY_TOKEN = "toy-token-0123456789abcdefghij"


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations made by a test end with it: it works on a copy of the registry."""
    monkeypatch.setattr(schemes, "SCHEMES", dict(schemes.SCHEMES))
    register_scheme("toy", "tests.schemes.toy_scheme:scheme")
    yield


def toy_config(tmp_path: Path, *sources: dict[str, Any]) -> Config:
    data = {"sources": list(sources) or [{"name": "toys", "scheme": "toy", "secret": TOY_TOKEN,
                                          "type_field": "event"}],
            "store": {"path": str(tmp_path / "gateway.db")}, "api": {"public": True}}
    return parse_config(data, origin="test.toml", base_dir=tmp_path)


def config_errors(tmp_path: Path, *sources: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        toy_config(tmp_path, *sources)
    return info.value.errors


def test_a_registered_scheme_receives_through_the_real_app(
    tmp_path: Path, serve: Callable[[Config], RunningGateway]
) -> None:
    gw = serve(toy_config(tmp_path))
    body = b'{"id": "t-1", "event": "toy.made"}'

    r = gw.post("/hooks/toys", body, {"X-Toy-Token": TOY_TOKEN, "X-Custom": "kept"})
    assert r.status_code == 200, r.text
    (outcome,) = r.json()["events"]
    assert outcome["status"] == "stored" and outcome["dedup_key"].endswith("t-1")

    event = gw.client.get(f"/api/v1/events/{outcome['id']}").json()
    assert (event["scheme"], event["event_type"], event["entity_id"]) == ("toy", "toy.made", "t-1")
    headers = dict(event["headers"])
    assert headers["x-custom"] == "kept"
    assert "x-toy-token" not in headers  # the scheme's credential header is never stored
    assert TOY_TOKEN not in str(event)
    listed = gw.client.get("/api/v1/events", params={"scheme": "toy"}).json()["events"]
    assert [e["id"] for e in listed] == [outcome["id"]]

    wrong = gw.post("/hooks/toys", body, {"X-Toy-Token": "not-the-token-0123456789abc"})
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "bad_signature"
    assert wrong.json()["detail"] == "X-Toy-Token matches no configured token"
    missing = gw.post("/hooks/toys", body)
    assert (missing.status_code, missing.json()["code"]) == (401, "missing_signature")


def test_the_schemes_secret_rule_refuses_a_short_secret(tmp_path: Path) -> None:
    errors = config_errors(tmp_path, {"name": "toys", "scheme": "toy", "secrets": [TOY_TOKEN, "short-token"]})
    assert errors == ["test.toml: sources[0] (toys).secrets[1]: is 11 characters; "
                      "toy tokens are at least 24 characters"]


def test_the_schemes_own_keys_are_checked_and_refused_elsewhere(tmp_path: Path) -> None:
    errors = config_errors(
        tmp_path,
        {"name": "toys", "scheme": "toy", "secret": TOY_TOKEN, "type_field": 7},
        {"name": "mc", "scheme": "metacopier", "secret": MC_SECRET, "type_field": "kind"},
        {"name": "t2", "scheme": "toy", "secret": TOY_TOKEN, "auth": "bearer", "typefield": "x"},
    )
    assert errors == [
        "test.toml: sources[0] (toys).type_field: must be str, got int 7",
        "test.toml: sources[1] (mc).type_field: applies to toy sources only",
        "test.toml: sources[2] (t2).auth: applies to metacopier sources only",
        "test.toml: sources[2].typefield: unknown key (known: allow_ips, allow_shared_secret, auth, dedup_fields, "
        "dedup_ignore_fields, max_open_days, name, rate_burst, rate_limit, require_timestamp, scheme, secret, secrets, "
        "tolerance_seconds, type_field)",
    ]
    unknown = config_errors(tmp_path, {"name": "x", "scheme": "lego", "secret": TOY_TOKEN})
    assert unknown == ["test.toml: sources[0] (x).scheme: must be one of metacopier, pipsync, tradrapi, toy, "
                       "got 'lego'"]


def test_a_registered_schemes_sample_verifies_as_signed(tmp_path: Path) -> None:
    scheme = get_scheme("toy")
    source = toy_config(tmp_path, {"name": "toys", "scheme": "toy", "secret": TOY_TOKEN}).sources["toys"]
    assert source.options == {"type_field": "kind"}  # the scheme's default, filled in at load
    body = scheme.sample(scheme.event_types[0])
    headers = {k.lower(): v for k, v in scheme.sign(body, source, 0.0).items()}
    (event,) = scheme.verify(body, headers, 0.0, source).events
    assert (event.event_type, event.quarantine_reason) == ("toy.made", None)


def test_an_object_that_does_not_fit_the_protocol_is_refused(tmp_path: Path) -> None:
    register_scheme("broken", "tests.schemes.toy_scheme:broken")
    expected = ("scheme 'broken' (tests.schemes.toy_scheme:broken) does not fit the Scheme protocol: missing "
                "event_types, options, credential_headers, secret_form, dedup_fields, secret_rule, check, identify, "
                "sign, sample, new_secret")
    with pytest.raises(SchemeError) as info:
        get_scheme("broken")
    assert str(info.value) == expected
    # a config that uses it is refused, naming the source; one that does not still loads
    errors = config_errors(tmp_path, {"name": "b", "scheme": "broken", "secret": TOY_TOKEN})
    assert errors == [f"test.toml: sources[0] (b).scheme: {expected}"]
    assert list(toy_config(tmp_path).sources) == ["toys"]


def test_registering_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SchemeError, match=r"'tests.schemes.toy_scheme' must be \"<module>:<attribute>\""):
        register_scheme("toy2", "tests.schemes.toy_scheme")
    with pytest.raises(SchemeError, match=r"already registered as gateway\.schemes\.metacopier:scheme"):
        register_scheme("metacopier", "tests.schemes.toy_scheme:scheme")
    with pytest.raises(SchemeError, match="must be 1-32 lower-case letters"):
        register_scheme("Toy Two", "tests.schemes.toy_scheme:scheme")
    register_scheme("toy", "tests.schemes.toy_scheme:scheme")  # the same again is no change
    register_scheme("toy3", "tests.schemes.toy_scheme:scheme")
    with pytest.raises(SchemeError, match=r"scheme 'toy3' .* calls itself 'toy'"):
        get_scheme("toy3")
    register_scheme("gone", "tests.schemes.no_such_module:scheme")
    with pytest.raises(SchemeError, match="scheme 'gone': Could not import module"):
        get_scheme("gone")
