"""Normalized events: one shape for the trading meaning of what the three senders send.

Each scheme module maps its own events (`normalize(event_type, event)`, beside its verifier);
this module holds the shape and the lenient readers those mappings share. A mapping never
raises: a field it cannot read is left out, and why is recorded in `problems` (docs/ledger.md
has the tables). Events with no trading meaning (MetaCopier's `history.updated`, PipSync's
`signal.received`, TradrAPI's challenges) map to None.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from gateway.model import EventRecord, iso_utc

log = logging.getLogger("gateway.normalized")

Kind = Literal["position.opened", "position.closed", "order.placed", "order.cancelled", "balance.operation",
               "account.created", "account.updated"]
KINDS: tuple[Kind, ...] = ("position.opened", "position.closed", "order.placed", "order.cancelled",
                           "balance.operation", "account.created", "account.updated")
Side = Literal["buy", "sell"]
# Unix times above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
_MILLISECONDS_FROM = 1e11
MAX_QUANTITY = 1e15  # any volume, price, profit or amount beyond this is a sender's error, not a figure


@dataclass(frozen=True, slots=True)
class Normalized:
    """The trading meaning of one stored event. Fields the sender did not give, or gave in a
    shape that could not be read (see `problems`), are None.

    Attributes:
        kind: what happened (`KINDS`).
        source, event_id: where it came from: the source name and our event id.
        account, position_id, order_id: the business entities, as the sender names them (the
            same ids that order delivery: `position:<id>`, `account:<id>`, `order:<id>`).
        symbol, side (`buy`/`sell`), volume (lots), price (the open price of an open or an order,
            the close price of a close), sl, tp, profit (realised, on a close).
        currency, amount, operation: a balance operation's (and an account's currency).
        occurred_at: the sender's time for the event, ISO 8601 UTC.
        problems: what could not be read, one line each ("volume: negative (-1)").
    """

    kind: Kind
    source: str = ""
    event_id: int | None = None
    account: str | None = None
    position_id: str | None = None
    order_id: str | None = None
    symbol: str | None = None
    side: Side | None = None
    volume: float | None = None
    price: float | None = None
    sl: float | None = None
    tp: float | None = None
    profit: float | None = None
    currency: str | None = None
    amount: float | None = None
    operation: str | None = None
    occurred_at: str | None = None
    problems: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _FIELDS}
        data["problems"] = list(self.problems)
        return data

    def dumps(self) -> bytes:
        """`to_json()` as JSON bytes (orjson writes the dataclass itself: the ledger's hot path)."""
        return orjson.dumps(self)


_FIELDS = tuple(f.name for f in fields(Normalized))


class Reader:
    """Reads one event's fields leniently, recording what it could not read."""

    def __init__(self, event: Any) -> None:
        self.event = event if isinstance(event, dict) else {}
        self.problems: list[str] = []

    def raw(self, *paths: str) -> tuple[str, Any]:
        """The first path present (not null), and its value; ("", None) if none is."""
        for path in paths:
            value: Any = self.event
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                return path, value
        return "", None

    def text(self, *paths: str) -> str | None:
        """An id or a name: a non-empty string, or an integer written as text."""
        path, value = self.raw(*paths)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problems.append(f"{path}: {type(value).__name__} where text was expected")
            return None
        if isinstance(value, float):
            if not value.is_integer():
                self.problems.append(f"{path}: {value!r} is not an id")
                return None
            value = int(value)
        text = str(value).strip()
        return text or None

    def number(self, *paths: str, positive: bool = False) -> float | None:
        """A finite number; a decimal written as a string is read too."""
        path, value = self.raw(*paths)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                self.problems.append(f"{path}: {value[:40]!r} is not a number")
                return None
        number = None if isinstance(value, bool) or not isinstance(value, int | float) else _finite(value)
        if number is None:
            self.problems.append(f"{path}: {str(value)[:40]!r} is not a finite number")
            return None
        if positive and number <= 0:
            self.problems.append(f"{path}: {'negative' if number < 0 else 'zero'} ({value})")
            return None
        if abs(number) > MAX_QUANTITY:  # no lot, price or amount is this large; sums of it would overflow
            self.problems.append(f"{path}: {str(value)[:40]!r} is not a plausible figure (above {MAX_QUANTITY:g})")
            return None
        return number

    def side(self, *paths: str) -> Side | None:
        """buy or sell, from `buy`, `Buy`, `BUY`, or an order type such as `BuyLimit` or `SELL_STOP`."""
        path, value = self.raw(*paths)
        if value is None:
            self.problems.append(f"side: missing ({' or '.join(paths)})")
            return None
        word = str(value).strip().lower().replace("_", "").replace(" ", "")
        for side in ("buy", "sell"):
            if word.startswith(side) and word[len(side):] in ("", "limit", "stop", "stoplimit"):
                return side
        self.problems.append(f"{path}: unknown side or order type {str(value)[:40]!r}")
        return None

    def when(self, *paths: str) -> str | None:
        """An ISO 8601 UTC time from ISO text (a time without an offset is UTC, read as written),
        or from a number (or a string that is only a number): Unix seconds, or milliseconds
        from 1e11. A number must then land in 2000-2100; outside, its unit or format was
        misread (no sender writes dates as digits: 20261120 would be August 1970)."""
        path, value = self.raw(*paths)
        if value is None:
            return None
        shown = repr(str(value)[:40])
        stamp: float | None = None
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(value, str):
            digits = value.strip().replace(".", "", 1)
            numeric = digits.isascii() and digits.isdigit()
        if numeric:
            stamp = _finite(value.strip() if isinstance(value, str) else value)
            if stamp is not None and stamp >= _MILLISECONDS_FROM:
                stamp /= 1000
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.strip())
            except ValueError:
                self.problems.append(f"{path}: {shown} is not a time")
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            stamp = parsed.timestamp()
        if stamp is None or stamp < 0:
            self.problems.append(f"{path}: {shown} is not a time")
            return None
        try:
            found = iso_utc(stamp)
        except (OverflowError, ValueError, OSError):
            self.problems.append(f"{path}: {shown} is out of range")
            return None
        if numeric and not self._PLAUSIBLE[0] <= stamp < self._PLAUSIBLE[1]:
            self.problems.append(f"{path}: {shown} is not a plausible time: read as {found}, outside 2000-2100")
            return None
        return found

    # Where a time read from a number may fall: 2000-01-01 to 2100-01-01 (UTC), in Unix seconds
    _PLAUSIBLE = (datetime(2000, 1, 1, tzinfo=UTC).timestamp(), datetime(2100, 1, 1, tzinfo=UTC).timestamp())

    def require(self, what: str, value: object) -> None:
        """Record a field a record of this kind cannot do without."""
        if value is None and not any(p.startswith(what) for p in self.problems):
            self.problems.append(f"{what}: missing")


