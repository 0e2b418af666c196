"""gateway/normalized.py: the lenient readers the mappings share, and `normalize` over stored
events. Odd fields never raise: each is left out and recorded."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import EventRecord
from gateway.normalized import Reader, normalize
from gateway.schemes import SCHEMES, metacopier, pipsync, tradrapi
from tests.schemes import toy_scheme


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-11-20T10:15:01Z", "2026-11-20T10:15:01.000Z"),
    ("2026-11-20T12:15:01+02:00", "2026-11-20T10:15:01.000Z"),
    ("2026-11-20T10:15:01.25", "2026-11-20T10:15:01.250Z"),  # no offset: UTC
    (1763633701, "2025-11-20T10:15:01.000Z"),  # seconds
    (1763633701123, "2025-11-20T10:15:01.123Z"),  # milliseconds
    ("1763633701", "2025-11-20T10:15:01.000Z"),  # digits as text
    (1763633701.5, "2025-11-20T10:15:01.500Z"),
    ("1763633701123", "2025-11-20T10:15:01.123Z"),  # milliseconds as text
    (" 1763633701.25 ", "2025-11-20T10:15:01.250Z"),  # a decimal as text is a number too
    (946684800, "2000-01-01T00:00:00.000Z"),  # the first plausible second
    (4102444799999, "2099-12-31T23:59:59.999Z"),  # the last plausible millisecond
    # ISO text is read as written, never as milliseconds (5200 is past 1e11 seconds)
    ("5200-01-01T00:00:00Z", "5200-01-01T00:00:00.000Z"),
    ("9999-12-31T23:59:59.5+00:00", "9999-12-31T23:59:59.500Z"),
    ("1999-12-31T23:00:00Z", "1999-12-31T23:00:00.000Z"),  # said outright: no unit was guessed
])
def test_times_in_seconds_milliseconds_or_iso(value: Any, expected: str) -> None:
    read = Reader({"t": value})
    assert read.when("t") == expected and read.problems == []


@pytest.mark.parametrize(("value", "problem"), [
    ("yesterday", "t: 'yesterday' is not a time"),
    (-5, "t: '-5' is not a time"),
    (True, "t: 'True' is not a time"),
    ({"a": 1}, "t: \"{'a': 1}\" is not a time"),
    (10**30, "t: '1000000000000000000000000000000' is out of range"),
    # A number read as a time outside 2000-2100 is a misread unit or format: no sender writes
    # dates as digits (docs/senders.md), so "20261120" is seconds, and August 1970.
    ("20261120", "t: '20261120' is not a plausible time: read as 1970-08-23T12:05:20.000Z, outside 2000-2100"),
    (5, "t: '5' is not a plausible time: read as 1970-01-01T00:00:05.000Z, outside 2000-2100"),
    (946684799, "t: '946684799' is not a plausible time: read as 1999-12-31T23:59:59.000Z, outside 2000-2100"),
    (4102444800, "t: '4102444800' is not a plausible time: read as 2100-01-01T00:00:00.000Z, outside 2000-2100"),
    (99999999999, "t: '99999999999' is not a plausible time: read as 5138-11-16T09:46:39.000Z, outside 2000-2100"),
    ("9999-12-31T23:59:59-01:00", "t: '9999-12-31T23:59:59-01:00' is out of range"),
    ("1.5.1", "t: '1.5.1' is not a time"),
])
def test_bad_times_are_recorded(value: Any, problem: str) -> None:
    read = Reader({"t": value})
    assert read.when("t") is None and read.problems == [problem]


@pytest.mark.parametrize(("value", "expected", "problems"), [
    (0.5, 0.5, []),
    ("0.5", 0.5, []),
    (2, 2.0, []),
    (-1, None, ["v: negative (-1)"]),
    (0, None, ["v: zero (0)"]),
    ("lots", None, ["v: 'lots' is not a number"]),
    (float("nan"), None, ["v: 'nan' is not a finite number"]),
    (True, None, ["v: 'True' is not a finite number"]),
    ([1], None, ["v: '[1]' is not a finite number"]),
])
def test_volumes(value: Any, expected: float | None, problems: list[str]) -> None:
    read = Reader({"v": value})
    assert read.number("v", positive=True) == expected and read.problems == problems


@pytest.mark.parametrize(("value", "expected"), [
    ("buy", "buy"), ("Buy", "buy"), ("SELL", "sell"), ("BuyLimit", "buy"), ("SELL_STOP_LIMIT", "sell"),
    ("sell stop", "sell"), ("Balance", None), ("buyer", None), (7, None),
])
def test_sides_from_sides_and_order_types(value: Any, expected: str | None) -> None:
    read = Reader({"s": value})
    assert read.side("s") == expected
    assert read.problems == ([] if expected else [f"s: unknown side or order type {str(value)!r}"])


MAPPINGS = [(metacopier.normalize, ["position.opened", "position.closed", "history.updated"]),
            (pipsync.normalize, ["trade.opened", "trade.closed", "trade.tp_hit", "trade.sl_hit", "signal.received"]),
            (tradrapi.normalize, [*tradrapi.KINDS, "challenge_updated"])]
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
FIELDS = ["position", "data", "payload", "volume", "lots", "id", "type", "side", "openTime", "created"]


@given(st.sampled_from(MAPPINGS), st.data(), st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6),
       st.dictionaries(st.sampled_from([*FIELDS, "position_id", "openPrice", "platformTradeId"]), JSON, max_size=6))
def test_no_shape_breaks_a_mapping(mapping: Any, data: st.DataObject, root: dict[str, Any],
                                   inner: dict[str, Any]) -> None:
    """Any JSON at any of the fields the mappings read: a record (with problems) or None, never
    an exception."""
    event_type = data.draw(st.sampled_from(mapping[1]))
    for event in (root, root | {"position": inner, "data": inner, "payload": inner}, [root], "text"):
        found = mapping[0](event_type, event)
        assert found is None or isinstance(found.problems, tuple)


def _record(scheme: str, event_type: str, payload: Any, status: str = "stored") -> EventRecord:
    return EventRecord(id=41, source="mc-live", scheme=scheme, event_type=event_type, entity_id="position:1",
                       dedup_key="k", status=status, conflicts_with=None, account=None, symbol=None,
                       received_at=0.0, payload=payload)


def test_normalize_names_the_source_and_our_event_id() -> None:
    found = normalize(_record("metacopier", "position.opened",
                              {"type": "position.opened", "position": {"id": "1", "orderType": "Buy", "volume": 1}}))
    assert found is not None and (found.source, found.event_id, found.position_id) == ("mc-live", 41, "1")


def test_quarantined_events_and_unknown_schemes_have_no_normalized_form() -> None:
    opened = {"type": "position.opened", "position": {"id": "1"}}
    assert normalize(_record("metacopier", "position.opened", opened, status="quarantined")) is None
    assert normalize(_record("metacopier", "position.opened", None)) is None
    assert normalize(_record("no-such-scheme", "position.opened", opened)) is None


@pytest.mark.parametrize("value", [10**400, -(10**400), float("inf"), "9" * 400])
def test_numbers_beyond_a_float_are_recorded_not_raised(value: Any) -> None:
    read = Reader({"v": value, "t": value})
    assert read.number("v") is None and read.when("t") is None and len(read.problems) == 2


def _raises(event_type: str, event: Any) -> None:
    raise KeyError("a broken mapping")


BROKEN = dataclasses.replace(toy_scheme.scheme, name="broken-map", normalize=_raises)


def test_a_mapping_that_raises_gives_no_normalized_form_and_is_logged(caplog: pytest.LogCaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheme registered from outside may break the never-raise promise: the event then has
    no normalized form; nothing else breaks."""
    monkeypatch.setitem(SCHEMES, "broken-map", "tests.test_normalized:BROKEN")  # registered for this test only
    assert normalize(_record("broken-map", "position.opened", {"position": {"id": "1"}})) is None
    assert "scheme broken-map: normalize('position.opened') raised" in caplog.text
