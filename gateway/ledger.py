"""The position ledger's rules: a position's state and anomalies from its normalized events.

Pure: `fold` is a function of the *set* of a position's events, never of the order they arrived
in. They are replayed sorted by the sender's time (then our id), so a close that arrived before
its open ends in the same state as in order, and a ledger rebuilt from the store equals the one
kept incrementally (docs/ledger.md, "The ledger"). Volumes are summed as decimals of their
shortest repr, so 0.1 + 0.2 closes a 0.3 position exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from gateway.normalized import Normalized

State = Literal["open", "partially_closed", "closed"]
AnomalyKind = Literal["close_without_open", "overclosed", "stale_open", "conflict", "reopened",
                      "side_or_symbol_mismatch"]
ANOMALY_KINDS: tuple[AnomalyKind, ...] = ("close_without_open", "overclosed", "stale_open", "conflict", "reopened",
                                          "side_or_symbol_mismatch")
POSITION_KINDS = ("position.opened", "position.closed")
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Entry:
    """One event of a position, as the ledger keeps it: the normalized record and whether the
    store kept it as a `conflict` (a repeat with other content)."""

    record: Normalized
    conflict: bool = False


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: AnomalyKind
    event_ids: tuple[int, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class Position:
    """One (source, account, position id) as its events say."""

    source: str
    account: str
    position_id: str
    state: State
    side: str | None = None
    symbol: str | None = None
    opened_volume: float | None = None
    closed_volume: float = 0.0
    open_price: float | None = None
    close_prices: tuple[float, ...] = ()
    profit: float | None = None
    opened_at: str | None = None
    closed_at: str | None = None
    last_event_at: str | None = None  # the latest sender time among its events
    event_ids: tuple[int, ...] = ()
    anomalies: tuple[Anomaly, ...] = field(default=())


    @property
    def open_volume(self) -> float | None:
        """What is still open: opened minus closed (None when the opened volume is unknown)."""
        if self.state == "closed":
            return 0.0
        if self.opened_volume is None:
            return None
        try:
            return float(_decimal(self.opened_volume) - _decimal(self.closed_volume))
        except ArithmeticError:  # infinities from a fold of implausible figures: unknown, never a crash
            return None


def key(record: Normalized) -> tuple[str, str, str] | None:
    """The position a record belongs to, or None when it is no position event or lacks its ids."""
    if record.kind not in POSITION_KINDS or record.position_id is None:
        return None
    return record.source, record.account or "", record.position_id


def _order(entry: Entry) -> tuple[str, int, int]:
    # Events without a time sort first; within one time, opens before closes, then by our id
    return entry.record.occurred_at or "", entry.record.kind != "position.opened", entry.record.event_id or 0


def _decimal(value: float | None) -> Decimal:
    return Decimal(repr(value)) if value is not None else Decimal(0)


def fold(entries: Iterable[Entry], *, now: float | None = None, max_open_days: float | None = None) -> Position:
    """The position `entries` (one position's, at least one) describe. `now` and `max_open_days`
    raise `stale_open` for a position open since longer than that (off when either is None)."""
    ordered = sorted(entries, key=_order)
    if not ordered:
        raise ValueError("a position needs at least one event")
    first = ordered[0].record
    source, account, position_id = first.source, first.account or "", first.position_id or ""
    ids = tuple(e.record.event_id for e in ordered if e.record.event_id is not None)
    # A conflict is a second version of an occurrence already counted: it raises its anomaly
    # and is listed, but its volume is not counted again.
    conflicts = [e for e in ordered if e.conflict]
    ordered = [e for e in ordered if not e.conflict] or ordered
    opens = [e for e in ordered if e.record.kind == "position.opened"]
    closes = [e for e in ordered if e.record.kind == "position.closed"]
    anomalies: list[Anomaly] = []

    opening = opens[0].record if opens else None
    # Opens add up (a netting account adds to a position). An open that comes once everything
    # opened before it was closed reopens the position id: the volumes start again from it. A
    # close of unknown volume closes what is left. Overclosing is judged at the end of each life,
    # so it does not depend on where a close sorts among its life's events.
    opened_sum, closed, reopened, overclosed, mismatched = Decimal(0), Decimal(0), [], [], []
    life, life_closes = opening, []  # the open the current life began with, and that life's closes
    for entry in ordered:
        record = entry.record
        if record.kind == "position.closed":
            closed = opened_sum if record.volume is None else closed + _decimal(record.volume)
            life_closes.append(entry)
            if life is not None and _differs(life, record):
                mismatched.append((life, entry))
            continue
        if record is not opening and closed >= opened_sum > 0:
            reopened.append(record.event_id or 0)
            overclosed += life_closes if closed > opened_sum else []
            opened_sum, closed, life, life_closes = Decimal(0), Decimal(0), record, []
        opened_sum += _decimal(record.volume)
    if opening is not None and opened_sum > 0 and closed > opened_sum:
        overclosed += life_closes
    unknown_close = any(e.record.volume is None for e in life_closes)
    opened = opened_sum if opening is not None and any(e.record.volume is not None for e in opens) else None
    if opening is None:
        anomalies.append(Anomaly("close_without_open", _ids(closes),
                                 f"{len(closes)} close(s) and no open: an open was lost"))
    if overclosed:
        anomalies.append(Anomaly("overclosed", _ids(overclosed), "more lots closed than were opened"))
    if reopened:
        anomalies.append(Anomaly("reopened", tuple(reopened), "an open for a position already closed"))
    if mismatched:
        anomalies.append(Anomaly("side_or_symbol_mismatch", _ids([e for _, e in mismatched]),
                                 ", ".join(f"opened {o.side} {o.symbol}; closed {e.record.side} {e.record.symbol}"
                                           for o, e in mismatched)))
    if conflicts:
        anomalies.append(Anomaly("conflict", _ids(conflicts),
                                 "the sender re-sent an event with other content (both versions are kept)"))

    if opening is None or (unknown_close and closed >= opened_sum):
        state: State = "closed"
    elif opened is None or closed == 0:
        state = "open" if closed == 0 else "partially_closed"
    else:
        state = "closed" if closed >= opened else "partially_closed"
    if (state != "closed" and now is not None and max_open_days is not None and life is not None
            and life.occurred_at is not None and _age_days(life.occurred_at, now) > max_open_days):
        anomalies.append(Anomaly("stale_open", (life.event_id or 0,),
                                 f"open since {life.occurred_at}, more than {max_open_days:g} days"))
    reference = life or first
    profits = [e.record.profit for e in closes if e.record.profit is not None]
    return Position(
        source=source, account=account, position_id=position_id, state=state,
        side=reference.side, symbol=reference.symbol,
        opened_volume=None if opened is None else float(opened), closed_volume=float(closed),
        open_price=life.price if life is not None else None,
        close_prices=tuple(e.record.price for e in closes if e.record.price is not None),
        profit=float(sum((_decimal(p) for p in profits), Decimal(0))) if profits else None,
        opened_at=life.occurred_at if life is not None else None,
        closed_at=closes[-1].record.occurred_at if closes and state == "closed" else None,
        last_event_at=max((e.record.occurred_at for e in ordered if e.record.occurred_at), default=None),
        event_ids=ids,
        anomalies=tuple(sorted(anomalies, key=lambda a: ANOMALY_KINDS.index(a.kind))),
    )


def _ids(entries: Sequence[Entry]) -> tuple[int, ...]:
    return tuple(e.record.event_id or 0 for e in entries)


def _differs(opening: Normalized, close: Normalized) -> bool:
    side = close.side is not None and opening.side is not None and close.side != opening.side
    symbol = close.symbol is not None and opening.symbol is not None and close.symbol != opening.symbol
    return side or symbol


def _age_days(iso: str, now: float) -> float:
    from datetime import datetime

    return (now - datetime.fromisoformat(iso).timestamp()) / DAY


def position_json(position: Position) -> dict[str, Any]:
    """The public shape of a position (the API, the CLI, the stored document)."""
    return {
        "source": position.source, "account": position.account, "position_id": position.position_id,
        "state": position.state, "side": position.side, "symbol": position.symbol,
        "opened_volume": position.opened_volume, "closed_volume": position.closed_volume,
        "open_volume": position.open_volume, "open_price": position.open_price,
        "close_prices": list(position.close_prices), "profit": position.profit,
        "opened_at": position.opened_at, "closed_at": position.closed_at, "last_event_at": position.last_event_at,
        "event_ids": list(position.event_ids),
        "anomalies": [{"kind": a.kind, "event_ids": list(a.event_ids), "detail": a.detail} for a in position.anomalies],
    }


def position_from_json(data: Mapping[str, Any]) -> Position:
    """The position a `position_json` document describes."""
    return Position(
        source=data["source"], account=data["account"], position_id=data["position_id"], state=data["state"],
        side=data.get("side"), symbol=data.get("symbol"), opened_volume=data.get("opened_volume"),
        closed_volume=data.get("closed_volume", 0.0), open_price=data.get("open_price"),
        close_prices=tuple(data.get("close_prices", ())), profit=data.get("profit"), opened_at=data.get("opened_at"),
        closed_at=data.get("closed_at"), last_event_at=data.get("last_event_at"),
        event_ids=tuple(data.get("event_ids", ())),
        anomalies=tuple(Anomaly(a["kind"], tuple(a["event_ids"]), a["detail"]) for a in data.get("anomalies", ())),
    )
