"""Issue 12 at the verifier: what names one occurrence, what orders delivery, what is compared.

Each event carries an `identity` (stable across the sender's retries, different between two
occurrences), an `entity_id` (the position, account or order that orders delivery) and a
`fingerprint` (its canonical JSON less `dedup_ignore_fields`): a repeat with the same identity
and another fingerprint is a conflict, kept. The store and HTTP side is in tests/test_dedup.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._secret import Secret
from gateway.config import SourceConfig
from gateway.model import ParsedEvent, decode_key, dedup_key
from gateway.schemes import get_scheme
from tests.conftest import MC_SECRET, PS_SECRET, TR_KEY

NOW = 1763633702.331
MC = SourceConfig(name="mc", scheme="metacopier", secrets=(Secret(MC_SECRET),))
MC_STRICT = SourceConfig(name="mc-strict", scheme="metacopier", secrets=(Secret(MC_SECRET),),
                         dedup_ignore_fields=())
PS = SourceConfig(name="ps", scheme="pipsync", secrets=(Secret(PS_SECRET),))
TR = SourceConfig(name="tr", scheme="tradrapi", secrets=(Secret(TR_KEY),))
WIDE = 2**64  # orjson reads it as a float: 2**64 and 2**64 + 1 read as one number


def parse(source: SourceConfig, body: bytes | Any) -> tuple[ParsedEvent, ...]:
    """The events an authentic request yields (signed as the sender would, verified as received)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    scheme = get_scheme(source.scheme)
    headers = {k.lower(): v for k, v in scheme.sign(raw, source, NOW).items()}
    return scheme.verify(raw, headers, NOW, source).events


def one(source: SourceConfig, body: bytes | Any) -> ParsedEvent:
    (event,) = parse(source, body)
    return event


def key(source: SourceConfig, event: ParsedEvent) -> str:
    return dedup_key(source.name, event.event_type, event.identity)


def mc_event(event_type: str = "position.closed", position_id: Any = "555", **position: Any) -> dict[str, Any]:
    return {"type": event_type, "timestamp": "2026-11-20T10:15:02.331Z", "accountId": "acc-1",
            "position": {"id": position_id, "symbol": "EURUSD", "volume": 0.5,
                         "openTime": "2026-11-20T10:00:00Z", **position}}


def tr_member(event_type: str, account: Any = 99121, **payload: Any) -> dict[str, Any]:
    return {"brandId": 12, "serverId": 3, "accountId": account, "eventType": event_type, "platform": "MT5",
            "payload": payload}


def tr_batch(*members: Any) -> dict[str, Any]:
    return {"payload": list(members), "count": len(members), "attempts": 1}


# --- MetaCopier: the position id and the event's own time ------------------------------------

def test_metacopier_partial_closes_are_two_occurrences_of_one_position() -> None:
    first = one(MC, mc_event(volume=0.2, closeTime="2026-11-20T11:00:00Z"))
    second = one(MC, mc_event(volume=0.3, closeTime="2026-11-20T12:00:00Z"))
    assert first.identity == ("555", "2026-11-20T11:00:00Z")
    assert second.identity == ("555", "2026-11-20T12:00:00Z")
    assert key(MC, first) != key(MC, second)
    assert first.entity_id == second.entity_id == "position:555"


def test_metacopier_changed_volume_is_one_identity_with_other_content() -> None:
    """Same position, same openTime, another volume: a conflict for the store, never a duplicate."""
    small = one(MC, mc_event("position.opened", volume=0.5))
    large = one(MC, mc_event("position.opened", volume=5.0))
    assert small.identity == large.identity == ("555", "2026-11-20T10:00:00Z")
    assert small.fingerprint != large.fingerprint


def test_metacopier_root_timestamp_is_ignored_by_default_only() -> None:
    a = mc_event("position.opened")
    b = {**a, "timestamp": "2026-11-20T10:20:00.000Z"}  # stamped again on a later delivery
    assert one(MC, a).fingerprint == one(MC, b).fingerprint
    assert one(MC, a).identity == one(MC, b).identity
    # A source that says nothing changes on a retry: the timestamp is content.
    assert one(MC_STRICT, a).fingerprint != one(MC_STRICT, b).fingerprint
    assert one(MC_STRICT, a).identity == one(MC_STRICT, b).identity


