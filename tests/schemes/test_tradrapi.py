"""TradrAPI: `x-webhook-secret` = hex SHA-1 of the key; batches split into events."""

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
from gateway.model import Verified
from gateway.schemes import get_scheme, tradrapi
from tests.conftest import TR_BODY, TR_KEY, TR_KEY_NEW, source_table, tr_sign
from tests.schemes.conftest import Reference, assert_quarantined, json_values, sha256_id

# senders.md test vector
TR_HDR = "e2eb5eaa018f8a000f08232be248ecf04825fe54"
TR_HDR_NEW = hashlib.sha1(TR_KEY_NEW.encode()).hexdigest()
UNCONFIGURED = "tradrapi-key-nobody-configured"
NOW = 1763633702.0

TR = SourceConfig(name="tr", scheme="tradrapi", secrets=(Secret(TR_KEY), Secret(TR_KEY_NEW)))
TR_ONE = SourceConfig(name="tr1", scheme="tradrapi", secrets=(Secret(TR_KEY),))
AUTH = {"x-webhook-secret": TR_HDR}



REF = Reference(tradrapi.verify, TR_BODY, NOW, TR)
rejected, outcome = REF.rejected, REF.outcome


def canonical(member: Any) -> bytes:
    return orjson.dumps(member, option=orjson.OPT_SORT_KEYS)


def digest(member: Any) -> bytes:
    """What names a member without an id: the SHA-256 of its canonical JSON."""
    return hashlib.sha256(canonical(member)).digest()


# The reference member: payload.id plus the platform's operation id; ordered per platform trade.
TR_IDENTITY = ("5561201", "op-1")
TR_ENTITY = "position:t-1"


def member(event_type: Any = "open_position", **payload: Any) -> dict[str, Any]:
    return {"brandId": 12, "serverId": 3, "accountId": 99121, "eventType": event_type, "platform": "MT5",
            "payload": payload}


def verify(obj: Any, source: SourceConfig = TR) -> Verified:
    return tradrapi.verify(orjson.dumps(obj), AUTH, NOW, source)


# --- test vectors ----------------------------------------------------------------------

def test_vector() -> None:
    assert hashlib.sha1(TR_KEY.encode()).hexdigest() == TR_HDR
    assert Secret(TR_KEY).derive(tradrapi.sha1_hex) == TR_HDR
    assert tr_sign() == {"x-webhook-secret": TR_HDR}


def test_sign_reproduces_vector() -> None:
    headers = tradrapi.sign(TR_BODY, TR, NOW)
    assert headers["x-webhook-secret"] == TR_HDR
    assert tradrapi.verify(TR_BODY, headers, NOW, TR).events[0].identity == TR_IDENTITY


def test_registry_resolves_the_scheme_object() -> None:
    scheme = get_scheme("tradrapi")
    assert scheme is tradrapi.scheme and scheme.name == "tradrapi"
    assert scheme.credential_headers == {"x-webhook-secret"} and scheme.secret_form is tradrapi.sha1_hex
    assert "open_position" in tradrapi.EVENT_TYPES


# --- authentication --------------------------------------------------------------------

def test_reference_request_verifies() -> None:
    verified = tradrapi.verify(TR_BODY, AUTH, NOW, TR)
    assert verified.attempt == 1
    assert verified.sent_at is None
    (event,) = verified.events
    assert event.event_type == "open_position"
    assert event.identity == TR_IDENTITY
    assert event.entity_id == TR_ENTITY
    assert event.account == "99121"
    assert event.symbol == "EURUSD"
    assert event.status == "stored"
    assert event.quarantine_reason is None
    assert event.payload == canonical(orjson.loads(TR_BODY)["payload"][0])


@pytest.mark.parametrize("now", [0.0, NOW - 10**7, NOW + 10**7, 4e9])
def test_no_timestamp_check(now: float) -> None:
    assert tradrapi.verify(TR_BODY, AUTH, now, TR).events[0].identity == TR_IDENTITY


@pytest.mark.parametrize(
    ("value", "source"),
    [(TR_HDR, TR), (TR_HDR.upper(), TR), (f"  {TR_HDR} ", TR), (TR_HDR_NEW, TR), (TR_HDR, TR_ONE),
     (TR_HDR[:20] + TR_HDR[20:].upper(), TR_ONE)],
    ids=["lower", "upper", "spaces", "rotated", "single", "mixed-case"],
)
def test_header_accepted(value: str, source: SourceConfig) -> None:
    assert tradrapi.verify(TR_BODY, {"x-webhook-secret": value}, NOW, source).events[0].identity == TR_IDENTITY


