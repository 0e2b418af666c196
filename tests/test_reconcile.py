"""gateway/reconcile.py: a platform's snapshot of open positions read strictly, and compared with
the ledger."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.ledger import Position
from gateway.reconcile import SnapshotError, compare, read_snapshot
from tests.hostile import deep, obj, values

HEADER = "account,position_id,symbol,side,volume\n"
CSV = """account,position_id,symbol,side,volume
a-1,p-1,EURUSD,buy,1.0
a-1,p-2,XAUUSD,SELL,0.5
a-2,p-9,GBPUSD,buy,2
"""


def position(position_id: str, state: Any = "open", account: str = "a-1", **fields: Any) -> Position:
    base: dict[str, Any] = {"source": "mc", "account": account, "position_id": position_id, "state": state,
                            "side": "buy", "symbol": "EURUSD", "opened_volume": 1.0,
                            "last_event_at": "2026-11-20T10:00:00.000Z"}
    return Position(**(base | fields))


def test_csv_and_json_lines_read_the_same() -> None:
    lines = "\n".join([
        '{"account": "a-1", "position_id": "p-1", "symbol": "EURUSD", "side": "buy", "volume": 1.0}',
        '{"account": "a-1", "position_id": "p-2", "symbol": "XAUUSD", "side": "SELL", "volume": "0.5"}',
        "",
        '{"account": "a-2", "position_id": "p-9", "symbol": "GBPUSD", "side": "buy", "volume": 2, "extra": 1}',
    ])
    from_csv, from_json = read_snapshot(CSV), read_snapshot(lines)
    assert [(o.account, o.position_id, o.side, o.volume) for o in from_csv] == [
        ("a-1", "p-1", "buy", 1.0), ("a-1", "p-2", "sell", 0.5), ("a-2", "p-9", "buy", 2.0)]
    assert [(o.position_id, o.volume) for o in from_json] == [(o.position_id, o.volume) for o in from_csv]
    assert [o.line for o in from_json] == [1, 2, 4]
    assert read_snapshot("") == [] and read_snapshot("account,position_id,symbol,side,volume\n") == []
    excel = "\ufeff" + CSV.replace("\n", "\r\n").replace("a-2,p-9,GBPUSD", '"a-2","p-9","GBPUSD"')
    assert read_snapshot(excel) == from_csv  # a byte order mark, CRLF and quoted cells, as spreadsheets write


def test_json_lines_end_at_newline_only_and_csv_lines_at_any_line_break() -> None:
    row = '{"account": "a-1", "position_id": "p-%d", "symbol": "EUR%sUSD", "side": "buy", "volume": 1}'
    # Line breaks to str.splitlines(), text a JSON string may hold unescaped (\x1c or \x0b may not)
    odd = ["\u2028", "\u2029", "\x85"]
    found = read_snapshot("\r\n".join(row % (i, c) for i, c in enumerate(odd)) + "\r\n")
    assert [(o.position_id, o.symbol, o.line) for o in found] == [
        (f"p-{i}", f"EUR{c}USD", i + 1) for i, c in enumerate(odd)]
    old_mac = CSV.replace("\n", "\r")  # lone carriage returns, as classic Mac OS wrote
    assert read_snapshot(old_mac) == read_snapshot(CSV)
    quoted = HEADER + '"a-1","p-1","EUR\r\nUSD",buy,1\na-1,p-2,X,buy,2\n'  # a line break kept inside quotes
    assert [(o.symbol, o.line) for o in read_snapshot(quoted)] == [("EUR\r\nUSD", 3), ("X", 4)]


def test_a_header_may_repeat_a_column_it_does_not_read() -> None:
    spreadsheet = HEADER.replace("\n", ",note,,note,\n") + "a-1,p-1,EURUSD,buy,1,x,,y,\n"
    assert [(o.position_id, o.volume) for o in read_snapshot(spreadsheet)] == [("p-1", 1.0)]


@pytest.mark.parametrize(("text", "message"), [
    ("account,position_id,symbol,volume\na,p,EURUSD,1\n", "line 1: the header lacks side"),
    (CSV + "a-3,p-3,EURUSD,buy,lots\n", "line 5: volume is not a number: 'lots'"),
    (CSV + "a-3,p-3,EURUSD,buy,-1\n", "line 5: volume must be a number above zero, got '-1'"),
    (CSV + "a-3,p-3,EURUSD,buy,nan\n", "line 5: volume must be a number above zero, got 'nan'"),
    (CSV + "a-3,p-3,EURUSD,hold,1\n", "line 5: side must be buy or sell, got 'hold'"),
    (CSV + "a-3,p-3,EURUSD,buy\n", "line 5: 4 fields where the header has 5"),
    (CSV + "a-1,p-2,XAUUSD,sell,0.5\n", "line 5: position p-2 of account a-1 is listed twice (first on line 3)"),
    (CSV + ",p-4,EURUSD,buy,1\n", "line 5: account is empty or not text: ''"),
    ('{"account": "a"}\n', "line 1: lacks position_id, symbol, side, volume"),
    ('{"account": "a", "position_id": "p", "symbol": "X", "side": "buy", "volume": 1}\n{oops\n', "line 2: not JSON"),
    ('{"account": "a", "position_id": "p", "symbol": "X", "side": "buy", "volume": true}\n',
     "line 1: volume must be a number above zero, got 'True'"),
    (CSV + "a" * 131073 + ",p-3,EURUSD,buy,1\n", "line 5: not CSV: field larger than field limit (131072)"),
    (CSV + '"a\n' + "a" * 131073 + '",p-3,EURUSD,buy,1\n', "line 5: not CSV: field larger"),  # where the row begins
    ("account,position_id,symbol,side,volume,volume\na-1,p-1,EURUSD,buy,1,2\n",
     "line 1: the header names volume more than once"),
    ('{"account": ' + "[" * 1023 + "]" * 1023 + ', "position_id": "p", "symbol": "X", "side": "buy", "volume": 1}',
     "line 1: account is empty or not text: a JSON array"),
    ('{"account": "a", "position_id": "p", "symbol": "X", "side": "buy", "volume": {"lots": 1}}',
     "line 1: volume is not a number: a JSON object"),
    ('{"account": "a", "position_id": "p", "symbol": "X", "side": "buy", "volume": 1}\n{"account": "\x1c"}',
     "line 2: not JSON: unexpected control character in string"),
])
def test_bad_files_name_the_line(text: str, message: str) -> None:
    with pytest.raises(SnapshotError) as info:
        read_snapshot(text)
    assert str(info.value).startswith(message), str(info.value)


def test_missed_opens_missed_closes_and_volume_or_side_differences() -> None:
    ledger = [
        position("p-1"),  # agrees
        position("p-2", "partially_closed", side="sell", symbol="XAUUSD", opened_volume=1.0,
                 closed_volume=0.4),  # 0.6 still open, 0.5 on the platform
        position("p-7"),  # open in the ledger only: a missed close
        position("p-8", state="closed"),  # closed in both
        position("p-9", account="a-2", side="sell", symbol="GBPUSD", opened_volume=2.0),  # other side
    ]
    found = compare(read_snapshot(CSV + "a-3,p-5,EURUSD,buy,1\n"), ledger)
    assert [(d.kind, d.account, d.position_id, d.line) for d in found] == [
        ("volume_differs", "a-1", "p-2", 3),
        ("side_differs", "a-2", "p-9", 4),
        ("missing_in_ledger", "a-3", "p-5", 5),
        ("missing_on_platform", "a-1", "p-7", None),
    ]
    assert (found[0].platform, found[0].ledger) == ("sell 0.5 XAUUSD", "sell 0.6 XAUUSD (partially_closed)")
    assert compare(read_snapshot(CSV), [position("p-1"), position("p-2", side="sell", opened_volume=0.5),
                                        position("p-9", account="a-2", opened_volume=2.0)]) == []


def test_a_position_closed_in_the_ledger_but_open_on_the_platform_is_a_difference() -> None:
    found = compare(read_snapshot("account,position_id,symbol,side,volume\na-1,p-1,EURUSD,buy,1\n"),
                    [position("p-1", state="closed", closed_volume=1.0)])
    assert [(d.kind, d.ledger) for d in found] == [("missing_in_ledger", "buy 0 EURUSD (closed)")]


def test_as_of_leaves_out_what_the_ledger_learnt_after_the_snapshot() -> None:
    snapshot = read_snapshot("account,position_id,symbol,side,volume\na-1,p-1,EURUSD,buy,1\n")
    closed_later = [position("p-1", state="closed", closed_volume=1.0, last_event_at="2026-11-20T12:00:00.000Z"),
                    position("p-2", last_event_at="2026-11-20T12:00:00.000Z")]  # opened after the snapshot
    taken = 1_795_172_400.0  # 2026-11-20T11:00:00Z
    assert compare(snapshot, closed_later, as_of=taken) == []
    known_before = [position("p-3", last_event_at="2026-11-20T09:00:00.000Z")]
    assert [d.kind for d in compare(snapshot, known_before, as_of=taken)] == ["missing_in_ledger",
                                                                            "missing_on_platform"]
    assert [d.kind for d in compare(snapshot, closed_later)] == ["missing_in_ledger", "missing_on_platform"]

# A CSV cell, a JSON member's value, a line separator: each as an exporter might write it, or worse.
cells = st.text(max_size=8) | st.sampled_from(['"', '""', '"a,b"', '"a\nb"', "\r", "\x00", "1e400", "-0", "a" * 131073])
csv_texts = st.lists(st.lists(cells, min_size=4, max_size=6).map(",".join), max_size=4).map(
    lambda rows: HEADER + "\n".join(rows))
GOOD = {"account": b'"a-1"', "position_id": b'"p-1"', "symbol": b'"EURUSD"', "side": b'"buy"', "volume": b"1"}
json_rows = st.fixed_dictionaries({key: st.just(good) | values for key, good in GOOD.items()}).map(
    lambda row: obj(list(row.items()))) | st.lists(st.tuples(st.text(max_size=8), values), max_size=4).map(obj)
json_texts = st.lists(json_rows, max_size=3).map(
    lambda rows: "\n".join(r.decode("utf-8", "surrogateescape") for r in rows))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@example(HEADER + "a" * 131073 + ",p-1,EURUSD,buy,1\n")  # over csv's field size limit: csv.Error
@example(HEADER + "a-1,p\r1,EURUSD,buy,1\n")  # a lone \r in a cell, read without newline="": csv.Error
@example(obj(list((GOOD | {"account": deep(1023, "[")}).items())).decode())  # its repr: RecursionError
@given(st.one_of(st.text(), st.text().map(lambda t: HEADER + t), csv_texts, json_texts,
                 st.tuples(json_texts, st.sampled_from(["\u2028", "\x1c", "\x85", "\r", "\r\n", "\x0b"]), json_texts)
                 .map("".join)))
def test_any_text_is_read_or_refused_with_a_snapshot_error(text: str) -> None:
    try:
        found = read_snapshot(text)
    except SnapshotError as exc:
        assert exc.line >= 1
    else:
        assert all(o.side in ("buy", "sell") and o.volume > 0 for o in found)
