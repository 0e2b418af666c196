"""MetaCopier: HMAC-SHA256 over `timestamp.body` (or the body), bearer, none; payload parsing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway._secret import Secret
from gateway.config import SourceConfig, parse_config
from gateway.model import Verified, dedup_key
from gateway.schemes import get_scheme, metacopier
from gateway.schemes._base import hmac_sha256_hex
from tests.conftest import MC_BODY, MC_SECRET, MC_SECRET_NEW, mc_sign, source_table
from tests.schemes.conftest import Reference, assert_quarantined, json_values, lower, sha256_id

# senders.md test vector
MC_TS = 1763633702331
MC_NOW = 1763633702.331
SIG_TS = "89139cd8ec05252a9072575af5f10154e31a54dabf4342e8c1233dd2967f24a3"
SIG_BODY = "c636233f9f35de495f8c2352d800c0146f91e50c4d43f391d9adeffdfc919e4f"
ACCOUNT = "6f1c2d7e-5b0a-4c1e-9a53-2f7c8f0b9d11"
UNCONFIGURED = "mc-some-other-secret-nobody-configured-xx"

HMAC = SourceConfig(name="mc", scheme="metacopier", secrets=(Secret(MC_SECRET), Secret(MC_SECRET_NEW)))
HMAC_ONE = SourceConfig(name="mc1", scheme="metacopier", secrets=(Secret(MC_SECRET),))
NO_TS = SourceConfig(name="mc-nots", scheme="metacopier", secrets=(Secret(MC_SECRET),),
                     options={"require_timestamp": False})
TOKEN = "bearer-token-0123456789"
TOKEN_NEW = "bearer-token-rotated-abcdef"
BEARER = SourceConfig(name="mcb", scheme="metacopier", options={"auth": "bearer"},
                      secrets=(Secret(TOKEN), Secret(TOKEN_NEW)))
NONE = SourceConfig(name="mcn", scheme="metacopier", options={"auth": "none"}, secrets=())

FULLWIDTH = {ord(d): ord(d) + 0xFEE0 for d in "0123456789"}  # "1" -> "\uff11", looks like a digit


MC = Reference(metacopier.verify, MC_BODY, MC_NOW, HMAC, mc_sign, MC_SECRET, MC_TS, one_event=True)
signed, rejected, verify_signed, outcome = MC.signed, MC.rejected, MC.verify_signed, MC.outcome


def content_digest(obj: dict[str, Any], ignore: str | None = None) -> bytes:
    """SHA-256 of the canonical JSON, less the field `ignore`: the fingerprint leaves out the
    root `timestamp`; what names an event without an id does not."""
    kept = {k: v for k, v in obj.items() if k != ignore}
    return hashlib.sha256(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)).digest()


# The reference body's occurrence: position 88412231 opened at its own openTime.
MC_IDENTITY = ("88412231", "2026-11-20T10:15:01Z")
MC_ENTITY = "position:88412231"


# --- test vectors ----------------------------------------------------------------------

def test_vector_over_timestamp_and_body() -> None:
    assert hmac_sha256_hex(MC_SECRET.encode(), b"1763633702331", b".", MC_BODY) == SIG_TS
    assert mc_sign(MC_BODY, ts_ms=MC_TS)["X-MetaCopier-Signature"] == SIG_TS


def test_vector_over_body_only() -> None:
    assert hmac_sha256_hex(MC_SECRET.encode(), MC_BODY) == SIG_BODY


def test_sign_reproduces_vector_and_verifies() -> None:
    headers = metacopier.sign(MC_BODY, HMAC, MC_NOW)
    assert headers["X-MetaCopier-Timestamp"] == "1763633702331"
    assert headers["X-MetaCopier-Signature"] == SIG_TS
    assert headers["X-MetaCopier-Delivery-Attempt"] == "1"
    verified = metacopier.verify(MC_BODY, lower(headers), MC_NOW, HMAC)
    assert verified.attempt == 1
    assert verified.events[0].identity == MC_IDENTITY


def test_sign_bearer_and_none() -> None:
    assert metacopier.sign(MC_BODY, BEARER, MC_NOW)["Authorization"] == f"Bearer {TOKEN}"
    headers = metacopier.sign(MC_BODY, NONE, MC_NOW)
    assert "Authorization" not in headers and "X-MetaCopier-Signature" not in headers


def test_registry_resolves_the_scheme_object() -> None:
    scheme = get_scheme("metacopier")
    assert scheme is metacopier.scheme and scheme.name == "metacopier"
    assert scheme.event_types[0] == "position.opened"
    assert scheme.credential_headers == {"authorization"}
    assert metacopier.EVENT_TYPES[0] == "position.opened"


# --- valid requests ----------------------------------------------------------------------

def test_reference_request_verifies() -> None:
    headers = {"x-metacopier-signature": SIG_TS, "x-metacopier-timestamp": "1763633702331",
               "x-metacopier-delivery-attempt": "2"}
    verified = metacopier.verify(MC_BODY, headers, MC_NOW, HMAC)
    assert isinstance(verified, Verified)
    assert verified.attempt == 2
    assert verified.sent_at == 1763633702.331  # seconds, not milliseconds
    (event,) = verified.events
    assert event.event_type == "position.opened"
    assert event.identity == MC_IDENTITY  # the position id and the event's own time
    assert event.entity_id == MC_ENTITY  # delivery is ordered per position
    assert event.account == ACCOUNT
    assert event.symbol == "EURUSD"
    assert event.payload is None
    assert event.quarantine_reason is None
    assert event.status == "stored"


@pytest.mark.parametrize("name", ["x-metacopier-signature", "x-webhook-signature"])
def test_both_signature_header_names(name: str) -> None:
    headers = {name: SIG_TS, "x-metacopier-timestamp": str(MC_TS)}
    assert metacopier.verify(MC_BODY, headers, MC_NOW, HMAC).events[0].identity == MC_IDENTITY


@pytest.mark.parametrize(
    "value",
    [SIG_TS, SIG_TS.upper(), f"sha256={SIG_TS}", f"SHA256={SIG_TS.upper()}", f"Sha256={SIG_TS}",
     f"  {SIG_TS}  ", f" sha256={SIG_TS} "],
    ids=["lower", "upper", "prefix", "PREFIX-upper", "Prefix-mixed", "spaces", "prefix-spaces"],
)
def test_signature_encodings_accepted(value: str) -> None:
    headers = {"x-metacopier-signature": value, "x-metacopier-timestamp": str(MC_TS)}
    assert metacopier.verify(MC_BODY, headers, MC_NOW, HMAC).sent_at == 1763633702.331


def test_sent_at_is_seconds_and_helper_signs_with_wall_clock() -> None:
    import time

    now = time.time()
    verified = metacopier.verify(MC_BODY, lower(mc_sign(MC_BODY)), now, HMAC)
    assert verified.sent_at is not None
    assert abs(verified.sent_at - now) < 5


# --- authentication failures -----------------------------------------------------------

@pytest.mark.parametrize("index", [0, 1, len(MC_BODY) // 2, len(MC_BODY) - 1])
def test_tampered_body(index: int) -> None:
    body = bytearray(MC_BODY)
    body[index] ^= 0x01
    exc = rejected(bytes(body), signed())
    assert exc.code == "bad_signature"
    assert "timestamp + '.' + raw body" in exc.detail


def test_appended_newline_is_tampering() -> None:
    assert rejected(MC_BODY + b"\n", signed()).code == "bad_signature"


def test_tampered_timestamp() -> None:
    headers = signed() | {"x-metacopier-timestamp": str(MC_TS + 1)}
    assert rejected(MC_BODY, headers).code == "bad_signature"


def test_body_only_signature_with_timestamp_header_is_bad() -> None:
    headers = {"x-metacopier-signature": SIG_BODY, "x-metacopier-timestamp": str(MC_TS)}
    assert rejected(MC_BODY, headers).code == "bad_signature"


@pytest.mark.parametrize(
    ("secret", "source", "ok"),
    [
        (MC_SECRET, HMAC, True),
        (MC_SECRET_NEW, HMAC, True),  # the second configured secret (rotation)
        (MC_SECRET_NEW, HMAC_ONE, False),
        (UNCONFIGURED, HMAC, False),
    ],
)
def test_rotation(secret: str, source: SourceConfig, ok: bool) -> None:
    headers = signed(secret=secret)
    if ok:
        assert metacopier.verify(MC_BODY, headers, MC_NOW, source).events[0].identity == MC_IDENTITY
    else:
        assert rejected(MC_BODY, headers, source=source).code == "bad_signature"


def test_rotation_body_only() -> None:
    source = SourceConfig(name="x", scheme="metacopier", options={"require_timestamp": False},
                          secrets=(Secret(MC_SECRET), Secret(MC_SECRET_NEW)))
    sig = hmac_sha256_hex(MC_SECRET_NEW.encode(), MC_BODY)
    assert metacopier.verify(MC_BODY, {"x-metacopier-signature": sig}, MC_NOW, source).sent_at is None
    sig = hmac_sha256_hex(UNCONFIGURED.encode(), MC_BODY)
    assert rejected(MC_BODY, {"x-metacopier-signature": sig}, source=source).code == "bad_signature"


@pytest.mark.parametrize(
    ("offset", "tolerance", "code"),
    [
        (0, 300, None),
        (300, 300, None),  # exactly at the tolerance passes
        (-300, 300, None),
        (300.001, 300, "stale_timestamp"),
        (-300.001, 300, "future_timestamp"),
        (412, 300, "stale_timestamp"),
        (-412, 300, "future_timestamp"),
        (60, 60, None),
        (-60, 60, None),
        (61, 60, "stale_timestamp"),
        (-61, 60, "future_timestamp"),
        (3000, 3600, None),
        (-3000, 3600, None),
    ],
)
def test_timestamp_window(offset: float, tolerance: int, code: str | None) -> None:
    source = SourceConfig(name="mc", scheme="metacopier", secrets=(Secret(MC_SECRET),),
                          tolerance_seconds=tolerance)
    if code is None:
        assert metacopier.verify(MC_BODY, signed(), MC_NOW + offset, source).sent_at == 1763633702.331
    else:
        exc = rejected(MC_BODY, signed(), MC_NOW + offset, source)
        assert exc.code == code
        assert f"tolerance is {tolerance} s" in exc.detail


@pytest.mark.parametrize(("offset", "words"), [(412, "412 s in the past"), (-412, "412 s in the future"),
                                               (86400, "86400 s in the past")])
def test_window_detail_says_direction_and_amount(offset: float, words: str) -> None:
    exc = rejected(MC_BODY, signed(), MC_NOW + offset)
    assert words in exc.detail
    assert "tolerance is 300 s" in exc.detail
    assert "X-MetaCopier-Timestamp" in exc.detail
    assert "milliseconds" not in exc.detail


def test_seconds_timestamp_hint_says_milliseconds() -> None:
    ts = "1763633702"  # the sender put seconds where milliseconds belong
    sig = hmac_sha256_hex(MC_SECRET.encode(), ts.encode(), b".", MC_BODY)
    exc = rejected(MC_BODY, {"x-metacopier-signature": sig, "x-metacopier-timestamp": ts})
    assert exc.code == "stale_timestamp"
    assert "milliseconds" in exc.detail


def test_stale_and_tampered_reports_bad_signature_first() -> None:
    assert rejected(MC_BODY + b" ", signed(), MC_NOW + 10_000).code == "bad_signature"


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-metacopier-timestamp": str(MC_TS)}, {"x-signature": SIG_TS},
     {"x-metacopier-delivery-attempt": "1", "authorization": f"Bearer {SIG_TS}"}],
    ids=["none", "timestamp-only", "other-name", "unrelated"],
)
def test_missing_signature(headers: dict[str, str]) -> None:
    exc = rejected(MC_BODY, headers)
    assert exc.code == "missing_signature"
    assert "X-MetaCopier-Signature" in exc.detail and "X-Webhook-Signature" in exc.detail


@pytest.mark.parametrize(
    "value",
    ["", "   ", "garbage", SIG_TS[:-1], SIG_TS + "0", "g" * 64, "é" * 64, "ÿ" * 64, "\x00" * 64,
     "\uff10" * 64, "٣" * 64, "€" * 64, SIG_TS[:-1] + "ÿ", "sha256=", "sha256=xyz", "sha256:" + SIG_TS,
     "sha1=" + SIG_TS, "t=1,v1=" + SIG_TS, SIG_TS[:32] + " " + SIG_TS[32:], "0x" + SIG_TS[2:] + "00"],
)
def test_malformed_signature(value: str) -> None:
    exc = rejected(MC_BODY, {"x-metacopier-signature": value, "x-metacopier-timestamp": str(MC_TS)})
    assert exc.code == "malformed_signature"
    assert "64 hex characters" in exc.detail


def test_wrong_length_detail_says_length() -> None:
    exc = rejected(MC_BODY, {"x-metacopier-signature": "abc", "x-metacopier-timestamp": str(MC_TS)})
    assert "got 3 characters" in exc.detail


def test_require_timestamp_without_timestamp_header() -> None:
    exc = rejected(MC_BODY, {"x-metacopier-signature": SIG_BODY}, source=HMAC_ONE)
    assert exc.code == "missing_signature"
    assert "X-MetaCopier-Timestamp" in exc.detail
    assert "require_timestamp" in exc.detail


def test_body_only_signature_when_timestamp_not_required() -> None:
    headers = {"x-webhook-signature": SIG_BODY.upper()}
    verified = metacopier.verify(MC_BODY, headers, 0.0, NO_TS)  # no timestamp: no window
    assert verified.sent_at is None
    assert verified.attempt is None
    assert verified.events[0].identity == MC_IDENTITY


def test_timestamp_not_required_but_signature_over_timestamp_is_bad() -> None:
    exc = rejected(MC_BODY, {"x-metacopier-signature": SIG_TS}, source=NO_TS)
    assert exc.code == "bad_signature"
    assert "signed string" not in exc.detail


def test_timestamp_not_required_still_checked_when_sent() -> None:
    assert metacopier.verify(MC_BODY, signed(), MC_NOW, NO_TS).sent_at == 1763633702.331
    assert rejected(MC_BODY, signed(), MC_NOW + 301, NO_TS).code == "stale_timestamp"
    headers = {"x-metacopier-signature": SIG_BODY, "x-metacopier-timestamp": str(MC_TS)}
    assert rejected(MC_BODY, headers, source=NO_TS).code == "bad_signature"


@pytest.mark.parametrize(
    "ts",
    ["", " ", "abc", "-1763633702331", "+1763633702331", "1763633702.331", "1.763e12", "0x1A",
     str(MC_TS).translate(FULLWIDTH), "²", "17636337023\uff131", "1" * 20, "1763633702331ms", "€"],
)
def test_non_digit_timestamp_is_malformed(ts: str) -> None:
    exc = rejected(MC_BODY, {"x-metacopier-signature": SIG_TS, "x-metacopier-timestamp": ts})
    assert exc.code == "malformed_signature"
    assert "X-MetaCopier-Timestamp" in exc.detail


# --- bearer and none -------------------------------------------------------------------

@pytest.mark.parametrize("value", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} ",
                                   f"Bearer {TOKEN_NEW}"])
def test_bearer_valid(value: str) -> None:
    verified = metacopier.verify(MC_BODY, {"authorization": value}, MC_NOW, BEARER)
    assert verified.sent_at is None
    assert verified.events[0].event_type == "position.opened"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (f"Bearer {TOKEN}x", "bad_signature"),
        (f"Bearer {TOKEN[:-1]}", "bad_signature"),
        (f"Bearer {TOKEN.upper()}", "bad_signature"),
        ("Bearer ÿÿÿÿ", "bad_signature"),
        (f"Bearer {SIG_TS}", "bad_signature"),
        ("Basic xyz", "malformed_signature"),
        (f"Basic {TOKEN}", "malformed_signature"),
        ("Bearer", "malformed_signature"),
        ("Bearer   ", "malformed_signature"),
        ("", "malformed_signature"),
        (TOKEN, "malformed_signature"),
        (f"Token {TOKEN}", "malformed_signature"),
    ],
)
def test_bearer_rejected(value: str, code: str) -> None:
    assert rejected(MC_BODY, {"authorization": value}, source=BEARER).code == code


def test_bearer_missing() -> None:
    exc = rejected(MC_BODY, {"x-metacopier-signature": SIG_TS}, source=BEARER)
    assert exc.code == "missing_signature"
    assert "Authorization" in exc.detail


def test_bearer_non_ascii_token_compared_as_sent_bytes() -> None:
    token = "tökén-0123456789abcdef"
    source = SourceConfig(name="b", scheme="metacopier", options={"auth": "bearer"}, secrets=(Secret(token),))
    header = "Bearer " + token.encode("utf-8").decode("latin-1")  # how the ASGI layer decodes it
    assert metacopier.verify(MC_BODY, {"authorization": header}, MC_NOW, source).events


def test_bearer_token_outside_latin1_is_rejected_not_crashing() -> None:
    assert rejected(MC_BODY, {"authorization": "Bearer tok€n-0123456789"}, source=BEARER).code in (
        "bad_signature", "malformed_signature")


@pytest.mark.parametrize("headers", [{}, {"x-metacopier-signature": "garbage", "authorization": "x"}])
def test_auth_none_passes_without_credentials(headers: dict[str, str]) -> None:
    verified = metacopier.verify(MC_BODY, headers, 0.0, NONE)
    assert verified.sent_at is None
    assert verified.events[0].identity == MC_IDENTITY


# --- delivery attempt ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "attempt"),
    [("1", 1), ("5", 5), (" 3 ", 3), ("999999999", 999999999), (None, None), ("", None), ("abc", None),
     ("-1", None), ("1.0", None), ("2x", None), ("9999999999", None),
     ("²", None), ("¹", None)],
)
def test_delivery_attempt(value: str | None, attempt: int | None) -> None:
    headers = signed()
    del headers["x-metacopier-delivery-attempt"]
    if value is not None:
        headers["x-metacopier-delivery-attempt"] = value
    assert metacopier.verify(MC_BODY, headers, MC_NOW, HMAC).attempt == attempt


# --- payload parsing -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("obj", "event_type", "position", "account", "symbol"),
    [
        ({"type": "position.closed", "accountId": "a1", "position": {"id": "p1", "symbol": "GBPUSD"},
          "ticket": "t1"}, "position.closed", "p1", "a1", "GBPUSD"),
        ({"event": "position.opened", "position": {"id": 42}}, "position.opened", "42", None, None),
        ({"eventType": "position.closed", "ticket": "T-77", "symbol": "XAUUSD", "accountId": 7},
         "position.closed", "T-77", "7", "XAUUSD"),
        ({"type": "a", "event": "b", "eventType": "c", "ticket": 1}, "a", "1", None, None),
        ({"type": "", "event": "b", "ticket": 1}, "b", "1", None, None),
        ({"type": 5, "eventType": "c", "ticket": 1}, "c", "1", None, None),
        ({"type": "position.opened", "position": {"id": True}, "ticket": 9}, "position.opened", "9", None,
         None),
        ({"type": "position.opened", "position": {"id": 5.0}}, "position.opened", "5", None, None),
        ({"type": "position.opened", "position": {"id": ""}, "ticket": "t1"}, "position.opened", "t1",
         None, None),
        ({"type": "position.opened", "position": {"id": None}, "ticket": 0}, "position.opened", "0", None,
         None),
        ({"type": "position.opened", "position": "88", "ticket": 3}, "position.opened", "3", None, None),
        ({"type": "position.opened", "accountId": True, "position": {"id": 1, "symbol": 5}},
         "position.opened", "1", None, "5"),
        ({"type": "some.new.event", "ticket": "x"}, "some.new.event", "x", None, None),
    ],
)
def test_payload_fields(obj: dict[str, Any], event_type: str, position: str, account: str | None,
                        symbol: str | None) -> None:
    """Without its own time an event is named by the position id alone, ordered per position."""
    (event,) = verify_signed(orjson.dumps(obj)).events
    assert (event.event_type, event.identity, event.entity_id, event.account, event.symbol) == (
        event_type, (position,), f"position:{position}", account, symbol)
    assert event.status == "stored"


@pytest.mark.parametrize(
    ("obj", "entity"),
    [({"type": "history.updated", "accountId": "a", "timestamp": "2026-11-20T10:15:02.331Z"}, "account:a"),
     ({"type": "position.opened", "position": {"id": 5.5}}, None),
     ({"type": "position.opened", "position": {"id": [1]}, "ticket": {"n": 1}}, None),
     ({"type": "position.opened", "position": {"id": "   "}, "accountId": 7}, "account:7")],
)
def test_identity_falls_back_to_content_digest(obj: dict[str, Any], entity: str | None) -> None:
    """No usable position id: the event is named by its whole canonical content and ordered per
    account, or on its own; its fingerprint still leaves the root `timestamp` out."""
    body = orjson.dumps(obj)
    (event,) = verify_signed(body).events
    assert event.identity == content_digest(obj)
    assert event.fingerprint == content_digest(obj, "timestamp")
    assert event.entity_id == (entity or "sha256-" + content_digest(obj).hex())
    assert event.status == "stored"


def test_history_updates_told_apart_only_by_their_timestamp_are_two_events() -> None:
    """Found while writing these tests: the ignored `timestamp` was left out of the digest that
    names an event without an id, so every later `history.updated` of an account was answered
    `duplicate` of the first, for ever. The timestamp is all that tells them apart."""
    first = verify_signed(b'{"type":"history.updated","timestamp":"2026-11-20T10:00:00Z","accountId":"a"}')
    later = verify_signed(b'{"type":"history.updated","timestamp":"2026-11-20T11:00:00Z","accountId":"a"}')
    retry = verify_signed(b'{"accountId":"a","type":"history.updated","timestamp":"2026-11-20T10:00:00Z"}')
    assert first.events[0].identity != later.events[0].identity
    assert first.events[0].identity == retry.events[0].identity
    assert first.events[0].entity_id == later.events[0].entity_id == "account:a"


def test_content_identity_is_canonical() -> None:
    """Formerly the raw bytes were hashed, so key order and whitespace made two events of one
    body; now canonically identical bodies are one occurrence and any other content is another."""
    a = verify_signed(b'{"type":"history.updated","accountId":"a"}').events[0]
    b = verify_signed(b'{"accountId":"a", "type":"history.updated"}').events[0]
    c = verify_signed(b'{"type":"history.updated","accountId":"b"}').events[0]
    assert a.identity == b.identity and a.fingerprint == b.fingerprint
    assert c.identity != a.identity


def test_open_and_close_of_one_position_are_distinct_events() -> None:
    """One position, two occurrences: told apart by type (and each by its own time), one entity."""
    opened = verify_signed(b'{"type":"position.opened","position":{"id":"7","openTime":"T1"}}').events[0]
    closed = verify_signed(b'{"type":"position.closed","position":{"id":"7","openTime":"T1",'
                            b'"closeTime":"T2"}}').events[0]
    assert (opened.event_type, opened.identity) == ("position.opened", ("7", "T1"))
    assert (closed.event_type, closed.identity) == ("position.closed", ("7", "T2"))
    assert opened.entity_id == closed.entity_id == "position:7"
    assert dedup_key("mc", opened.event_type, opened.identity) != dedup_key("mc", closed.event_type,
                                                                           closed.identity)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"not json", "not valid JSON"),
        (b'{"type":', "not valid JSON"),
        (b'{"type":"position.opened","position":{"id":"\xff"}}', "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[]", "JSON list"),
        (b'[{"type":"position.opened"}]', "JSON list"),
        (b'"position.opened"', "JSON str"),
        (b"42", "JSON int"),
        (b"null", "JSON NoneType"),
        (b"{}", "no event type"),
        (b'{"type":5}', "no event type"),
        (b'{"type":"  ","event":null}', "no event type"),
        (b'{"position":{"id":"1"},"ticket":2}', "no event type"),
    ],
)
def test_quarantine(body: bytes, reason: str) -> None:
    verified = verify_signed(body)
    (event,) = verified.events
    assert_quarantined(event, body, reason)
    assert verified.attempt == 1


@pytest.mark.parametrize(
    ("fields", "identity"),
    [(("position.magicNumber",), "7001"), (("nope.x", "position.symbol"), "EURUSD"),
     (("accountId",), ACCOUNT), (("ticket",), None)],
)
def test_dedup_fields_override(fields: tuple[str, ...], identity: str | None) -> None:
    """`dedup_fields` names the occurrence by the first id found there, alone (no time); the
    order key stays the position."""
    source = SourceConfig(name="mc", scheme="metacopier", secrets=(Secret(MC_SECRET),), dedup_fields=fields)
    (event,) = verify_signed(MC_BODY, source).events
    assert event.identity == ((identity,) if identity else content_digest(orjson.loads(MC_BODY)))
    assert event.entity_id == MC_ENTITY


def test_source_from_parse_config(tmp_path: Path) -> None:
    table = source_table("mc", "metacopier", tolerance_seconds=60, dedup_fields=["position.magicNumber"])
    source = parse_config({"sources": [table]}, origin="test.toml", base_dir=tmp_path).sources["mc"]
    verified = metacopier.verify(MC_BODY, signed(secret=MC_SECRET_NEW), MC_NOW + 60, source)
    assert verified.events[0].identity == ("7001",)
    exc = rejected(MC_BODY, signed(), MC_NOW + 61, source)
    assert exc.code == "stale_timestamp"
    assert "61 s in the past; tolerance is 60 s" in exc.detail


def test_sample_bodies_parse() -> None:
    for event_type in metacopier.EVENT_TYPES:
        body = metacopier.sample(event_type)
        obj = orjson.loads(body)
        (event,) = verify_signed(body).events
        assert event.event_type == event_type
        if event_type == "history.updated":
            assert event.identity == content_digest(obj)
            assert event.fingerprint == content_digest(obj, "timestamp")
            assert event.entity_id == f"account:{obj['accountId']}"
        else:
            position = obj["position"]
            when = position["closeTime" if event_type == "position.closed" else "openTime"]
            assert event.identity == (position["id"], when)
            assert event.entity_id == f"position:{position['id']}"


# --- properties ------------------------------------------------------------------------

HEADER_NAMES = ["x-metacopier-signature", "x-webhook-signature", "x-metacopier-timestamp",
                "x-metacopier-delivery-attempt", "authorization"]
headers_strategy = st.dictionaries(
    st.sampled_from(HEADER_NAMES) | st.text(max_size=20), st.text(max_size=80), max_size=6)
latin1_text = st.text(st.characters(max_codepoint=0xFF), max_size=80)
mc_objects = st.fixed_dictionaries(
    {},
    optional={"type": json_values | st.sampled_from(metacopier.EVENT_TYPES), "event": json_values,
              "eventType": json_values, "position": json_values | st.fixed_dictionaries(
                  {}, optional={"id": json_values, "symbol": json_values}),
              "ticket": json_values, "accountId": json_values, "symbol": json_values},
)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), headers=headers_strategy,
       now=st.floats(min_value=0, max_value=4e9), source=st.sampled_from([HMAC, HMAC_ONE, NO_TS]))
def test_property_arbitrary_request_verifies_or_rejects(body: bytes, headers: dict[str, str], now: float,
                                                       source: SourceConfig) -> None:
    outcome(body, headers, now, source)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300),
       headers=st.dictionaries(st.sampled_from(HEADER_NAMES), latin1_text, max_size=4))
def test_property_bearer_latin1_headers_verify_or_reject(body: bytes, headers: dict[str, str]) -> None:
    outcome(body, headers, MC_NOW, BEARER)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), headers=headers_strategy)
@example(body=MC_BODY, headers={"x-metacopier-delivery-attempt": "²"})
def test_property_auth_none_any_headers(body: bytes, headers: dict[str, str]) -> None:
    assert outcome(body, headers, MC_NOW, NONE) is not None


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300) | mc_objects.map(orjson.dumps))
def test_property_authentic_body_never_raises(body: bytes) -> None:
    verified = outcome(body, signed(body), MC_NOW, HMAC)
    assert verified is not None
    (event,) = verified.events
    if event.status == "quarantined":
        assert event.event_type == ""
        assert event.entity_id == sha256_id(body)
        assert event.identity == event.fingerprint == hashlib.sha256(body).digest()
    else:
        assert event.event_type.strip()
        assert event.entity_id
        assert event.identity and len(event.fingerprint) == 32


def test_timestamp_moved_into_the_body_is_refused_when_timestamp_not_required() -> None:
    """A captured timestamped request, replayed with `<ts>.` moved into the body and the header
    dropped, carried a valid body-only signature over `<ts>.<body>` (issue 13, item 9)."""
    replayed = f"{MC_TS}.".encode() + MC_BODY
    exc = rejected(replayed, {"x-metacopier-signature": SIG_TS}, source=NO_TS)
    assert exc.code == "bad_signature" and "timestamp moved into the body" in exc.detail
    for body in (b"7.", b"0." + MC_BODY):  # however short the digits
        headers = {"x-metacopier-signature": hmac_sha256_hex(MC_SECRET.encode(), body)}
        assert rejected(body, headers, source=NO_TS).code == "bad_signature"
    # Bodies that do not start with digits and '.' still verify over the body alone.
    for body in (b" 1.5", b"12", b"x1.", MC_BODY):
        headers = {"x-metacopier-signature": hmac_sha256_hex(MC_SECRET.encode(), body)}
        assert metacopier.verify(body, headers, 0.0, NO_TS).sent_at is None


def test_moved_timestamp_replay_is_not_stored(make_config, serve) -> None:  # type: ignore[no-untyped-def]
    """The same through the real app: the replay was a 200 and a new quarantined event; now a 401."""
    from tests.conftest import mc_sign

    gw = serve(make_config(only=[source_table("mc", "metacopier", require_timestamp=False)]))
    headers = mc_sign(MC_BODY)
    assert gw.post("/hooks/mc", MC_BODY, headers).status_code == 200
    replayed = headers["X-MetaCopier-Timestamp"].encode() + b"." + MC_BODY
    r = gw.post("/hooks/mc", replayed, {"X-MetaCopier-Signature": headers["X-MetaCopier-Signature"]})
    assert r.status_code == 401 and r.json()["code"] == "bad_signature"  # refused: nothing of it is stored


# --- normalization: the vendor page's position fields table ------------------------------

def test_reference_open_normalizes_with_the_position_fields_table() -> None:
    normalized = metacopier.normalize("position.opened", orjson.loads(MC_BODY))
    assert normalized is not None
    assert normalized.to_json() == {
        "kind": "position.opened", "source": "", "event_id": None,
        "account": "6f1c2d7e-5b0a-4c1e-9a53-2f7c8f0b9d11", "position_id": "88412231", "order_id": None,
        "symbol": "EURUSD", "side": "buy", "volume": 0.5, "price": 1.08512, "sl": 1.081, "tp": 1.092,
        "profit": None, "currency": None, "amount": None, "operation": None,
        "occurred_at": "2026-11-20T10:15:01.000Z", "problems": [],
    }


def test_a_close_carries_close_price_profit_and_close_time() -> None:
    event = {"type": "position.closed", "timestamp": "2026-11-20T11:00:00.000Z", "accountId": "acc",
             "position": {"id": "88412231", "symbol": "EURUSD", "orderType": "Sell", "volume": 0.2,
                          "openPrice": 1.085, "closePrice": 1.081, "openTime": "2026-11-20T10:15:01Z",
                          "closeTime": "2026-11-20T10:59:58.5Z", "profit": 80.0, "netProfit": 78.5}}
    normalized = metacopier.normalize("position.closed", event)
    assert normalized is not None and normalized.problems == ()
    assert (normalized.kind, normalized.side, normalized.volume, normalized.price, normalized.profit,
            normalized.occurred_at) == ("position.closed", "sell", 0.2, 1.081, 80.0, "2026-11-20T10:59:58.500Z")


def test_without_position_details_the_ticket_is_the_position_and_the_gaps_are_recorded() -> None:
    normalized = metacopier.normalize("position.closed", {"type": "position.closed", "ticket": 991,
                                                          "timestamp": "2026-11-20T11:00:00Z"})
    assert normalized is not None
    assert normalized.position_id == "991" and normalized.occurred_at == "2026-11-20T11:00:00.000Z"
    assert normalized.volume is None and normalized.side is None
    assert set(normalized.problems) == {"volume: missing", "side: missing (position.orderType or orderType)"}


def test_history_updated_has_no_trading_meaning() -> None:
    assert metacopier.normalize("history.updated", {"type": "history.updated"}) is None
