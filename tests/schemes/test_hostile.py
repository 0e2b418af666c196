"""Hostile input against every verifier: any headers, any bodies, any timestamps.

The per-scheme files test each scheme's rules; these properties hold for all of them at once:
a verifier returns `Verified` or raises `Rejected` and nothing else; an authentic body of any
shape is stored or quarantined with a reason, never refused, and everything it yields can be
stored and served again; a changed byte is caught wherever the scheme signs the body.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gateway._secret import Secret
from gateway.config import SourceConfig
from gateway.errors import Rejected
from gateway.model import Identity, ParsedEvent, Verified, decode_key, dedup_key, load_payload
from gateway.schemes import get_scheme
from gateway.schemes._base import has_wide_int, load_json, scalar
from tests.conftest import (
    MC_SECRET,
    MC_SECRET_NEW,
    PS_SECRET,
    PS_SECRET_NEW,
    TR_KEY,
    TR_KEY_NEW,
    mc_sign,
    ps_sign,
)
from tests.hostile import BODIES, any_body, deep
from tests.schemes.conftest import REJECT_CODES, lower

NOW = 1763633702.331
TOKEN = "bearer-token-0123456789"
MC = SourceConfig(name="mc", scheme="metacopier", secrets=(Secret(MC_SECRET), Secret(MC_SECRET_NEW)))
MC_NO_TS = SourceConfig(name="mc-nots", scheme="metacopier", secrets=(Secret(MC_SECRET),),
                        options={"require_timestamp": False})
MC_BEARER = SourceConfig(name="mcb", scheme="metacopier", options={"auth": "bearer"}, secrets=(Secret(TOKEN),))
MC_NONE = SourceConfig(name="mcn", scheme="metacopier", options={"auth": "none"}, secrets=())
PS = SourceConfig(name="ps", scheme="pipsync", secrets=(Secret(PS_SECRET), Secret(PS_SECRET_NEW)))
PS_TIGHT = SourceConfig(name="ps60", scheme="pipsync", secrets=(Secret(PS_SECRET),), tolerance_seconds=60)
TR = SourceConfig(name="tr", scheme="tradrapi", secrets=(Secret(TR_KEY), Secret(TR_KEY_NEW)))
SOURCES = [MC, MC_NO_TS, MC_BEARER, MC_NONE, PS, PS_TIGHT, TR]
SIGNED_SOURCES = [MC, MC_NO_TS, PS, PS_TIGHT, TR]  # those whose credential is checked

KNOWN_HEADERS = ["X-MetaCopier-Signature", "X-Webhook-Signature", "X-MetaCopier-Timestamp",
                 "X-MetaCopier-Delivery-Attempt", "Authorization", "X-PipSync-Signature", "X-Webhook-Secret",
                 "Content-Type"]
HEX = "0123456789abcdef"


def sign(source: SourceConfig, body: bytes, now: float = NOW) -> dict[str, str]:
    """The headers the sender would send, with lower-case names as the ASGI server hands them."""
    return lower(get_scheme(source.scheme).sign(body, source, now))


def outcome(source: SourceConfig, body: bytes, headers: dict[str, str], now: float = NOW) -> Verified | None:
    """`Verified`, or `None` after a `Rejected` with a known 401 code; anything else propagates."""
    try:
        verified = get_scheme(source.scheme).verify(body, headers, now, source)
    except Rejected as exc:
        assert exc.code in REJECT_CODES, exc.code
        assert exc.status == 401
        assert exc.detail
        return None
    assert isinstance(verified, Verified)
    return verified


def read_back(event: ParsedEvent, body: bytes) -> Any:
    """What the API, the stream and plugins serve for the event (they serialise it with orjson)."""
    payload = load_payload(event.payload if event.payload is not None else body)
    orjson.dumps({"events": [{"payload": payload}]})  # as deep as an API listing writes it; raises if it can't
    return payload


def assert_storable(source: SourceConfig, verified: Verified, body: bytes) -> None:
    """Every event can be stored (UTF-8 text for SQLite, a dedup key) and served again."""
    for event in verified.events:
        if event.status == "quarantined":
            assert event.event_type == ""
            assert event.quarantine_reason and event.quarantine_reason.strip()
        else:
            assert event.event_type.strip()
        assert event.entity_id
        assert event.identity  # never empty: a schemes' event is always named
        assert len(event.fingerprint) == 32
        parts = event.identity if isinstance(event.identity, tuple) else ()
        for text in (event.event_type, event.entity_id, event.account, event.symbol, event.quarantine_reason,
                     *parts):
            if text is not None:
                text.encode("utf-8")  # a lone surrogate would fail here, as it would in SQLite
        key = dedup_key(source.name, event.event_type, event.identity)
        key.encode("utf-8")
        assert decode_key(key) == (source.name, event.event_type, event.identity)
        if event.payload is not None:
            orjson.loads(event.payload)  # a batch member's own JSON is always JSON
        read_back(event, body)
    if verified.attempt is not None:
        assert 0 <= verified.attempt < 2**63  # a counter SQLite can store


# --- strategies: headers -----------------------------------------------------------------

def _case_variants(name: str) -> st.SearchStrategy[str]:
    flips = st.lists(st.booleans(), min_size=len(name), max_size=len(name))
    return flips.map(lambda fs: "".join(c.upper() if f else c.lower() for c, f in zip(name, fs, strict=True)))


header_names = st.sampled_from(KNOWN_HEADERS).flatmap(_case_variants) | st.text(max_size=30)
latin1 = st.text(st.characters(max_codepoint=0xFF), max_size=100)
huge_values = st.builds(lambda c, n: c * n, st.sampled_from(["a", "0", "f", " ", ",", "=", "\xff", "9"]),
                        st.integers(0, 70_000))
hex_values = st.builds(lambda p, h: p + h, st.sampled_from(["", "sha256=", "SHA256=", "v1=", "t=1,v1="]),
                       st.text(HEX + HEX.upper(), min_size=38, max_size=66))
structured = st.builds(
    lambda t, sigs: ",".join([f"t={t}", *(f"v1={s}" for s in sigs)]),
    st.integers(-(10**20), 10**20).map(str) | st.text(max_size=20),
    st.lists(st.text(HEX, min_size=60, max_size=68), max_size=3),
)
header_values = latin1 | huge_values | hex_values | structured | st.integers().map(str) | st.just("")
headers_strategy = st.dictionaries(header_names, header_values, max_size=8)



SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.data_too_large])


# --- (a) arbitrary requests: Verified or Rejected, and accepted only with the credential -------

@SETTINGS
@given(source=st.sampled_from(SOURCES), body=any_body, junk=headers_strategy, with_credential=st.booleans(),
       decoys=st.dictionaries(st.sampled_from(KNOWN_HEADERS), header_values, max_size=3))
@example(source=MC, body=b"{}", junk={}, with_credential=False,
         decoys={"X-MetaCopier-Signature": "0" * 64, "X-MetaCopier-Timestamp": "1763633702331"})
@example(source=TR, body=b"{}", junk={"x-webhook-secret": "\xff" * 40}, with_credential=False, decoys={})
@example(source=PS, body=b"{}", junk={"x-pipsync-signature": "t=" + "9" * 70_000}, with_credential=False,
         decoys={})
def test_any_request_is_verified_or_rejected(source: SourceConfig, body: bytes, junk: dict[str, str],
                                            with_credential: bool, decoys: dict[str, str]) -> None:
    headers = dict(junk)
    if with_credential:
        headers |= sign(source, body)
    # Case variants of the real names: a raw dict may hold them, ASGI servers lower-case them.
    # Verifiers read lower-case names only, so a decoy never overrides (or supplies) a credential.
    headers |= {name: value for name, value in decoys.items() if name != name.lower()}
    verified = outcome(source, body, headers)
    if source in SIGNED_SOURCES or source is MC_BEARER:
        # Guessing an HMAC, a token or a SHA-1 is out of reach: acceptance means our credential.
        assert (verified is not None) == with_credential
    else:
        assert verified is not None  # auth = "none" takes anything
    if verified is not None:
        assert verified.events or source is TR  # an empty TradrAPI batch is the only empty result
        assert_storable(source, verified, body)


@SETTINGS
@given(source=st.sampled_from(SOURCES), body=st.binary(max_size=100), name=st.sampled_from(KNOWN_HEADERS),
       value=huge_values | latin1)
def test_one_hostile_credential_header(source: SourceConfig, body: bytes, name: str, value: str) -> None:
    """A single known header holding anything: a 401 with a code, never another exception."""
    verified = outcome(source, body, {name.lower(): value})
    assert verified is None or source is MC_NONE


# --- (b) authentic hostile JSON: stored or quarantined, never refused ----------------------------

@SETTINGS
@given(data=st.data(), source=st.sampled_from(SOURCES))
def test_authentic_hostile_json_is_stored_or_quarantined(data: st.DataObject, source: SourceConfig) -> None:
    body = data.draw(BODIES[source.scheme], label="body")
    verified = outcome(source, body, sign(source, body))
    assert verified is not None, "an authentic request was refused"
    assert_storable(source, verified, body)
    if source.scheme != "tradrapi":
        (event,) = verified.events
        assert event.payload is None  # the body itself is the event
        reason = load_json(body)[1]
        assert (event.status == "quarantined") == (reason is not None or not _has_type(source, body))


def _has_type(source: SourceConfig, body: bytes) -> bool:
    parsed = orjson.loads(body)
    names = ("type", "event", "eventType") if source.scheme == "metacopier" else ("type",)
    return any(isinstance(parsed.get(n), str) and parsed[n].strip() for n in names)


@pytest.mark.parametrize(("depth", "status"), [(200, "stored"), (201, "quarantined"), (252, "quarantined"),
                                               (254, "quarantined"), (300, "quarantined"), (1023, "quarantined"),
                                               (1030, "quarantined")])
@pytest.mark.parametrize("source", [MC, PS, TR], ids=lambda s: s.scheme)
def test_deep_nesting_boundary(source: SourceConfig, depth: int, status: str) -> None:
    """Bodies too deep to be written back inside an API listing are quarantined, and served as null.

    Found by the property above: a 300-level MetaCopier body was stored, and every API listing
    that included it, the event itself and its plugin deliveries then failed. The HTTP property
    then found 252 levels: writable alone, but not inside a listing's own three levels.
    """
    kind = {"metacopier": '"type":"position.opened","ticket":"1"', "pipsync": '"type":"trade.opened","id":"1"',
            "tradrapi": '"eventType":"open_position","payload":{"id":1}'}[source.scheme]
    body = b"{" + kind.encode() + b',"x":' + deep(depth - 1, "[") + b"}"  # the root object is one level
    verified = outcome(source, body, sign(source, body))
    assert verified is not None
    (event,) = verified.events
    assert event.status == status
    if status == "quarantined":
        assert event.quarantine_reason is not None
        assert "nested deeper" in event.quarantine_reason or "not valid JSON" in event.quarantine_reason
        assert read_back(event, body) is None
    else:
        assert read_back(event, body) is not None


def test_load_payload_hands_on_none_for_what_cannot_be_written_back() -> None:
    assert load_payload(None) is None
    assert load_payload(b"\xff") is None
    assert load_payload(deep(200, "[")) is not None
    assert load_payload(deep(201, "[")) is None
    assert load_payload(deep(254, "{")) is None
    assert load_payload(b'{"a":"' + b"[" * 400 + b'"}') == {"a": "[" * 400}  # brackets in strings are text


# --- ids from numbers: exact or none -------------------------------------------------------------

ID_BODIES: dict[str, Callable[[bytes], bytes]] = {
    "metacopier": lambda n: b'{"type":"position.opened","ticket":' + n + b"}",
    "pipsync": lambda n: b'{"type":"trade.opened","id":' + n + b"}",
    "tradrapi": lambda n: b'{"payload":[{"eventType":"open_position","payload":{"id":' + n + b"}}]}",
}
ids = (st.integers(-(2**70), 2**70) | st.integers(2**53 - 3, 2**53 + 3) | st.integers(2**64 - 3, 2**64 + 3)
       | st.integers(-(2**63) - 3, -(2**63) + 3))


@SETTINGS
@given(source=st.sampled_from([MC, PS, TR]), a=ids, b=ids)
@example(source=MC, a=18446744073709551616, b=18446744073709551617)  # found: both read as 1.8446744073709552e19
@example(source=TR, a=18446744073709551616, b=18446744073709551617)
@example(source=PS, a=-9223372036854775809, b=-9223372036854775808)
def test_numeric_ids_are_exact_or_replaced_by_a_hash(source: SourceConfig, a: int, b: int) -> None:
    """An id is the sender's number exactly, or the body's digest: two different ids never merge.

    orjson reads integers beyond 64 bits as rounded floats; before the fix the rounded value
    became the id, so a second position was answered 'duplicate' and never stored.
    """
    keys = []
    for n in (a, b):
        body = ID_BODIES[source.scheme](str(n).encode())
        verified = outcome(source, body, sign(source, body))
        assert verified is not None
        (event,) = verified.events
        assert event.identity == (str(n),) or isinstance(event.identity, bytes)
        if -(2**63) <= n < 2**64:
            assert event.identity == (str(n),)  # what orjson reads exactly stays the id
        else:
            # Named and compared by the bytes as sent: the rounded value would merge two ids.
            assert event.identity == event.fingerprint == hashlib.sha256(body).digest()
        keys.append(dedup_key(source.name, event.event_type, event.identity))
    assert (keys[0] == keys[1]) == (a == b)


@pytest.mark.parametrize(("value", "out"), [(2.0**53 - 1, str(2**53 - 1)), (-(2.0**53) + 1, str(-(2**53) + 1)),
                                            (2.0**53, None), (-(2.0**53), None), (1e20, None), (1e300, None)])
def test_scalar_refuses_floats_that_may_be_rounded(value: float, out: str | None) -> None:
    assert scalar(value) == out


@pytest.mark.parametrize(
    ("body", "wide"),
    [(b'{"a":18446744073709551615}', False), (b'{"a":18446744073709551616}', True),
     (b'{"a":-9223372036854775808}', False), (b'{"a":-9223372036854775809}', True),
     (b'{"a":"123456789012345678901234567890"}', False), (b'{"a":123456789012345678901.5}', False),
     (b'{"a":12345678901234567890123e2}', False), (b'{"a":[1,' + b"9" * 300 + b"]}", True),
     (b'{"a":1}', False)],
)
def test_has_wide_int(body: bytes, wide: bool) -> None:
    assert has_wide_int(body) is wide


@pytest.mark.parametrize("attempts", [b"18446744073709551615", b"9223372036854775808", b"-1", b"1000000000"])
def test_tradrapi_attempts_outside_a_counter_are_ignored(attempts: bytes) -> None:
    """Found by the property above: `"attempts": 2**64-1` reached the store, which cannot keep it
    in a signed 64-bit column, so an authentic batch got a 503 on every retry, for ever."""
    body = b'{"payload":[{"eventType":"open_position","payload":{"id":1}}],"attempts":' + attempts + b"}"
    verified = outcome(TR, body, sign(TR, body))
    assert verified is not None
    assert verified.attempt is None
    assert verified.events[0].status == "stored"


def test_tradrapi_batch_with_wide_int_is_kept_whole() -> None:
    body = b'{"payload":[{"eventType":"open_position","payload":{"id":1,"n":123456789012345678901234}}],"attempts":2}'
    verified = outcome(TR, body, sign(TR, body))
    assert verified is not None
    (event,) = verified.events
    assert event.status == "quarantined"
    assert event.quarantine_reason is not None and "64 bits" in event.quarantine_reason
    assert event.entity_id == "sha256-" + hashlib.sha256(body).hexdigest()
    assert event.identity == event.fingerprint == hashlib.sha256(body).digest()
    assert verified.attempt == 2


# --- (c) tampering: any changed byte is caught where the body is signed ---------------------------

def _mutate(data: bytes, index: int, byte: int) -> bytes:
    index %= len(data)
    assume(data[index] != byte)
    return data[:index] + bytes([byte]) + data[index + 1:]


signed_bodies = st.one_of(BODIES["metacopier"], BODIES["pipsync"]).filter(bool)


@SETTINGS
@given(source=st.sampled_from([MC, MC_NO_TS, PS]), body=signed_bodies, index=st.integers(0, 10**6),
       byte=st.integers(0, 255), cut=st.integers(0, 10**6))
def test_any_body_change_is_rejected(source: SourceConfig, body: bytes, index: int, byte: int, cut: int) -> None:
    headers = sign(source, body)
    assert outcome(source, body, headers) is not None
    for changed in (_mutate(body, index, byte), body[: cut % len(body)], body + bytes([byte])):
        with pytest.raises(Rejected) as info:
            get_scheme(source.scheme).verify(changed, headers, NOW, source)
        assert info.value.code == "bad_signature"


CREDENTIAL = {"metacopier": "x-metacopier-signature", "pipsync": "x-pipsync-signature"}


@SETTINGS
@given(source=st.sampled_from([MC, MC_NO_TS, PS]), body=st.binary(max_size=200), index=st.integers(0, 10**6),
       byte=st.integers(0, 255), cut=st.integers(0, 10**6), which=st.sampled_from(["signature", "timestamp"]))
def test_any_signature_header_change_is_rejected(source: SourceConfig, body: bytes, index: int, byte: int,
                                                  cut: int, which: str) -> None:
    """Changing or cutting the signature (or MetaCopier's timestamp) rejects, bar hex case.

    Hex digits are accepted in either case (senders.md), so `a` -> `A` is the same signature.
    """
    headers = sign(source, body)
    name = CREDENTIAL[source.scheme] if which == "signature" or source.scheme == "pipsync" \
        else "x-metacopier-timestamp"
    raw = headers[name].encode("latin-1")
    for changed in (_mutate(raw, index, byte), raw[: cut % len(raw)]):
        value = changed.decode("latin-1")
        verified = outcome(source, body, headers | {name: value})
        if verified is not None:
            assert value.lower() == headers[name].lower(), f"accepted a changed {name}: {value!r}"


@SETTINGS
@given(body=BODIES["tradrapi"], other=BODIES["tradrapi"])
def test_tradrapi_does_not_detect_body_changes(body: bytes, other: bytes) -> None:
    """Documented limitation: TradrAPI's credential is a static header, the same on every request.

    Whoever holds one request's headers can send any body; deduplication is the only replay
    defence (senders.md). This test pins that down so a change of scheme is noticed.
    """
    headers = sign(TR, body)
    assert headers == sign(TR, other)
    assert outcome(TR, other, headers) is not None


def test_bearer_and_none_do_not_detect_body_changes() -> None:
    """The same limitation for MetaCopier's bearer and none modes: nothing signs the body."""
    for source in (MC_BEARER, MC_NONE):
        headers = sign(source, b'{"type":"position.opened","ticket":"1"}')
        assert outcome(source, b'{"type":"position.closed","ticket":"2"}', headers) is not None


# --- (d) timestamps ------------------------------------------------------------------------------

timestamp_text = st.one_of(
    st.integers(-(10**25), 10**25).map(str), st.text(max_size=30), latin1,
    st.integers(0, 10**19).map(lambda n: f" {n}\t"), st.integers(0, 10**13).map(lambda n: f"{n}.5"),
    st.sampled_from(["", " ", "1e12", "0x1", "+1", "\uff11", "²", "\u0661", "9" * 19, "9" * 20, "0" * 19, "00"]),
)


@SETTINGS
@given(source=st.sampled_from([MC, MC_NO_TS, PS, PS_TIGHT]), body=st.binary(max_size=100), ts=timestamp_text,
       now=st.floats(0, 1e11))
@example(source=MC, body=b"", ts="1763633702331\x85", now=NOW)  # Latin-1 NEL: str.strip() removes it
def test_any_timestamp_value_is_verified_or_rejected(source: SourceConfig, body: bytes, ts: str,
                                                      now: float) -> None:
    """Any timestamp text, signed over what the verifier reads: accepted only inside the window."""
    signed_ts = ts.strip().encode("latin-1", errors="replace")
    sig = hmac.new(source.secrets[0].key, signed_ts + b"." + body, hashlib.sha256).hexdigest()
    if source.scheme == "metacopier":
        headers = {"x-metacopier-timestamp": ts, "x-metacopier-signature": sig}
    else:
        headers = {"x-pipsync-signature": f"t={ts},v1={sig}"}
    verified = outcome(source, body, headers, now)
    if verified is not None:
        assert verified.sent_at is not None
        assert abs(now - verified.sent_at) <= source.tolerance_seconds


@SETTINGS
@given(source=st.sampled_from([MC, MC_NO_TS, PS, PS_TIGHT]), body=st.binary(max_size=100),
       ts=st.integers(0, 10**19 - 1), now=st.floats(0, 4e12))
@example(source=PS, body=b"", ts=1763633702331, now=1763633702.331 + 301)
@example(source=PS_TIGHT, body=b"", ts=1763633702, now=1763633702.0 - 61)
@example(source=MC, body=b"", ts=1763633702, now=1763633702.0)  # seconds where milliseconds belong
def test_signed_timestamps_outside_the_window_are_stale_or_future(source: SourceConfig, body: bytes, ts: int,
                                                                   now: float) -> None:
    """A correctly signed integer timestamp: accepted in the window, else stale or future by direction."""
    if source.scheme == "metacopier":
        headers = mc_sign(body, MC_SECRET, ts)
        sent_at = ts / 1000
    else:
        headers = ps_sign(body, PS_SECRET, ts)
        sent_at = ts / 1000 if len(str(ts)) == 13 else float(ts)
    skew = now - sent_at
    try:
        verified = get_scheme(source.scheme).verify(body, lower(headers), now, source)
    except Rejected as exc:
        assert abs(skew) > source.tolerance_seconds
        assert exc.code == ("stale_timestamp" if skew > 0 else "future_timestamp")
        return
    assert abs(skew) <= source.tolerance_seconds
    assert verified.sent_at == sent_at


# --- dedup keys ----------------------------------------------------------------------------------

tricky = st.text(":%@#-2ADad30\x00", max_size=8) | st.text(max_size=8)  # separators, escapes, look-alikes
identities = (st.lists(tricky, min_size=1, max_size=3).map(tuple)
              | st.binary(min_size=32, max_size=32) | st.sampled_from([bytes(32), b"\xff" * 32]))


@settings(max_examples=500, deadline=None)
@given(source=tricky, event_type=tricky, identity=identities)
@example(source="a:b", event_type="c", identity=("d",))
@example(source="a", event_type="-", identity=("x",))
@example(source="a", event_type="%2D", identity=("x",))
@example(source="a", event_type="t", identity=("a\x00b",))
@example(source="a", event_type="t", identity=("X@5",))
@example(source="a", event_type="t", identity=("#sha256-" + "00" * 32,))
@example(source="a", event_type="", identity=bytes(32))
def test_dedup_key_decodes_back_to_its_parts(source: str, event_type: str, identity: Identity) -> None:
    """Decodable means injective: two different (source, type, identity) never share a key, even with
    ':', '@', '#' or '%' anywhere (source names are validated, but event types and ids come from senders)."""
    key = dedup_key(source, event_type, identity)
    assert decode_key(key) == (source, event_type, identity)
    assert "\x00" not in key  # SQLite's JSON functions would cut the key there


def test_dedup_key_escapes_nul() -> None:
    """Found by the HTTP properties: a retried event whose id held NUL got a 503 for ever (the
    store's duplicate lookup, through SQLite's json_each, cut the key at NUL and missed it)."""
    assert dedup_key("mc", "a\x00", ("b\x00c",)) == "mc:a%00:b%00c"
    assert dedup_key("mc", "t", ("%00",)) == "mc:t:%2500"
    assert dedup_key("mc", "t", ("\x00", "\x00@")) == "mc:t:%00@%00%40"
    assert dedup_key("m\x00c", "t", ("1",)) == "m%00c:t:1"


@settings(max_examples=300, deadline=None)
@given(a=st.tuples(tricky, tricky, identities), b=st.tuples(tricky, tricky, identities))
@example(a=("tr", "account_updated", ("X@5",)), b=("tr", "account_updated", ("X", "5")))
@example(a=("a", "t", ("x", "")), b=("a", "t", ("x@",)))
@example(a=("a", "t", ("",)), b=("a", "t", ("", "")))
def test_dedup_key_is_injective_with_any_source(a: tuple[str, str, Identity], b: tuple[str, str, Identity]) -> None:
    assert (dedup_key(*a) == dedup_key(*b)) == (a == b)
