"""Reconciliation against the platform's own view: a snapshot of open positions, as a broker
exports it (MT4/MT5 Manager, cTrader's reconcile call), compared with the ledger.

Pure: `read_snapshot` parses the file's text (CSV with a header, or JSON lines) with errors that
name the line; `compare` lists the differences. `gateway ledger reconcile` prints them.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import orjson

from gateway.ledger import Position

COLUMNS = ("account", "position_id", "symbol", "side", "volume")
Kind = Literal["missing_in_ledger", "missing_on_platform", "volume_differs", "side_differs"]
# What each difference most likely means, for the table humans read
MEANING: dict[Kind, str] = {
    "missing_in_ledger": "open on the platform, not open in the ledger: a missed open",
    "missing_on_platform": "open in the ledger, not on the platform: a missed close",
    "volume_differs": "open volumes differ: a missed partial close or open",
    "side_differs": "the sides differ",
}


class SnapshotError(ValueError):
    """A snapshot file that cannot be read; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class Open:
    """One open position on the platform."""

    account: str
    position_id: str
    symbol: str
    side: str
    volume: float
    line: int


@dataclass(frozen=True, slots=True)
class Difference:
    kind: Kind
    account: str
    position_id: str
    platform: str | None  # "buy 1.5 EURUSD", as the snapshot has it
    ledger: str | None  # the same from the ledger, with its state
    line: int | None  # the snapshot's line

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_snapshot(text: str) -> list[Open]:
    """Every open position of a snapshot: CSV whose first line names the columns, or one JSON
    object per line. Raises SnapshotError naming the first bad line."""
    text = text.removeprefix("\ufeff")  # a byte order mark, as spreadsheets write CSV
    first = next((line.strip() for line in text.split("\n") if line.strip()), "")
    rows = _json_lines(text) if first.startswith("{") else _csv_rows(text)
    seen: dict[tuple[str, str], int] = {}
    found: list[Open] = []
    for line, row in rows:
        position = _open(line, row)
        where = (position.account, position.position_id)
        if where in seen:
            raise SnapshotError(line, f"position {position.position_id} of account {position.account} "
                                      f"is listed twice (first on line {seen[where]})")
        seen[where] = line
        found.append(position)
    return found


def _csv_rows(text: str) -> Iterable[tuple[int, dict[str, Any]]]:
    # newline="" as the csv module asks: a line may end in \r\n, \n or a lone \r (old Mac
    # exports), and a quoted cell keeps the line breaks inside it.
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1  # where the next row begins, for an error inside it
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a cell over csv's field size limit (131072 characters)
            raise SnapshotError(start, f"not CSV: {exc}") from None
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise SnapshotError(line, f"the header lacks {', '.join(missing)} (columns: {', '.join(COLUMNS)})")
            # Read columns only: a spreadsheet's trailing empty columns, or a repeated note, are harmless.
            twice = [c for c in COLUMNS if header.count(c) > 1]
            if twice:
                raise SnapshotError(line, f"the header names {', '.join(twice)} more than once: which one is meant?")
            continue
        if len(row) != len(header):
            raise SnapshotError(line, f"{len(row)} fields where the header has {len(header)}")
        yield line, dict(zip(header, row, strict=True))


def _json_lines(text: str) -> Iterable[tuple[int, dict[str, Any]]]:
    # Lines end at \n only: str.splitlines() would also cut at U+2028, \x1c or \x85, which a
    # JSON string may hold as they are.
    for line, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SnapshotError(line, f"not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise SnapshotError(line, f"a JSON {type(row).__name__} where an object was expected")
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise SnapshotError(line, f"lacks {', '.join(missing)}")
        yield line, row


def _open(line: int, row: dict[str, Any]) -> Open:
    texts = {}
    for column in ("account", "position_id", "symbol", "side"):
        value = row[column]
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
            raise SnapshotError(line, f"{column} is empty or not text: {_shown(value)}")
        texts[column] = str(value).strip()
    side = texts["side"].lower()
    if side not in ("buy", "sell"):
        raise SnapshotError(line, f"side must be buy or sell, got {texts['side'][:40]!r}")
    raw = row["volume"]
    try:
        volume = float(raw.strip()) if isinstance(raw, str) else float(raw)
    except (TypeError, ValueError):
        raise SnapshotError(line, f"volume is not a number: {_shown(raw)}") from None
    if isinstance(raw, bool) or not math.isfinite(volume) or volume <= 0:
        raise SnapshotError(line, f"volume must be a number above zero, got {_shown(raw)}")
    return Open(texts["account"], texts["position_id"], texts["symbol"], side, volume, line)


def _shown(value: Any) -> str:
    """A cell's value for a message: a JSON array or object by its kind, as its text may be
    nested past the interpreter's recursion limit."""
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    return repr(str(value)[:40])


def compare(snapshot: Iterable[Open], positions: Iterable[Position], as_of: float | None = None) -> list[Difference]:
    """What differs between the platform's open positions and the ledger's (one source's).
    With `as_of` (Unix seconds, when the snapshot was taken), a position whose ledger events
    are later than that is not counted: the platform could not have known them."""
    cutoff = None if as_of is None else datetime.fromtimestamp(as_of, UTC).isoformat(timespec="milliseconds")
    cutoff = None if cutoff is None else cutoff.replace("+00:00", "Z")
    ledger = {(p.account, p.position_id): p for p in positions}
    differences: list[Difference] = []
    on_platform = set()
    for row in snapshot:
        where = (row.account, row.position_id)
        on_platform.add(where)
        position = ledger.get(where)
        if position is not None and _later(position, cutoff):
            continue
        platform = f"{row.side} {_plain(row.volume)} {row.symbol}"
        if position is None or position.state == "closed":
            differences.append(Difference("missing_in_ledger", row.account, row.position_id, platform,
                                          None if position is None else _describe(position), row.line))
            continue
        if position.side is not None and position.side != row.side:
            differences.append(Difference("side_differs", row.account, row.position_id, platform,
                                          _describe(position), row.line))
        open_volume = position.open_volume
        if open_volume is not None and Decimal(repr(open_volume)) != Decimal(repr(row.volume)):
            differences.append(Difference("volume_differs", row.account, row.position_id, platform,
                                          _describe(position), row.line))
    for where, position in sorted(ledger.items()):
        if where in on_platform or position.state == "closed" or _later(position, cutoff):
            continue
        differences.append(Difference("missing_on_platform", position.account, position.position_id, None,
                                      _describe(position), None))
    return differences


def _later(position: Position, cutoff: str | None) -> bool:
    return cutoff is not None and position.last_event_at is not None and position.last_event_at > cutoff


def _describe(position: Position) -> str:
    volume = position.open_volume
    shown = "?" if volume is None else _plain(volume)
    return f"{position.side or '?'} {shown} {position.symbol or '?'} ({position.state})"


def _plain(value: float) -> str:
    return format(Decimal(repr(value)).normalize(), "f")