@pytest.mark.parametrize(
    ("value", "source"),
    [
        (hashlib.sha1(UNCONFIGURED.encode()).hexdigest(), TR),
        (TR_HDR_NEW, TR_ONE),
        (TR_HDR[:-1] + ("0" if TR_HDR[-1] != "0" else "1"), TR),
        ("0" * 40, TR),
        (hashlib.sha1(TR_KEY.encode() + b"\n").hexdigest(), TR),
    ],
    ids=["unconfigured", "not-rotated-in", "one-char", "zeros", "key-with-newline"],
)
def test_bad_signature(value: str, source: SourceConfig) -> None:
    exc = rejected(TR_BODY, {"x-webhook-secret": value}, source=source)
    assert exc.code == "bad_signature"
    assert "SHA-1" in exc.detail


@pytest.mark.parametrize("key", [TR_KEY, TR_KEY_NEW])
def test_plaintext_key_is_malformed_and_says_sha1(key: str) -> None:
    exc = rejected(TR_BODY, {"x-webhook-secret": key})
    assert exc.code == "malformed_signature"
    assert "SHA-1" in exc.detail
    assert f"got {len(key)} characters" in exc.detail


@pytest.mark.parametrize(
    "value",
    ["", "   ", "garbage", TR_HDR[:-1], TR_HDR + "0", "g" * 40, "é" * 40, "ÿ" * 40, "\x00" * 40,
     "\uff10" * 40, "٣" * 40, "€" * 40, TR_HDR[:-1] + "ÿ", f"sha1={TR_HDR}",
     hashlib.sha256(TR_KEY.encode()).hexdigest(), TR_HDR[:20] + " " + TR_HDR[21:] + "a", "0x" + TR_HDR[2:]],
)
def test_malformed(value: str) -> None:
    exc = rejected(TR_BODY, {"x-webhook-secret": value})
    assert exc.code == "malformed_signature"
    assert "40-character hex SHA-1" in exc.detail


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": f"Bearer {TR_HDR}"}, {"x-webhook-signature": TR_HDR}],
    ids=["none", "authorization", "other-name"],
)
def test_missing(headers: dict[str, str]) -> None:
    exc = rejected(TR_BODY, headers)
    assert exc.code == "missing_signature"
    assert "x-webhook-secret" in exc.detail


def test_auth_checked_before_body() -> None:
    assert rejected(b"not json", {}).code == "missing_signature"
    assert rejected(b"", {"x-webhook-secret": "0" * 40}).code == "bad_signature"


# --- batches ---------------------------------------------------------------------------

def test_batch_yields_one_event_per_member_in_order() -> None:
    members = [
        member("open_position", id=1, symbol="EURUSD"),
        member("close_position", id=1, symbol="EURUSD"),
        member("balance_operation", id=9, referenceId="ref-1"),
        {**member("account_updated", id=5, updatedAt=1763633702000), "accountId": None,
         "exchangeAccountId": "ex-5"},
    ]
    verified = verify({"payload": members, "count": 4, "attempts": 3})
    assert verified.attempt == 3
    assert [e.event_type for e in verified.events] == [
        "open_position", "close_position", "balance_operation", "account_updated"]
    assert [e.identity for e in verified.events] == [("1",), ("1",), ("9",), ("5", "1763633702000")]
    assert [e.entity_id for e in verified.events] == ["position:1", "position:1", "account:99121", "account:ex-5"]
    assert [e.account for e in verified.events] == ["99121", "99121", "99121", "ex-5"]
    assert [e.symbol for e in verified.events] == ["EURUSD", "EURUSD", None, None]
    assert [e.payload for e in verified.events] == [canonical(m) for m in members]
    assert all(e.status == "stored" for e in verified.events)