def test_metacopier_ignored_fields_may_be_nested_paths() -> None:
    source = SourceConfig(name="mc", scheme="metacopier", secrets=(Secret(MC_SECRET),),
                          dedup_ignore_fields=("position.magicNumber", "nope.x", "accountId.deeper"))
    a = mc_event("position.opened", magicNumber="1")
    b = mc_event("position.opened", magicNumber="2")
    assert one(source, a).fingerprint == one(source, b).fingerprint
    assert one(source, a).fingerprint != one(source, {**a, "timestamp": "x"}).fingerprint
    assert one(MC, a).fingerprint != one(MC, b).fingerprint


def test_metacopier_time_at_the_root_and_missing_time() -> None:
    at_root = one(MC, {"type": "position.closed", "ticket": 9, "closeTime": "T2"})
    assert at_root.identity == ("9", "T2")
    assert at_root.entity_id == "position:9"
    # No time of its own: the position id alone, as before (a second close would be a conflict).
    assert one(MC, mc_event()).identity == ("555",)
    assert one(MC, mc_event("history.updated")).identity == ("555",)  # no time rule for that type


# --- PipSync: the event's own id -------------------------------------------------------------

PS_EVENT = {"id": "evt_1", "type": "trade.closed", "created": 1763633702,
            "data": {"trade_id": "tr_1", "position_id": "771203", "account_id": "acc_12", "lots": 0.5}}


def test_pipsync_retry_with_the_same_id_is_the_same_occurrence() -> None:
    body = orjson.dumps(PS_EVENT)
    first, retry = one(PS, body), one(PS, body)
    assert (first.identity, first.fingerprint) == (retry.identity, retry.fingerprint)
    assert first.identity == ("evt_1",)
    assert first.entity_id == "position:771203"


def test_pipsync_canonically_identical_bodies_have_one_fingerprint() -> None:
    plain = orjson.dumps(PS_EVENT)
    spaced = orjson.dumps(PS_EVENT, option=orjson.OPT_INDENT_2)
    reordered = (b'{ "data" : {"lots":0.5,"account_id":"acc_\\u0031\\u0032","position_id":"771203",'
                 b'"trade_id":"tr_1"}, "type":"trade.closed","created":1763633702,"id":"evt_1"}')
    events = [one(PS, body) for body in (plain, spaced, reordered)]
    assert len({e.fingerprint for e in events}) == 1
    assert len({e.identity for e in events}) == 1
    changed = one(PS, {**PS_EVENT, "data": {**PS_EVENT["data"], "lots": 5.0}})
    assert changed.identity == events[0].identity
    assert changed.fingerprint != events[0].fingerprint


def test_pipsync_two_events_of_one_position_are_two_occurrences() -> None:
    opened = one(PS, {**PS_EVENT, "id": "evt_1", "type": "trade.tp_hit"})
    again = one(PS, {**PS_EVENT, "id": "evt_2", "type": "trade.tp_hit"})
    assert key(PS, opened) != key(PS, again)
    assert opened.entity_id == again.entity_id == "position:771203"


# --- TradrAPI: payload.id plus what tells occurrences apart; entity per position/account/order ---

def test_tradrapi_id_holding_at_sign_never_meets_id_plus_update_time() -> None:
    joined, parts = parse(TR, tr_batch(tr_member("account_updated", id="X@5"),
                                       tr_member("account_updated", id="X", updatedAt=5)))
    assert joined.identity == ("X@5",)
    assert parts.identity == ("X", "5")
    assert key(TR, joined) != key(TR, parts)
    assert decode_key(key(TR, joined))[2] == ("X@5",)


@pytest.mark.parametrize("account_field", ["accountId", "exchangeAccountId"])
def test_tradrapi_account_events_share_the_account(account_field: str) -> None:
    def of_account(event_type: str, **payload: Any) -> dict[str, Any]:
        m = tr_member(event_type, account=None, **payload)
        return {**m, account_field: "A"}

    events = parse(TR, tr_batch(of_account("account_created", id="A", createdAt=1),
                                of_account("account_updated", id="A", updatedAt=2),
                                of_account("balance_operation", id=9, platformOperationId="op-9", amount=5),
                                of_account("challenge_updated", id="c1", updatedAt=3)))
    assert {e.entity_id for e in events} == {"account:A"}
    assert len({key(TR, e) for e in events}) == 4


def test_tradrapi_account_event_without_root_account_is_ordered_by_its_id() -> None:
    created, updated = parse(TR, tr_batch(tr_member("account_created", account=None, id=77, createdAt=1),
                                          tr_member("account_updated", account=None, id=77, updatedAt=2)))
    assert created.entity_id == updated.entity_id == "account:77"


