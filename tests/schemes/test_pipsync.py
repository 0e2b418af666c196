"""PipSync: `X-PipSync-Signature: t=<unix>,v1=<hex>` over `t.body`; payload parsing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._secret import Secret
from gateway.config import SourceConfig, parse_config
from gateway.errors import Rejected
from gateway.model import Verified
from gateway.schemes import get_scheme, pipsync
from gateway.schemes._base import hmac_sha256_hex
from tests.conftest import PS_BODY, PS_SECRET, PS_SECRET_NEW, ps_sign, source_table
from tests.schemes.conftest import Reference, assert_quarantined, json_values, lower, sha256_id

# senders.md test vector
T = 1763633702
SIG = "fb9009dee5e7c12716c768727b16cefeeb1a369a53488d2a10f6b550f1be9e82"
SIG_NEW = hmac_sha256_hex(PS_SECRET_NEW.encode(), str(T).encode(), b".", PS_BODY)
OTHER = "0" * 64
UNCONFIGURED = "whsec_nobody_configured_this"

PS = SourceConfig(name="ps", scheme="pipsync", secrets=(Secret(PS_SECRET), Secret(PS_SECRET_NEW)))
PS_ONE = SourceConfig(name="ps1", scheme="pipsync", secrets=(Secret(PS_SECRET),))

FULLWIDTH = {ord(d): ord(d) + 0xFEE0 for d in "0123456789"}  # "1" -> "\uff11", looks like a digit


def hdr(value: str) -> dict[str, str]:
    return {"x-pipsync-signature": value}


REF = Reference(pipsync.verify, PS_BODY, T, PS, ps_sign, PS_SECRET, T, one_event=True)
signed, rejected, verify_signed, outcome = REF.signed, REF.rejected, REF.verify_signed, REF.outcome


def content_digest(obj: Any) -> bytes:
    """What names an event without any id: its canonical JSON (PipSync ignores no field)."""
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).digest()


PS_IDENTITY = ("evt_01JD3W8K2M",)  # the event's own id, the same on every retry
PS_ENTITY = "position:771203"


# --- test vectors ----------------------------------------------------------------------

def test_vector() -> None:
    assert hmac_sha256_hex(PS_SECRET.encode(), b"1763633702", b".", PS_BODY) == SIG
    assert ps_sign(PS_BODY, t=T) == {"X-PipSync-Signature": f"t={T},v1={SIG}"}


@pytest.mark.parametrize("now", [1763633702.0, 1763633702.999])
def test_sign_reproduces_vector_and_verifies(now: float) -> None:
    headers = pipsync.sign(PS_BODY, PS, now)
    assert headers["X-PipSync-Signature"] == f"t={T},v1={SIG}"  # int(now): truncated, not rounded
    verified = pipsync.verify(PS_BODY, lower(headers), now, PS)
    assert verified.sent_at == float(T)


def test_registry_resolves_the_scheme_object() -> None:
    scheme = get_scheme("pipsync")
    assert scheme is pipsync.scheme and scheme.name == "pipsync"
    assert scheme.credential_headers == frozenset()
    assert set(pipsync.EVENT_TYPES) == {"signal.received", "trade.opened", "trade.closed", "trade.tp_hit",
                                        "trade.sl_hit"}


# --- valid requests --------------------------------------------------------------------

def test_reference_request_verifies() -> None:
    verified = pipsync.verify(PS_BODY, hdr(f"t={T},v1={SIG}"), T, PS)
    assert isinstance(verified, Verified)
    assert verified.sent_at == 1763633702.0
    assert verified.attempt is None
    (event,) = verified.events
    assert event.event_type == "trade.opened"
    assert event.identity == PS_IDENTITY
    assert event.entity_id == PS_ENTITY
    assert event.account == "acc_12"
    assert event.symbol == "EURUSD"
    assert event.payload is None
    assert event.status == "stored"


@pytest.mark.parametrize(
    "value",
    [
        f"t={T},v1={SIG}",
        f"v1={SIG},t={T}",
        f" t = {T} , v1 = {SIG} ",
        f"t={T},v1={OTHER},v1={SIG}",
        f"t={T},v1={SIG},v1={OTHER}",
        f"v1={OTHER},t={T},v1={OTHER},v1={SIG}",
        f"v0={'a' * 64},t={T},v1={SIG}",
        f"t={T},v0=garbage,v1={SIG},x=y,scheme=",
        f"t={T},V1=zzz,v1={SIG}",
        f"t={T},v1={SIG.upper()}",
        f"t={T},,v1={SIG},",
        f"t={T},v1={SIG_NEW}",
        f"t={T},v1={OTHER},v1={SIG_NEW}",
    ],
    ids=["plain", "reordered", "spaces", "second-v1", "first-v1", "third-v1", "v0-ignored",
         "unknown-keys", "key-case", "upper-hex", "empty-parts", "rotated", "rotated-second-v1"],
)
def test_header_variants_accepted(value: str) -> None:
    assert pipsync.verify(PS_BODY, hdr(value), T, PS).events[0].identity == PS_IDENTITY


# --- authentication failures -----------------------------------------------------------

@pytest.mark.parametrize("index", [0, 5, len(PS_BODY) // 2, len(PS_BODY) - 1])
def test_tampered_body(index: int) -> None:
    body = bytearray(PS_BODY)
    body[index] ^= 0x20
    exc = rejected(bytes(body), signed())
    assert exc.code == "bad_signature"
    assert "t + '.' + raw body" in exc.detail


@pytest.mark.parametrize(
    "value",
    [f"t={T + 1},v1={SIG}", f"t=0{T},v1={SIG}", f"t={T},v1={OTHER}",
     f"t={T},v1={hmac_sha256_hex(PS_SECRET.encode(), PS_BODY)}",
     f"t={T},v1={hmac_sha256_hex(UNCONFIGURED.encode(), str(T).encode(), b'.', PS_BODY)}",
     f"t={T},v0={SIG},v1={OTHER}"],
    ids=["t-changed", "t-leading-zero", "zero-sig", "body-only", "unconfigured", "sig-under-v0"],
)
def test_bad_signature(value: str) -> None:
    assert rejected(PS_BODY, hdr(value)).code == "bad_signature"


@pytest.mark.parametrize(
    ("secret", "source", "ok"),
    [(PS_SECRET, PS, True), (PS_SECRET_NEW, PS, True), (PS_SECRET_NEW, PS_ONE, False),
     (UNCONFIGURED, PS, False)],
)
def test_rotation(secret: str, source: SourceConfig, ok: bool) -> None:
    if ok:
        assert pipsync.verify(PS_BODY, signed(secret=secret), T, source).events[0].identity == PS_IDENTITY
    else:
        assert rejected(PS_BODY, signed(secret=secret), source=source).code == "bad_signature"


@pytest.mark.parametrize(
    ("offset", "tolerance", "code"),
    [
        (0, 300, None),
        (300, 300, None),  # exactly at the tolerance passes
        (-300, 300, None),
        (300.5, 300, "stale_timestamp"),
        (-300.5, 300, "future_timestamp"),
        (301, 300, "stale_timestamp"),
        (-301, 300, "future_timestamp"),
        (412, 300, "stale_timestamp"),
        (60, 60, None),
        (-60, 60, None),
        (61, 60, "stale_timestamp"),
        (-61, 60, "future_timestamp"),
        (3600, 3600, None),
        (-3599, 3600, None),
    ],
)
def test_timestamp_window(offset: float, tolerance: int, code: str | None) -> None:
    source = SourceConfig(name="ps", scheme="pipsync", secrets=(Secret(PS_SECRET),),
                          tolerance_seconds=tolerance)
    if code is None:
        assert pipsync.verify(PS_BODY, signed(), T + offset, source).sent_at == float(T)
    else:
        exc = rejected(PS_BODY, signed(), T + offset, source)
        assert exc.code == code
        assert f"tolerance is {tolerance} s" in exc.detail


@pytest.mark.parametrize(("offset", "words"), [(412, "412 s in the past"), (-412, "412 s in the future"),
                                               (7200, "7200 s in the past")])
def test_window_detail_says_direction_and_amount(offset: int, words: str) -> None:
    exc = rejected(PS_BODY, signed(), T + offset)
    assert words in exc.detail
    assert "tolerance is 300 s" in exc.detail
    assert "X-PipSync-Signature" in exc.detail


def test_stale_and_tampered_reports_bad_signature() -> None:
    assert rejected(PS_BODY + b" ", signed(), T + 10_000).code == "bad_signature"


@pytest.mark.parametrize(("t", "sent_at"), [("1763633702331", 1763633702.331), ("1763633702", 1763633702.0)])
def test_thirteen_digit_t_is_milliseconds(t: str, sent_at: float) -> None:
    sig = hmac_sha256_hex(PS_SECRET.encode(), t.encode(), b".", PS_BODY)  # signed as sent
    assert pipsync.verify(PS_BODY, hdr(f"t={t},v1={sig}"), sent_at, PS).sent_at == sent_at
    assert pipsync.verify(PS_BODY, hdr(f"t={t},v1={sig}"), sent_at + 300, PS).sent_at == sent_at
    exc = rejected(PS_BODY, hdr(f"t={t},v1={sig}"), sent_at + 301)
    assert exc.code == "stale_timestamp"
    assert "301 s in the past" in exc.detail


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-signature": f"t={T},v1={SIG}"}, {"x-metacopier-signature": SIG},
     {"x-pipsync-timestamp": str(T)}],
    ids=["none", "other-name", "metacopier", "timestamp-only"],
)
def test_missing_signature(headers: dict[str, str]) -> None:
    exc = rejected(PS_BODY, headers)
    assert exc.code == "missing_signature"
    assert "X-PipSync-Signature" in exc.detail


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        ",,,",
        "garbage",
        SIG,
        f"t={T}",
        f"v1={SIG}",
        f"t={T},v1=",
        f"t=,v1={SIG}",
        f"t={T},t={T},v1={SIG}",
        f"t={T},v1={SIG},t={T}",
        f"t=abc,v1={SIG}",
        f"t=-1,v1={SIG}",
        f"t=1763633702.5,v1={SIG}",
        f"t={str(T).translate(FULLWIDTH)},v1={SIG}",
        f"t=²,v1={SIG}",
        f"t={'9' * 20},v1={SIG}",
        f"t={T},v1=xyz",
        f"t={T},v1={SIG[:-1]}",
        f"t={T},v1={SIG}0",
        f"t={T},v1={'g' * 64}",
        f"t={T},v1={'é' * 64}",
        f"t={T},v1={'€' * 64}",
        f"t={T},v1={'٣' * 64}",
        f"t={T},v1=sha256={SIG}",
        f"t={T};v1={SIG}",
        f"T={T},V1={SIG}",
        f"t={T},v1={SIG},junk",
        f"t={T} v1={SIG}",
        "ÿÿÿ=ÿ,\x00",
    ],
)
def test_malformed_signature(value: str) -> None:
    exc = rejected(PS_BODY, hdr(value))
    assert exc.code == "malformed_signature"
    assert "X-PipSync-Signature" in exc.detail


@pytest.mark.parametrize(
    ("value", "words"),
    [(f"t={T}", "no v1"), (f"v1={SIG}", "no t"), (f"t={T},t={T},v1={SIG}", "more than one t"),
     (f"t={T},v1=abc", "got 3 characters"), (f"t=abc,v1={SIG}", "Unix timestamp"),
     (f"t={T},junk,v1={SIG}", "without '='")],
)
def test_malformed_detail(value: str, words: str) -> None:
    assert words in rejected(PS_BODY, hdr(value)).detail


# --- payload parsing -------------------------------------------------------------------

DATA = {"trade_id": "tr_1", "position_id": "pos_1", "signal_id": "sig_1"}


@pytest.mark.parametrize(
    ("obj", "identity", "entity"),
    [
        ({"id": "evt_1", "type": "trade.opened", "data": DATA}, "evt_1", "position:pos_1"),
        ({"id": "evt_1", "type": "trade.opened", "data": {**DATA, "position_id": None}}, "evt_1", "trade:tr_1"),
        ({"id": "evt_1", "type": "trade.opened", "data": {**DATA, "position_id": ""}}, "evt_1", "trade:tr_1"),
        ({"id": "evt_1", "type": "trade.opened", "data": {**DATA, "position_id": True}}, "evt_1", "trade:tr_1"),
        ({"id": "evt_1", "type": "trade.opened", "data": {"trade_id": "tr_1", "signal_id": "s"}}, "evt_1",
         "trade:tr_1"),
        ({"id": "evt_1", "type": "signal.received", "data": {"signal_id": "sig_1", "account_id": "acc_1"}},
         "evt_1", "account:acc_1"),
        ({"id": "evt_1", "type": "signal.received", "data": {"signal_id": "sig_1"}}, "evt_1", "evt_1"),
        ({"id": "evt_1", "type": "signal.received", "data": {"other": 1}}, "evt_1", "evt_1"),
        ({"id": "evt_1", "type": "signal.received", "data": "not-an-object"}, "evt_1", "evt_1"),
        ({"id": "evt_1", "type": "signal.received"}, "evt_1", "evt_1"),
        ({"id": 77, "type": "signal.received"}, "77", "77"),
        ({"id": "", "type": "trade.closed", "data": DATA}, "pos_1", "position:pos_1"),
        ({"type": "trade.closed", "data": {"position_id": 771203}}, "771203", "position:771203"),
        ({"type": "trade.closed", "data": {"position_id": 771203.0}}, "771203", "position:771203"),
        ({"type": "trade.closed", "data": {"trade_id": "tr_1", "signal_id": "s"}}, "tr_1", "trade:tr_1"),
        ({"type": "signal.received", "data": {"signal_id": "sig_1", "account_id": 12}}, "sig_1", "account:12"),
    ],
)
def test_identity_and_entity_precedence(obj: dict[str, Any], identity: str, entity: str) -> None:
    """The root `id` names the occurrence, else the entity ids as before; delivery is ordered per
    position, else trade, else account, else each event on its own."""
    (event,) = verify_signed(orjson.dumps(obj)).events
    assert event.identity == (identity,)
    assert event.entity_id == entity
    assert event.event_type == obj["type"]
    assert event.status == "stored"


@pytest.mark.parametrize(
    "obj",
    [{"type": "trade.closed"}, {"type": "trade.closed", "id": None, "data": {"position_id": [1]}},
     {"type": "trade.closed", "id": "  ", "data": {"trade_id": False}}],
)
def test_identity_falls_back_to_content_digest(obj: dict[str, Any]) -> None:
    body = orjson.dumps(obj)
    (event,) = verify_signed(body).events
    assert event.identity == event.fingerprint == content_digest(obj)
    assert event.entity_id == "sha256-" + content_digest(obj).hex()


@pytest.mark.parametrize(
    ("data", "account", "symbol"),
    [({"account_id": "acc_12", "symbol": "EURUSD"}, "acc_12", "EURUSD"),
     ({"account_id": 12, "symbol": ""}, "12", None),
     ({"account_id": None, "symbol": ["EURUSD"]}, None, None),
     ("x", None, None)],
)
def test_account_and_symbol(data: Any, account: str | None, symbol: str | None) -> None:
    (event,) = verify_signed(orjson.dumps({"id": "e", "type": "trade.opened", "data": data})).events
    assert (event.account, event.symbol) == (account, symbol)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"{", "not valid JSON"),
        (b'{"type":"trade.opened","id":"\xc3\x28"}', "not valid JSON"),
        (b"\x80\x81", "not valid JSON"),
        (b"[]", "JSON list"),
        (b'[{"type":"trade.opened"}]', "JSON list"),
        (b'"trade.opened"', "JSON str"),
        (b"1.5", "JSON float"),
        (b"{}", "no event type"),
        (b'{"type":null,"id":"evt_1"}', "no event type"),
        (b'{"type":["trade.opened"],"id":"evt_1"}', "no event type"),
        (b'{"type":" ","id":"evt_1"}', "no event type"),
        (b'{"event":"trade.opened","id":"evt_1"}', "no event type"),
    ],
)
def test_quarantine(body: bytes, reason: str) -> None:
    (event,) = verify_signed(body).events
    assert_quarantined(event, body, reason)


@pytest.mark.parametrize(
    ("fields", "identity"),
    [(("id",), "evt_01JD3W8K2M"), (("data.platform",), "ctrader"), (("x", "data.trade_id"), "tr_9f2c"),
     (("missing",), None)],
)
def test_dedup_fields_override(fields: tuple[str, ...], identity: str | None) -> None:
    source = SourceConfig(name="ps", scheme="pipsync", secrets=(Secret(PS_SECRET),), dedup_fields=fields)
    event = verify_signed(PS_BODY, source).events[0]
    assert event.identity == ((identity,) if identity else content_digest(orjson.loads(PS_BODY)))
    assert event.entity_id == PS_ENTITY  # the order key does not follow dedup_fields


def test_source_from_parse_config(tmp_path: Path) -> None:
    table = source_table("ps", "pipsync", tolerance_seconds=30, dedup_fields=["data.trade_id"])
    source = parse_config({"sources": [table]}, origin="test.toml", base_dir=tmp_path).sources["ps"]
    assert pipsync.verify(PS_BODY, signed(secret=PS_SECRET_NEW), T - 30, source).events[0].identity == ("tr_9f2c",)
    exc = rejected(PS_BODY, signed(), T - 31, source)
    assert exc.code == "future_timestamp"
    assert "31 s in the future; tolerance is 30 s" in exc.detail


def test_sample_bodies_parse() -> None:
    for event_type in pipsync.EVENT_TYPES:
        body = pipsync.sample(event_type)
        (event,) = verify_signed(body).events
        obj = orjson.loads(body)
        data = obj["data"]
        assert event.event_type == event_type
        assert event.identity == (obj["id"],)
        if "position_id" in data:
            assert event.entity_id == f"position:{data['position_id']}"
        else:
            assert event.entity_id == f"account:{data['account_id']}"


# --- properties ------------------------------------------------------------------------

HEADER_NAMES = ["x-pipsync-signature", "x-pipsync-timestamp", "authorization"]
parts = st.one_of(
    st.builds(lambda v: f"t={v}", st.sampled_from([str(T), "1763633702331", "", "x"]) | st.text(max_size=15)),
    st.builds(lambda v: f"v1={v}", st.sampled_from([SIG, SIG.upper(), OTHER]) | st.text(max_size=70)),
    st.builds(lambda k, v: f"{k}={v}", st.text(max_size=5), st.text(max_size=10)),
    st.text(max_size=10),
)
structured_header = st.lists(parts, max_size=6).map(",".join)
headers_strategy = st.dictionaries(
    st.sampled_from(HEADER_NAMES) | st.text(max_size=20), st.text(max_size=100) | structured_header,
    max_size=4)
ps_objects = st.fixed_dictionaries(
    {},
    optional={"type": json_values | st.sampled_from(pipsync.EVENT_TYPES), "id": json_values,
              "data": json_values | st.fixed_dictionaries({}, optional={
                  k: json_values for k in ("position_id", "trade_id", "signal_id", "account_id", "symbol")})},
)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), headers=headers_strategy, now=st.floats(min_value=0, max_value=4e9))
def test_property_arbitrary_request_verifies_or_rejects(body: bytes, headers: dict[str, str],
                                                       now: float) -> None:
    outcome(body, headers, now)


harmless_parts = st.one_of(
    st.builds(lambda k, v: f"{k}={v}",
              st.text(st.characters(exclude_characters=",="), min_size=1, max_size=5).filter(
                  lambda k: k.strip() not in ("", "t", "v1")),
              st.text(st.characters(exclude_characters=","), max_size=10)),
    st.builds(lambda v: f"v1={v}", st.text("0123456789abcdefABCDEF", min_size=64, max_size=64)),
    st.sampled_from(["", " "]),
)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), extra=st.lists(harmless_parts, max_size=4),
       order=st.randoms(use_true_random=False), offset=st.integers(min_value=-600, max_value=600))
def test_property_valid_signature_among_other_parts(body: bytes, extra: list[str], order: Any,
                                                    offset: int) -> None:
    sig = hmac_sha256_hex(PS_SECRET_NEW.encode(), str(T).encode(), b".", body)
    items = [f"t={T}", f"v1={sig}", *extra]
    order.shuffle(items)
    try:
        verified = pipsync.verify(body, hdr(",".join(items)), T + offset, PS)
    except Rejected as exc:
        assert abs(offset) > 300
        assert exc.code == ("stale_timestamp" if offset > 0 else "future_timestamp")
    else:
        assert abs(offset) <= 300
        assert verified.sent_at == float(T)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300) | ps_objects.map(orjson.dumps))
def test_property_authentic_body_never_raises(body: bytes) -> None:
    verified = outcome(body, signed(body), T)
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


# --- normalization: trade.* with data.* as senders.md reads them ------------------------

def test_reference_trade_opened_normalizes() -> None:
    normalized = pipsync.normalize("trade.opened", orjson.loads(PS_BODY))
    assert normalized is not None and normalized.problems == ()
    assert (normalized.kind, normalized.account, normalized.position_id, normalized.symbol, normalized.side,
            normalized.volume, normalized.price, normalized.sl, normalized.tp, normalized.occurred_at) == (
        "position.opened", "acc_12", "771203", "EURUSD", "buy", 0.5, 1.08512, 1.081, 1.092,
        "2025-11-20T10:15:02.000Z")


@pytest.mark.parametrize("event_type", ["trade.closed", "trade.tp_hit", "trade.sl_hit"])
def test_closes_and_tp_sl_hits_are_closes(event_type: str) -> None:
    event = {"id": "evt_2", "type": event_type, "created": 1763637302000,
             "data": {"trade_id": "tr_9f2c", "account_id": "acc_12", "symbol": "EURUSD", "side": "SELL",
                      "lots": "0.25", "price": 1.09, "profit": -12.5}}
    normalized = pipsync.normalize(event_type, event)
    assert normalized is not None and normalized.problems == ()
    assert normalized.kind == "position.closed"
    assert normalized.position_id == "tr_9f2c"  # no position_id: the trade, as delivery orders it
    assert (normalized.side, normalized.volume, normalized.price, normalized.profit) == ("sell", 0.25, 1.09, -12.5)
    assert normalized.occurred_at == "2025-11-20T11:15:02.000Z"  # created in milliseconds


def test_signals_have_no_trading_meaning() -> None:
    assert pipsync.normalize("signal.received", {"type": "signal.received", "data": {"symbol": "EURUSD"}}) is None