def test_malformed_members_are_quarantined_others_stored() -> None:
    good1 = member("open_position", id=1)
    good2 = member("close_position", id=2)
    members: list[Any] = [good1, 5, "open_position", None, [good1], {"no": "type"}, member(""),
                          member("   "), member(7), member(None), good2]
    verified = verify({"payload": members, "attempts": 1})
    assert len(verified.events) == len(members)
    assert [e.status for e in verified.events] == ["stored"] + ["quarantined"] * 9 + ["stored"]
    assert (verified.events[0].identity, verified.events[-1].identity) == (("1",), ("2",))
    for event, raw in zip(verified.events[1:-1], members[1:-1], strict=True):
        assert event.event_type == ""
        assert event.entity_id == sha256_id(canonical(raw))
        assert event.identity == event.fingerprint == digest(raw)
        assert event.payload == canonical(raw)
        assert event.quarantine_reason
    assert "not an object" in (verified.events[1].quarantine_reason or "")
    assert "no eventType" in (verified.events[5].quarantine_reason or "")


def test_empty_batch_has_no_events() -> None:
    verified = verify({"payload": [], "count": 0, "attempts": 2})
    assert verified.events == ()
    assert verified.attempt == 2


def test_root_single_event() -> None:
    obj = {**member("open_position", id=5561201, symbol="EURUSD"), "attempts": 4}
    verified = verify(obj)
    assert verified.attempt == 4
    (event,) = verified.events
    assert (event.event_type, event.identity, event.entity_id, event.account, event.symbol) == (
        "open_position", ("5561201",), "position:5561201", "99121", "EURUSD")
    assert event.payload is None  # the body itself is the event
    assert event.status == "stored"


def test_root_single_event_fallback_is_canonical_hash() -> None:
    obj = member("open_position", symbol="EURUSD")
    (event,) = verify(obj).events
    assert event.identity == event.fingerprint == digest(obj)
    assert event.entity_id == "sha256-" + digest(obj).hex()


@pytest.mark.parametrize("named", [True, False])
def test_root_single_event_retry_with_another_attempt_count_is_the_same(named: bool) -> None:
    """Found while updating these tests: a root event's `attempts` (the delivery counter, in the
    envelope for a batch) was part of its content, so a retry was a conflict or, without an id,
    a second event."""
    obj = member("open_position", symbol="EURUSD", **({"id": 5} if named else {}))
    first, again = (verify({**obj, "attempts": n}).events[0] for n in (1, 2))
    assert (first.identity, first.fingerprint) == (again.identity, again.fingerprint)
    other = verify({**obj, "lots": 2, "attempts": 1}).events[0]
    assert other.fingerprint != first.fingerprint


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(1, 1), (7, 7), (0, 0), ("2", None), (True, None), (None, None), (2.5, None), ([1], None)],
)
def test_attempts_at_root(attempts: Any, expected: int | None) -> None:
    assert verify({"payload": [member(id=1)], "attempts": attempts}).attempt == expected


def test_attempts_absent() -> None:
    assert verify({"payload": [member(id=1)]}).attempt is None


@pytest.mark.parametrize(
    ("payload", "identity"),
    [
        ({"id": 77, "updatedAt": 1763633702000}, ("77", "1763633702000")),
        ({"id": 77, "updatedAt": "2026-11-20T10:15:01.000Z"}, ("77", "2026-11-20T10:15:01.000Z")),
        ({"id": "acc-77", "updatedAt": 5.0}, ("acc-77", "5")),
        ({"id": "acc-77", "updatedAt": 5.25}, ("acc-77", "5.25")),
        ({"id": 77, "updatedAt": None}, ("77",)),
        ({"id": 77, "updatedAt": ""}, ("77",)),
        ({"id": 77, "updatedAt": True}, ("77",)),
        ({"id": 77, "updatedAt": {"ms": 5}}, ("77",)),
        ({"id": 77}, ("77",)),
        ({"id": 0}, ("0",)),
        ({"id": "X@5"}, ("X@5",)),
    ],
)
def test_identity_of_updates(payload: dict[str, Any], identity: tuple[str, ...]) -> None:
    """An update is named by the entity and its `updatedAt` as separate parts (not `id@time`);
    every update of the account is ordered per that account."""
    (event,) = verify({"payload": [member("account_updated", **payload)]}).events
    assert event.identity == identity
    assert event.entity_id == "account:99121"


def test_repeated_updates_are_distinct_and_retries_identical() -> None:
    first = member("account_updated", id=77, updatedAt=1)
    second = member("account_updated", id=77, updatedAt=2)
    events = verify({"payload": [first, second, first]}).events
    assert [e.identity for e in events] == [("77", "1"), ("77", "2"), ("77", "1")]
    assert events[0].fingerprint == events[2].fingerprint != events[1].fingerprint
    assert {e.entity_id for e in events} == {"account:99121"}