def test_tradrapi_open_and_close_of_one_trade_share_the_position() -> None:
    """payload.id may differ between a position's open and its close; platformTradeId does not."""
    opened, closed = parse(TR, tr_batch(
        tr_member("open_position", id=1, platformTradeId="t-1", platformOperationId="op-1", openedAt=10),
        tr_member("close_position", id=2, platformTradeId="t-1", platformOperationId="op-2", closedAt=20)))
    assert opened.entity_id == closed.entity_id == "position:t-1"
    assert (opened.identity, closed.identity) == (("1", "op-1"), ("2", "op-2"))
    # Without platformTradeId the position is payload.id.
    bare = one(TR, tr_batch(tr_member("close_position", id=1, closedAt=20)))
    assert (bare.identity, bare.entity_id) == (("1", "20"), "position:1")


def test_tradrapi_order_events_share_the_order() -> None:
    placed, cancelled = parse(TR, tr_batch(tr_member("open_order", id="o-1", placedAt=1),
                                           tr_member("cancel_order", id="o-1", cancelledAt=2)))
    assert placed.entity_id == cancelled.entity_id == "order:o-1"
    assert (placed.identity, cancelled.identity) == (("o-1", "1"), ("o-1", "2"))


@pytest.mark.parametrize(
    ("event_type", "payload", "identity"),
    [
        ("open_position", {"id": 1, "platformOperationId": "op", "openedAt": 5}, ("1", "op")),
        ("open_position", {"id": 1, "openedAt": 5}, ("1", "5")),
        ("close_position", {"id": 1, "closedAt": "2026-11-20T10:15:01.000Z", "openedAt": 5},
         ("1", "2026-11-20T10:15:01.000Z")),
        ("cancel_order", {"id": 1, "cancelledAt": 7, "placedAt": 5}, ("1", "7")),
        ("balance_operation", {"id": 1, "createdAt": 8}, ("1", "8")),
        ("account_created", {"id": 1, "createdAt": 8, "updatedAt": 9}, ("1", "8")),
        ("challenge_created", {"id": 1, "createdAt": 8}, ("1", "8")),
        ("challenge_updated", {"id": 1, "updatedAt": 9, "createdAt": 8}, ("1", "9")),
        ("some_new_event", {"id": 1, "createdAt": 8, "platformOperationId": "op"}, ("1", "op")),
        ("some_new_event", {"id": 1, "createdAt": 8}, ("1", "8")),
    ],
)
def test_tradrapi_occurrence_part_by_event_type(event_type: str, payload: dict[str, Any],
                                                identity: tuple[str, ...]) -> None:
    assert one(TR, tr_batch(tr_member(event_type, **payload))).identity == identity


def test_tradrapi_identical_members_in_one_batch_are_one_occurrence() -> None:
    m = tr_member("account_updated", id=77, updatedAt=5, balance=100)
    a, b = parse(TR, tr_batch(m, dict(reversed(list(m.items())))))
    assert (a.identity, a.fingerprint) == (b.identity, b.fingerprint)


def test_tradrapi_conflicting_members_in_one_batch_share_the_identity_only() -> None:
    a, b = parse(TR, tr_batch(tr_member("account_updated", id=77, updatedAt=5, balance=100),
                              tr_member("account_updated", id=77, updatedAt=5, balance=200)))
    assert a.identity == b.identity == ("77", "5")
    assert a.fingerprint != b.fingerprint


def test_tradrapi_batch_envelope_is_not_content() -> None:
    m = tr_member("account_updated", id=77, updatedAt=5)
    first = one(TR, tr_batch(m))
    retry = one(TR, {"payload": [m], "count": 1, "attempts": 7})
    assert (first.identity, first.fingerprint) == (retry.identity, retry.fingerprint)


# --- any id, any time: never a crash, never a merge ------------------------------------------

ID_VALUES = [b'"p-1"', b'"X@5"', b'"a:b%00#c"', b'"\\u0000"', b"42", b"-7", b"5.0", b"5.5", b"1e3",
             b"18446744073709551615", b"18446744073709551616", b"-9223372036854775809", b"null", b"true",
             b"false", b'{"n":1}', b"[1]", b'""', b'"  "']