def _finite(value: float | str) -> float | None:
    """`value` as a finite float, or None (an integer beyond a float's range included)."""
    try:
        number = float(value)
    except (OverflowError, ValueError):
        return None
    return number if math.isfinite(number) else None


def normalize(record: EventRecord) -> Normalized | None:
    """The normalized form of a stored event, by its scheme's mapping; None when it has no
    trading meaning, was quarantined, or its scheme has no mapping."""
    if record.payload is None or record.status == "quarantined":
        return None
    found = _mapped(record.scheme, record.event_type, record.payload)
    if found is None:
        return None
    # The mapping's record is fresh and ours alone: fill in where it came from without a copy
    # (dataclasses.replace was a quarter of the ledger's cost per event).
    object.__setattr__(found, "source", record.source)
    object.__setattr__(found, "event_id", record.id)
    return found


def normalize_document(scheme: str | None, source: str, event_type: str, document: Any) -> dict[str, Any] | None:
    """An event not yet stored (no id), normalized as JSON: what a `where` filter sees."""
    found = None if scheme is None or document is None else _mapped(scheme, event_type, document)
    return None if found is None else replace(found, source=source).to_json()


def _mapped(scheme: str, event_type: str, event: Any) -> Normalized | None:
    from gateway.schemes import SchemeError, get_scheme  # the registry imports the config

    try:
        mapping = getattr(get_scheme(scheme), "normalize", None)
    except SchemeError:
        return None
    if mapping is None:
        return None
    try:
        found: Normalized | None = mapping(event_type, event)
    except Exception:  # a scheme registered from outside broke its promise: no normalized form
        log.exception("scheme %s: normalize(%r) raised", scheme, event_type)
        return None
    return found