@pytest.mark.parametrize(
    "payload",
    [{"symbol": "EURUSD"}, {"id": None, "updatedAt": 5}, {"id": True}, {"id": 1.5}, {"id": "  "},
     {"id": {"nested": 1}}],
)
def test_fallback_identity_is_canonical_member_hash(payload: dict[str, Any]) -> None:
    m = member("open_position", **payload)
    (event,) = verify({"payload": [m]}).events
    assert event.identity == event.fingerprint == digest(m)
    assert event.entity_id == "sha256-" + digest(m).hex()  # no position: ordered on its own
    assert event.status == "stored"


def test_fallback_identity_ignores_key_order_and_whitespace() -> None:
    a = b'{"payload":[{"eventType":"open_position","payload":{"symbol":"EURUSD","lots":1}}]}'
    b = b'{"payload": [ {"payload": {"lots": 1, "symbol": "EURUSD"}, "eventType": "open_position"} ]}'
    ea = tradrapi.verify(a, AUTH, NOW, TR).events[0]
    eb = tradrapi.verify(b, AUTH, NOW, TR).events[0]
    assert ea.identity == eb.identity == hashlib.sha256(b'{"eventType":"open_position","payload":{"lots":1,'
                                                        b'"symbol":"EURUSD"}}').digest()
    assert ea.payload == eb.payload


def test_payload_not_object_member() -> None:
    m = {"eventType": "open_position", "accountId": "a", "payload": [1, 2]}
    (event,) = verify({"payload": [m]}).events
    assert (event.status, event.event_type, event.identity) == ("stored", "open_position", digest(m))


def test_unknown_event_type_is_stored() -> None:
    (event,) = verify({"payload": [member("challenge_exploded", id=3)]}).events
    assert (event.status, event.event_type, event.identity, event.entity_id) == (
        "stored", "challenge_exploded", ("3",), "account:99121")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"{", "not valid JSON"),
        (b'{"payload":[{"eventType":"open_position","x":"\xfe"}]}', "not valid JSON"),
        (b"\xef\xbb", "not valid JSON"),
        (b"[]", "JSON list"),
        (b'[{"eventType":"open_position"}]', "JSON list"),
        (b'"open_position"', "JSON str"),
        (b"true", "JSON bool"),
        (b"{}", "no payload array"),
        (b'{"payload":{"id":1},"count":1}', "no payload array"),
        (b'{"payload":"x"}', "no payload array"),
        (b'{"event":"open_position"}', "no payload array"),
    ],
)
def test_root_quarantine(body: bytes, reason: str) -> None:
    verified = tradrapi.verify(body, AUTH, NOW, TR)
    (event,) = verified.events
    assert_quarantined(event, body, reason)


def test_attempts_kept_when_root_quarantined() -> None:
    verified = tradrapi.verify(b'{"payload":{"id":1},"attempts":3}', AUTH, NOW, TR)
    assert verified.events[0].status == "quarantined"
    assert verified.attempt == 3


@pytest.mark.parametrize("shape", ["batch", "root"])
def test_deeply_nested_authentic_body_does_not_raise(shape: str) -> None:
    deep = b"[" * 300 + b"]" * 300
    if shape == "batch":
        body = b'{"payload":[' + deep + b"]}"
    else:
        body = b'{"eventType":"open_position","payload":{"x":' + deep + b"}}"
    verified = tradrapi.verify(body, AUTH, NOW, TR)
    assert len(verified.events) == 1


@pytest.mark.parametrize(
    ("fields", "identity"),
    [(("payload.platformTradeId",), "t-1"), (("nope", "payload.platformOperationId"), "op-1"),
     (("accountId",), "99121")],
)
def test_dedup_fields_override(fields: tuple[str, ...], identity: str) -> None:
    source = SourceConfig(name="tr", scheme="tradrapi", secrets=(Secret(TR_KEY),), dedup_fields=fields)
    event = tradrapi.verify(TR_BODY, AUTH, NOW, source).events[0]
    assert event.identity == (identity,)
    assert event.entity_id == TR_ENTITY  # the order key does not follow dedup_fields