TIME_VALUES = [None, b'"2026-11-20T10:15:01Z"', b'"2026-11-20T10:15:01.000+00:00"', b'"Fri, 20 Nov 2026"',
               b"1763633701000", b"1763633701.5", b"1.7636337015e12", b"18446744073709551617", b"null", b"true",
               b'{"ms":1}', b'""', b'"5@x"']


def _bodies(position_id: bytes, when: bytes | None) -> list[tuple[SourceConfig, bytes]]:
    mc_time = b',"closeTime":' + when if when is not None else b""
    tr_time = b',"updatedAt":' + when if when is not None else b""
    return [
        (MC, b'{"type":"position.closed","position":{"id":' + position_id + mc_time + b"}}"),
        (PS, b'{"type":"trade.closed","id":' + position_id + b',"data":{"position_id":' + position_id
         + (b',"closed_at":' + when if when is not None else b"") + b"}}"),
        (TR, b'{"payload":[{"eventType":"account_updated","accountId":' + position_id + b',"payload":{"id":'
         + position_id + tr_time + b"}}]}"),
    ]


@pytest.mark.parametrize("when", TIME_VALUES, ids=lambda v: repr(v))
@pytest.mark.parametrize("position_id", ID_VALUES, ids=lambda v: repr(v))
def test_any_id_and_time_is_named_without_crashing(position_id: bytes, when: bytes | None) -> None:
    for source, body in _bodies(position_id, when):
        for event in parse(source, body):
            assert event.identity
            assert len(event.fingerprint) == 32
            assert event.entity_id
            k = key(source, event)
            assert decode_key(k) == (source.name, event.event_type, event.identity)
            if isinstance(event.identity, tuple):
                assert all(part.strip() for part in event.identity)  # no blank part names anything


@pytest.mark.parametrize("source", [MC, PS, TR], ids=lambda s: s.scheme)
@pytest.mark.parametrize("position_id", [b'"p-1"', b"42"])
def test_two_times_of_one_id_never_merge(source: SourceConfig, position_id: bytes) -> None:
    """Whatever form the times take, two different times give two keys, or (unreadable time:
    the id alone) one identity with two fingerprints, which the store keeps as a conflict."""
    usable = [w for w in TIME_VALUES if w is not None]
    seen: dict[tuple[str, bytes], bytes] = {}
    for when in usable:
        (body,) = [b for s, b in _bodies(position_id, when) if s is source]
        event = one(source, body)
        found = seen.setdefault((key(source, event), event.fingerprint), when)
        assert found == when, f"{found!r} and {when!r} were merged"


def test_wide_integer_content_is_compared_as_sent() -> None:
    """Two bodies differing only in an integer beyond 64 bits (read as one float) differ."""
    for source, template in [(MC, b'{"type":"position.opened","position":{"id":"1","magic":%d}}'),
                             (PS, b'{"type":"trade.opened","id":"evt_1","data":{"magic":%d}}'),
                             (TR, b'{"payload":[{"eventType":"open_position","payload":{"id":1,"magic":%d}}]}')]:
        a, b = (template % n for n in (WIDE, WIDE + 1))
        ea, eb = one(source, a), one(source, b)
        assert ea.fingerprint == hashlib.sha256(a).digest()
        assert eb.fingerprint == hashlib.sha256(b).digest()
        assert ea.fingerprint != eb.fingerprint
        if source is not TR:  # a TradrAPI batch holding one is quarantined whole, named by its bytes
            assert ea.identity == eb.identity


@pytest.mark.parametrize("source", [MC, PS], ids=lambda s: s.scheme)
def test_wide_integer_id_is_no_id(source: SourceConfig) -> None:
    a, b = (b'{"type":"trade.opened","id":%d,"ticket":%d}' % (n, n) for n in (WIDE, WIDE + 1))
    ea, eb = one(source, a), one(source, b)
    assert ea.identity == hashlib.sha256(a).digest()
    assert key(source, ea) != key(source, eb)


# --- properties: same bytes, same key; different id or time, different key -----------------------

id_values = st.sampled_from(["5", "X@5", "X", "5@x", "a:b", "%40", "#sha256-00", "\x00", " 7 "]) | st.integers(-3, 3)
time_values = st.none() | st.sampled_from(["2026-11-20T10:15:01Z", "5", "x@y", "", "  "]) | st.integers(4, 6)
contents = st.fixed_dictionaries({"volume": st.sampled_from([0.5, 5.0]), "note": st.sampled_from(["a", "b"])})


