"""gateway/ledger.py: a position's state and anomalies from its events, whatever their order."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.ledger import Entry, Position, fold, key
from gateway.normalized import Normalized

NEXT_ID = iter(range(1, 10**9))


def opened(volume: float | None = 1.0, at: str | None = "2026-11-20T10:00:00.000Z", **fields: Any) -> Entry:
    return _entry("position.opened", volume, at, **fields)


def closed(volume: float | None = 1.0, at: str | None = "2026-11-20T11:00:00.000Z", **fields: Any) -> Entry:
    return _entry("position.closed", volume, at, **fields)


def _entry(kind: Any, volume: float | None, at: str | None, conflict: bool = False, **fields: Any) -> Entry:
    base: dict[str, Any] = {"source": "mc", "account": "a-1", "position_id": "p-1", "side": "buy",
                            "symbol": "EURUSD", "event_id": next(NEXT_ID)}
    return Entry(Normalized(kind=kind, volume=volume, occurred_at=at, **(base | fields)), conflict=conflict)


def kinds(position: Position) -> list[str]:
    return [a.kind for a in position.anomalies]


def test_open_then_close_in_two_parts() -> None:
    o = opened(1.0, price=1.085)
    first = closed(0.4, at="2026-11-20T11:00:00.000Z", price=1.09, profit=20.0)
    rest = closed(0.6, at="2026-11-20T12:00:00.000Z", price=1.095, profit=60.0)
    assert fold([o]).state == "open"
    partly = fold([o, first])
    assert (partly.state, partly.opened_volume, partly.closed_volume, partly.closed_at) == (
        "partially_closed", 1.0, 0.4, None)
    whole = fold([o, first, rest])
    assert (whole.state, whole.closed_volume, whole.close_prices, whole.profit, whole.closed_at) == (
        "closed", 1.0, (1.09, 1.095), 80.0, "2026-11-20T12:00:00.000Z")
    assert whole.open_price == 1.085 and whole.anomalies == ()
    assert whole.event_ids == tuple(e.record.event_id for e in (o, first, rest))


def test_volumes_add_up_exactly() -> None:
    """0.1 + 0.2 closes a 0.3 position: no float residue left open, nor overclosed."""
    position = fold([opened(0.3), closed(0.1), closed(0.2, at="2026-11-20T11:30:00.000Z")])
    assert position.state == "closed" and position.anomalies == () and position.closed_volume == 0.3


def test_a_close_before_its_open_is_an_anomaly_until_the_open_arrives() -> None:
    close = closed(1.0)
    alone = fold([close])
    assert alone.state == "closed" and kinds(alone) == ["close_without_open"]
    assert alone.anomalies[0].event_ids == (close.record.event_id,)
    o = opened(1.0)
    resolved = fold([close, o])
    assert resolved == fold([o, close]) and resolved.state == "closed" and resolved.anomalies == ()


def test_overclosed_reopened_mismatch_and_conflict() -> None:
    assert kinds(fold([opened(1.0), closed(1.5)])) == ["overclosed"]
    reopened = fold([opened(1.0), closed(1.0), opened(2.0, at="2026-11-21T09:00:00.000Z")])
    assert (reopened.state, kinds(reopened)) == ("open", ["reopened"])
    assert (reopened.opened_volume, reopened.closed_volume) == (2.0, 0.0)
    assert reopened.opened_at == "2026-11-21T09:00:00.000Z"  # the current life's open
    mismatch = fold([opened(1.0), closed(1.0, side="sell", symbol="GBPUSD")])
    assert kinds(mismatch) == ["side_or_symbol_mismatch"]
    assert mismatch.anomalies[0].detail == "opened buy EURUSD; closed sell GBPUSD"
    # a conflict is another version of an occurrence already counted: not closed twice
    repeated = fold([opened(1.0), closed(1.0), closed(1.0, conflict=True)])
    assert (kinds(repeated), repeated.closed_volume, len(repeated.event_ids)) == (["conflict"], 1.0, 3)


def test_a_netting_open_adds_to_the_position() -> None:
    position = fold([opened(1.0), opened(0.5, at="2026-11-20T10:30:00.000Z"), closed(1.5)])
    assert (position.state, position.opened_volume, position.anomalies) == ("closed", 1.5, ())


def test_stale_open_only_past_max_open_days() -> None:
    o = opened(1.0, at="2026-11-01T00:00:00.000Z")
    now = 1_764_460_800.0  # 2025-11-30: earlier than the open, so not stale
    assert kinds(fold([o], now=now, max_open_days=3)) == []
    later = 1_795_996_800.0  # 2026-11-30
    assert kinds(fold([o], now=later, max_open_days=3)) == ["stale_open"]
    assert kinds(fold([o], now=later, max_open_days=30)) == []
    assert kinds(fold([o, closed(1.0)], now=later, max_open_days=3)) == []  # closed: never stale


def test_events_without_volume_or_time_never_break_the_fold() -> None:
    position = fold([opened(None, at=None), closed(None, at=None)])
    assert position.opened_volume is None and position.state == "closed"


def test_key_names_the_position() -> None:
    assert key(opened().record) == ("mc", "a-1", "p-1")
    assert key(Normalized(kind="balance.operation", source="mc")) is None


TIMES = st.sampled_from(["2026-11-20T10:00:00.000Z", "2026-11-20T11:00:00.000Z", "2026-11-20T12:00:00.000Z", None])
VOLUMES = st.sampled_from([0.1, 0.2, 0.3, 0.5, 1.0, None])


@given(st.lists(st.tuples(st.booleans(), VOLUMES, TIMES, st.booleans()), min_size=1, max_size=8), st.randoms())
def test_the_state_depends_on_the_events_not_on_their_order(events: list[Any], rng: Any) -> None:
    entries = [(opened if is_open else closed)(volume, at=at, conflict=conflict)
               for is_open, volume, at, conflict in events]
    shuffled = entries[:]
    rng.shuffle(shuffled)
    assert fold(shuffled) == fold(entries)


def test_found_in_review_overclose_reopen_and_unknown_volume() -> None:
    """An overclose found whatever the arrival order of same-time events; a reopened position
    takes its side, symbol and age from its new open; a close of unknown volume closes the rest
    of its life only, so a later open is a reopen."""
    at = "2026-11-20T10:00:00.000Z"
    first_open = opened(1.0, at=at)
    big_close = closed(2.0, at=at)
    late_open, early_close = opened(1.0, at=at), closed(2.0, at=at)  # the close got the lower id here
    assert kinds(fold([first_open, big_close])) == ["overclosed"]
    assert kinds(fold([early_close, late_open])) == ["overclosed"]
    assert kinds(fold([opened(1.0), closed(2.0, at=None)])) == ["overclosed"]
    sold = fold([opened(1.0), closed(1.0), opened(1.0, at="2026-11-21T00:00:00.000Z", side="sell"),
                 closed(0.5, at="2026-11-21T01:00:00.000Z", side="sell")])
    assert (sold.side, sold.state, kinds(sold)) == ("sell", "partially_closed", ["reopened"])
    stale = fold([opened(1.0, at="2020-01-01T00:00:00.000Z"), closed(1.0, at="2020-01-02T00:00:00.000Z"),
                  opened(1.0, at="2026-11-20T00:00:00.000Z")], now=1_795_132_800.0 + 3600, max_open_days=1)
    assert kinds(stale) == ["reopened"]  # open one hour, not since 2020
    again = fold([opened(1.0), closed(None, at="2026-11-20T11:00:00.000Z"),
                  opened(1.0, at="2026-11-20T12:00:00.000Z")])
    assert (again.state, again.opened_volume, kinds(again)) == ("open", 1.0, ["reopened"])