def test_dedup_fields_override_uses_path_as_is() -> None:
    """The override names the occurrence by that id alone: no time part is added."""
    source = SourceConfig(name="tr", scheme="tradrapi", secrets=(Secret(TR_KEY),),
                          dedup_fields=("payload.id",))
    m = member("account_updated", id=77, updatedAt=1)
    assert verify({"payload": [m]}, source).events[0].identity == ("77",)
    m = member("account_updated", other=1)
    assert verify({"payload": [m]}, source).events[0].identity == digest(m)


def test_source_from_parse_config(tmp_path: Path) -> None:
    table = source_table("tr", "tradrapi", dedup_fields=["payload.platformTradeId"])
    source = parse_config({"sources": [table]}, origin="test.toml", base_dir=tmp_path).sources["tr"]
    assert tradrapi.verify(TR_BODY, tr_sign(TR_KEY_NEW), NOW, source).events[0].identity == ("t-1",)
    exc = rejected(TR_BODY, tr_sign(UNCONFIGURED), source=source)
    assert exc.code == "bad_signature"


SAMPLE_TIME = {"account_created": "createdAt", "account_updated": "updatedAt", "challenge_created": None,
               "challenge_updated": None}


def test_sample_bodies_parse() -> None:
    for event_type in tradrapi.EVENT_TYPES:
        body = tradrapi.sample(event_type, count=3)
        verified = tradrapi.verify(body, AUTH, NOW, TR)
        assert verified.attempt == 1
        assert [e.event_type for e in verified.events] == [event_type] * 3
        for event, raw in zip(verified.events, orjson.loads(body)["payload"], strict=True):
            payload = raw["payload"]
            when = SAMPLE_TIME.get(event_type, "platformOperationId")
            assert event.identity == (str(payload["id"]),) + ((str(payload[when]),) if when else ())
            if event_type in ("open_position", "close_position"):
                assert event.entity_id == f"position:{payload['platformTradeId']}"
            elif event_type in ("open_order", "cancel_order"):
                assert event.entity_id == f"order:{payload['id']}"
            else:
                assert event.entity_id == "account:99121"


# --- properties ------------------------------------------------------------------------

HEADER_NAMES = ["x-webhook-secret", "authorization"]
headers_strategy = st.dictionaries(
    st.sampled_from(HEADER_NAMES) | st.text(max_size=20),
    st.text(max_size=60) | st.text("0123456789abcdefABCDEF", min_size=40, max_size=40), max_size=4)
members = json_values | st.fixed_dictionaries(
    {},
    optional={"eventType": json_values | st.sampled_from(tradrapi.EVENT_TYPES),
              "accountId": json_values, "exchangeAccountId": json_values,
              "payload": json_values | st.fixed_dictionaries(
                  {}, optional={"id": json_values, "updatedAt": json_values, "symbol": json_values})},
)
roots = st.fixed_dictionaries(
    {}, optional={"payload": st.lists(members, max_size=5) | json_values, "attempts": json_values,
                  "count": json_values, "eventType": json_values})


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), headers=headers_strategy)
def test_property_arbitrary_request_verifies_or_rejects(body: bytes, headers: dict[str, str]) -> None:
    verified = outcome(body, headers)
    if verified is not None:
        assert headers.get("x-webhook-secret", "").strip().lower() in (TR_HDR, TR_HDR_NEW)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300) | roots.map(orjson.dumps))
def test_property_authentic_body_never_raises(body: bytes) -> None:
    verified = outcome(body, AUTH)
    assert verified is not None
    obj = _load(body)
    batch = obj.get("payload") if isinstance(obj, dict) else None
    if isinstance(batch, list):
        assert len(verified.events) == len(batch)
        for event, raw in zip(verified.events, batch, strict=True):
            kind = raw.get("eventType") if isinstance(raw, dict) else None
            good = isinstance(kind, str) and bool(kind.strip())
            assert event.status == ("stored" if good else "quarantined")
            assert event.payload == canonical(raw)
            if not good:
                assert event.entity_id == sha256_id(canonical(raw))
                assert event.identity == digest(raw)
            else:
                assert event.identity and event.fingerprint
    else:
        assert len(verified.events) == 1
        if obj is None or "eventType" not in obj:
            assert verified.events[0].status == "quarantined"
            assert verified.events[0].entity_id == sha256_id(body)
            assert verified.events[0].identity == hashlib.sha256(body).digest()


