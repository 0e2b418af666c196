"""Shared helpers: dedup keys, the timestamp window, hex parsing, ids."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._secret import Secret
from gateway.errors import CODES, Rejected
from gateway.model import QUARANTINE_TYPE, ParsedEvent, decode_key, dedup_key
from gateway.schemes import tradrapi
from gateway.schemes._base import (
    at_path,
    check_window,
    first_at,
    first_str,
    hmac_sha256_hex,
    load_json,
    matches_any,
    parse_hex,
    parse_unix,
    quarantined,
    require_header,
    scalar,
    secret_keys,
)

# --- dedup_key -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("parts", "key"),
    [
        (("mc", "position.opened", ("88412231",)), "mc:position.opened:88412231"),
        (("mc", "position.closed", ("555", "2026-11-20T10:15:01Z")), "mc:position.closed:555@2026-11-20T10:15:01Z"),
        (("a", "b:c", ("d",)), "a:b%3Ac:d"),
        (("a", "b", ("c:d",)), "a:b:c:d"),
        (("a", "50%", ("x",)), "a:50%25:x"),
        (("a", "t", ("%40",)), "a:t:%2540"),
        (("tr", "account_updated", ("X@5",)), "tr:account_updated:X%405"),
        (("tr", "account_updated", ("X", "5")), "tr:account_updated:X@5"),
        (("a", "t", ("#sha256-00",)), "a:t:%23sha256-00"),
        (("a", "", bytes(32)), "a:-:#sha256-" + "00" * 32),
        (("a", "-", ("x",)), "a:%2D:x"),
    ],
)
def test_dedup_key(parts: tuple[str, str, Any], key: str) -> None:
    assert dedup_key(*parts) == key
    assert decode_key(key) == parts


def test_dedup_key_needs_an_identity() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        dedup_key("a", "t", ())


_text = st.text(st.characters(codec="utf-8"), max_size=6) | st.sampled_from(["%", "@", "#", ":", "%40", "\x00", "-"])
_identity = st.lists(_text, min_size=1, max_size=3).map(tuple) | st.binary(min_size=32, max_size=32)
_key_parts = st.tuples(st.sampled_from(["src", "s:1", "s%3A1"]), _text, _identity)


@settings(max_examples=500, deadline=None)
@given(a=_key_parts, b=_key_parts)
def test_property_keys_equal_exactly_when_identities_equal(a: tuple[str, str, Any], b: tuple[str, str, Any]) -> None:
    assert (dedup_key(*a) == dedup_key(*b)) == (a == b)
    assert decode_key(dedup_key(*a)) == a


# --- check_window ----------------------------------------------------------------------

@pytest.mark.parametrize(("sent", "now"), [(1000.0, 1000.0), (1000.0, 1300.0), (1300.0, 1000.0),
                                           (1000.5, 1300.5)])
def test_check_window_passes_within_tolerance(sent: float, now: float) -> None:
    check_window(sent, now, 300, "t")


@pytest.mark.parametrize(
    ("sent", "now", "tolerance", "code", "words"),
    [
        (1000.0, 1412.0, 300, "stale_timestamp", "t is 412 s in the past; tolerance is 300 s"),
        (1412.0, 1000.0, 300, "future_timestamp", "t is 412 s in the future; tolerance is 300 s"),
        (1000.0, 1061.0, 60, "stale_timestamp", "t is 61 s in the past; tolerance is 60 s"),
        (1061.0, 1000.0, 60, "future_timestamp", "t is 61 s in the future; tolerance is 60 s"),
        (0.0, 1763633702.0, 300, "stale_timestamp", "1763633702 s in the past"),
        (1000.0, 1300.001, 300, "stale_timestamp", "tolerance is 300 s"),
    ],
)
def test_check_window_rejects(sent: float, now: float, tolerance: int, code: str, words: str) -> None:
    with pytest.raises(Rejected) as info:
        check_window(sent, now, tolerance, "t")
    assert info.value.code == code
    assert words in info.value.detail
    assert "clock" in info.value.detail
    assert info.value.status == 401


# --- parse_hex / parse_unix ------------------------------------------------------------

@pytest.mark.parametrize(("value", "out"), [("abcdef0123", "abcdef0123"), ("ABCDEF0123", "abcdef0123"),
                                            (" aBc0123456 ", "abc0123456")])
def test_parse_hex_ok(value: str, out: str) -> None:
    assert parse_hex(value, 10, "sig") == out


@pytest.mark.parametrize(
    ("value", "shown"),
    [("abc", "got 3 characters"), ("", "got 0 characters"), ("a" * 11, "got 11 characters"),
     ("g" * 10, "got non-hex characters"), ("é" * 10, "got non-hex characters"),
     ("\uff10" * 10, "got non-hex characters"), ("٣" * 10, "got non-hex characters"),
     ("abcde 0123", "got non-hex characters"), ("-123456789", "got non-hex characters")],
)
def test_parse_hex_malformed(value: str, shown: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_hex(value, 10, "sig")
    assert info.value.code == "malformed_signature"
    assert info.value.detail == f"sig must be 10 hex characters; {shown}"


@pytest.mark.parametrize(("value", "out"), [("0", 0), (" 1763633702 ", 1763633702), ("9" * 19, 10**19 - 1)])
def test_parse_unix_ok(value: str, out: int) -> None:
    assert parse_unix(value, "t") == out


@pytest.mark.parametrize("value", ["", "-1", "1.5", "1e3", "9" * 20, "²", "١٢", "\uff10", "0x10", "+1", " "])
def test_parse_unix_malformed(value: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_unix(value, "t")
    assert info.value.code == "malformed_signature"
    assert info.value.detail == "t must be a Unix timestamp in digits"


# --- scalar / paths --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "out"),
    [(True, None), (False, None), (None, None), (0, "0"), (5, "5"), (-3, "-3"), (5.0, "5"), (-0.0, "0"),
     (5.5, None), (float("inf"), None), (float("nan"), None), ("", None), ("   ", None), ("abc", "abc"),
     (" a ", " a "), ([1], None), ({"id": 1}, None), (10**20, str(10**20))],
)
def test_scalar(value: Any, out: str | None) -> None:
    assert scalar(value) == out


def test_at_path_and_first_at() -> None:
    obj = {"a": {"b": {"c": 1}}, "x": [1], "t": True, "s": "id"}
    assert at_path(obj, "a.b.c") == 1
    assert at_path(obj, "a.b") == {"c": 1}
    assert at_path(obj, "a.z.c") is None
    assert at_path(obj, "x.0") is None
    assert at_path("not a dict", "a") is None
    assert first_at(obj, ["t", "a.b", "x", "a.b.c", "s"]) == "1"
    assert first_at(obj, ["s", "a.b.c"]) == "id"
    assert first_at(obj, ["t", "missing"]) is None
    assert first_at(obj, []) is None


def test_first_str() -> None:
    assert first_str({"type": 5, "event": " ", "eventType": "x"}, ["type", "event", "eventType"]) == "x"
    assert first_str({"type": "a", "eventType": "x"}, ["type", "eventType"]) == "a"
    assert first_str({}, ["type"]) is None


# --- content ids, quarantine, events ---------------------------------------------------

def test_quarantined_is_named_and_compared_by_its_bytes() -> None:
    empty = quarantined(b"", "empty body")
    assert empty.entity_id == "sha256-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert empty.identity == empty.fingerprint == bytes.fromhex(empty.entity_id[7:])
    event = quarantined(b"abc", "not valid JSON")
    assert event.event_type == QUARANTINE_TYPE == ""
    assert event.entity_id == "sha256-" + hashlib.sha256(b"abc").hexdigest()
    assert event.identity == event.fingerprint == hashlib.sha256(b"abc").digest()
    assert event.status == "quarantined"
    assert event.payload is None
    assert quarantined(b"abc", "r", b"{}").payload == b"{}"
    assert ParsedEvent(event_type="x", entity_id="1").status == "stored"
    assert ParsedEvent(event_type="x", entity_id="1", quarantine_reason="").status == "stored"


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"", "empty body"), (b"{", "not valid JSON"), (b'"\xff"', "not valid JSON"), (b"[1]", "JSON list"),
     (b"1", "JSON int"), (b"null", "JSON NoneType")],
)
def test_load_json_failures(body: bytes, reason: str) -> None:
    obj, why = load_json(body)
    assert obj is None
    assert why is not None and reason in why and len(why) <= 300


def test_load_json_object() -> None:
    assert load_json(b' {"a": 1} ') == ({"a": 1}, None)


# --- crypto helpers and headers --------------------------------------------------------

def test_hmac_sha256_hex_concatenates_parts() -> None:
    key = b"k"
    expected = hmac.new(key, b"1.body", hashlib.sha256).hexdigest()
    assert hmac_sha256_hex(key, b"1", b".", b"body") == expected == hmac_sha256_hex(key, b"1.body")


@pytest.mark.parametrize(
    ("expected", "given", "ok"),
    [(["aa", "bb"], "bb", True), (["aa", "bb"], "cc", False), ([], "aa", False), ([b"x", b"y"], b"x", True),
     (["aa"], "AA", False)],
)
def test_matches_any(expected: list[Any], given: Any, ok: bool) -> None:
    assert matches_any(iter(expected), given) is ok


def test_require_header_order_and_missing() -> None:
    headers = {"x-b": "2", "x-a": "1", "x-empty": ""}
    assert require_header(headers, ["X-A", "X-B"]) == "1"
    assert require_header(headers, ["X-Missing", "X-B"]) == "2"
    assert require_header(headers, ["X-Empty", "X-A"]) == ""
    with pytest.raises(Rejected) as info:
        require_header(headers, ["X-One", "X-Two"])
    assert info.value.code == "missing_signature"
    assert info.value.detail == "the X-One or X-Two header is missing"


def test_secret_keys_and_secret_hides_itself() -> None:
    secret = Secret("tökén-secret")
    assert list(secret_keys([secret, Secret("b")])) == ["tökén-secret".encode(), b"b"]
    assert secret.derive(tradrapi.sha1_hex) == hashlib.sha1("tökén-secret".encode()).hexdigest()
    assert "tökén" not in repr(secret) and "tökén" not in str(secret)


@pytest.mark.parametrize("code", ["missing_signature", "malformed_signature", "bad_signature",
                                  "stale_timestamp", "future_timestamp"])
def test_rejection_codes_are_401(code: str) -> None:
    assert CODES[code][0] == 401
    assert Rejected(code, "d").status == 401


def test_unknown_rejection_code_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown error code"):
        Rejected("nope", "d")