def _text(value: Any) -> str | None:
    """What an id or time reads as: a non-blank string as is, an integer in digits, else nothing."""
    if isinstance(value, int):
        return str(value)
    return value if isinstance(value, str) and value.strip() else None


def _expected(event_type: str, position_id: Any, when: Any) -> tuple[str, tuple[str, ...]]:
    text = _text(position_id)
    assert text is not None
    moment = _text(when)
    return event_type, (text,) if moment is None else (text, moment)


def _mc(event_type: str, position_id: Any, when: Any, content: dict[str, Any], stamp: str) -> dict[str, Any]:
    field = "openTime" if event_type == "position.opened" else "closeTime"
    position = {"id": position_id, **content, **({} if when is None else {field: when})}
    return {"type": event_type, "timestamp": stamp, "position": position}


mc_events = st.builds(lambda *a: a, st.sampled_from(["position.opened", "position.closed"]), id_values,
                      time_values, contents, st.sampled_from(["t1", "t2"]))
dumps_options = st.sampled_from([0, orjson.OPT_INDENT_2, orjson.OPT_SORT_KEYS])


@settings(max_examples=300, deadline=None)
@given(a=mc_events, b=mc_events, option=dumps_options)
def test_property_metacopier_keys_follow_position_and_time(a: tuple[Any, ...], b: tuple[Any, ...],
                                                          option: int) -> None:
    ea, eb = (one(MC, orjson.dumps(_mc(*x), option=option)) for x in (a, b))
    again = one(MC, orjson.dumps(_mc(*a)))  # the same event, written another way
    assert (key(MC, again), again.fingerprint) == (key(MC, ea), ea.fingerprint)
    assert (ea.event_type, ea.identity) == _expected(*a[:3])
    assert (key(MC, ea) == key(MC, eb)) == (_expected(*a[:3]) == _expected(*b[:3]))
    # Content decides the fingerprint; the root timestamp (a[4]) does not.
    assert (ea.fingerprint == eb.fingerprint) == (_mc(*a[:4], "") == _mc(*b[:4], ""))
    assert ea.entity_id == f"position:{_text(a[1])}"


ps_events = st.builds(lambda *a: a, st.sampled_from(["trade.opened", "trade.closed"]), id_values, contents)


@settings(max_examples=300, deadline=None)
@given(a=ps_events, b=ps_events, option=dumps_options)
def test_property_pipsync_keys_follow_the_event_id(a: tuple[Any, ...], b: tuple[Any, ...], option: int) -> None:
    def body(event_type: str, event_id: Any, content: dict[str, Any]) -> dict[str, Any]:
        return {"id": event_id, "type": event_type, "data": {"position_id": "p", **content}}

    ea, eb = (one(PS, orjson.dumps(body(*x), option=option)) for x in (a, b))
    assert one(PS, orjson.dumps(body(*a))).fingerprint == ea.fingerprint
    assert (key(PS, ea) == key(PS, eb)) == (_expected(a[0], a[1], None) == _expected(b[0], b[1], None))
    assert (ea.fingerprint == eb.fingerprint) == (body(*a) == body(*b))


tr_events = st.builds(lambda *a: a, st.sampled_from(["account_updated", "close_position", "cancel_order"]),
                      id_values, time_values, contents)
TR_TIME = {"account_updated": "updatedAt", "close_position": "closedAt", "cancel_order": "cancelledAt"}


@settings(max_examples=300, deadline=None)
@given(a=tr_events, b=tr_events, option=dumps_options)
def test_property_tradrapi_keys_follow_id_and_time_within_one_batch(a: tuple[Any, ...], b: tuple[Any, ...],
                                                                   option: int) -> None:
    def m(event_type: str, event_id: Any, when: Any, content: dict[str, Any]) -> dict[str, Any]:
        payload = {"id": event_id, **content, **({} if when is None else {TR_TIME[event_type]: when})}
        return tr_member(event_type, **payload)

    ea, eb = parse(TR, orjson.dumps(tr_batch(m(*a), m(*b)), option=option))
    (alone,) = parse(TR, tr_batch(m(*a)))  # the same member in another batch
    assert (key(TR, alone), alone.fingerprint) == (key(TR, ea), ea.fingerprint)
    assert (ea.event_type, ea.identity) == _expected(*a[:3])
    assert (key(TR, ea) == key(TR, eb)) == (_expected(*a[:3]) == _expected(*b[:3]))
    assert (ea.fingerprint == eb.fingerprint) == (m(*a) == m(*b))