def _load(body: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


# --- normalization: the page's event interfaces ----------------------------------------

def _member(event_type: str, payload: dict[str, Any], **root: Any) -> dict[str, Any]:
    return {"brandId": 12, "serverId": 3, "accountId": 99121, "eventType": event_type, "platform": "MT5",
            "payload": payload} | root


def test_reference_open_position_normalizes() -> None:
    member = orjson.loads(TR_BODY)["payload"][0]
    normalized = tradrapi.normalize("open_position", member)
    assert normalized is not None and normalized.problems == ()
    assert (normalized.kind, normalized.account, normalized.position_id, normalized.symbol, normalized.side,
            normalized.volume, normalized.price, normalized.occurred_at) == (
        "position.opened", "99121", "t-1", "EURUSD", "buy", 1.0, 1.0851, "2026-11-20T10:15:01.000Z")


def test_close_position_with_the_position_closed_interface() -> None:
    payload = {"id": 5561202, "platformOperationId": "op-2", "platformTradeId": "t-1", "symbol": "EURUSD",
               "openPrice": 1.0851, "closePrice": 1.0871, "takeProfit": 1.09, "stopLoss": 1.08, "profit": 200,
               "lots": 0.4, "type": "BUY", "balance": 10200, "openedAt": "2026-11-20T10:15:01.000Z",
               "closedAt": "2026-11-20T12:00:00.000Z"}
    normalized = tradrapi.normalize("close_position", _member("close_position", payload))
    assert normalized is not None and normalized.problems == ()
    assert (normalized.kind, normalized.position_id, normalized.volume, normalized.price, normalized.sl,
            normalized.tp, normalized.profit, normalized.occurred_at) == (
        "position.closed", "t-1", 0.4, 1.0871, 1.08, 1.09, 200.0, "2026-11-20T12:00:00.000Z")


def test_orders_balance_operations_and_accounts() -> None:
    order = {"id": 77, "platformOperationId": "op-9", "symbol": "XAUUSD", "openPrice": 2400.5, "lots": 1,
             "type": "SELL_STOP_LIMIT", "placedAt": "2026-11-20T09:00:00Z", "cancelledAt": "2026-11-20T09:30:00Z"}
    placed = tradrapi.normalize("open_order", _member("open_order", order))
    cancelled = tradrapi.normalize("cancel_order", _member("cancel_order", order))
    assert placed is not None and cancelled is not None
    assert (placed.kind, placed.order_id, placed.side, placed.price, placed.occurred_at) == (
        "order.placed", "77", "sell", 2400.5, "2026-11-20T09:00:00.000Z")
    assert (cancelled.kind, cancelled.occurred_at) == ("order.cancelled", "2026-11-20T09:30:00.000Z")
    balance = {"id": 5, "platformOperationId": "op-5", "referenceId": "dep-1", "amount": 500, "currency": "USD",
               "operation": "add", "balance": 10500, "createdAt": "2026-11-20T08:00:00Z"}
    operation = tradrapi.normalize("balance_operation", _member("balance_operation", balance))
    assert operation is not None and operation.problems == ()
    assert (operation.kind, operation.account, operation.amount, operation.currency, operation.operation) == (
        "balance.operation", "99121", 500.0, "USD", "add")
    account = {"id": 99122, "platform": "MT5", "type": "FULL", "status": "ACTIVE", "monetization": "REAL",
               "leverage": 100, "currency": "EUR", "email": "a@example.com", "groups": {"userGroupId": 1},
               "createdAt": 1763633701000, "updatedAt": 1763637301000}
    created = tradrapi.normalize("account_created", {"eventType": "account_created", "payload": account})
    updated = tradrapi.normalize("account_updated", _member("account_updated", account, accountId=None))
    assert created is not None and updated is not None
    assert (created.kind, created.account, created.currency, created.occurred_at) == (
        "account.created", "99122", "EUR", "2025-11-20T10:15:01.000Z")  # createdAt: UTC milliseconds
    assert (updated.kind, updated.account, updated.occurred_at) == ("account.updated", "99122",
                                                                    "2025-11-20T11:15:01.000Z")


def test_challenges_have_no_trading_meaning() -> None:
    assert tradrapi.normalize("challenge_created", _member("challenge_created", {"id": 1})) is None
    assert tradrapi.normalize("some_future_type", _member("some_future_type", {"id": 1})) is None
