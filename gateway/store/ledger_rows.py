"""Rows of the ledger's tables to records and back, for every SQL backend (same columns)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.ledger import Entry
from gateway.normalized import Normalized
from gateway.store.ledger_records import AnomalyQuery, PositionQuery, StoredAnomaly, StoredPosition

US = 1_000_000

ANOMALY_COLUMNS = ("id, source, account, position_id, kind, event_ids, detail, raised_at, resolved_at, acked_at,"
                   " note")
POSITION_COLUMNS = "id, updated_at, document"
ENTRY_COLUMNS = "t.source, t.account, t.position_id, t.conflict, t.record"  # of `ledger_entries t`


def prefixed(columns: str, alias: str) -> str:
    """`a, b` as `t.a, t.b`, for a query that joins."""
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def anomaly(row: Any) -> StoredAnomaly:
    return StoredAnomaly(
        id=row[0], source=row[1], account=row[2], position_id=row[3], kind=row[4],
        event_ids=tuple(orjson.loads(row[5])), detail=row[6], raised_at=row[7] / US,
        resolved_at=None if row[8] is None else row[8] / US, acked_at=None if row[9] is None else row[9] / US,
        note=row[10],
    )


def position(row: Any) -> StoredPosition:
    return StoredPosition(id=row[0], updated_at=row[1] / US, document=orjson.loads(row[2]))


def entry(conflict: Any, record: bytes) -> Entry:
    data = orjson.loads(record)
    data["problems"] = tuple(data.get("problems") or ())
    return Entry(Normalized(**data), conflict=bool(conflict))


def us(seconds: float) -> int:
    return round(seconds * US)


# A position has open anomalies when one of them is neither resolved nor acknowledged.
_ANOMALOUS = ("EXISTS (SELECT 1 FROM anomalies a WHERE a.source = p.source AND a.account = p.account"
              " AND a.position_id = p.position_id AND a.resolved_at IS NULL AND a.acked_at IS NULL)")
_OPEN = "resolved_at IS NULL AND acked_at IS NULL"


def position_filters(q: PositionQuery) -> list[tuple[str, Any]]:
    anomalous = None if q.anomalous is None else (_ANOMALOUS if q.anomalous else f"NOT {_ANOMALOUS}")
    return [("p.source = {}", q.source), ("p.account = {}", q.account), ("p.symbol = {}", q.symbol),
            ("p.state = {}", q.state), ("p.opened_at < {}", q.opened_before), ("p.id < {}", q.after),
            (anomalous or "", anomalous)]


def anomaly_filters(q: AnomalyQuery) -> list[tuple[str, Any]]:
    state = None if q.open is None else (_OPEN if q.open else f"NOT ({_OPEN})")
    return [("source = {}", q.source), ("account = {}", q.account), ("position_id = {}", q.position_id),
            ("kind = {}", q.kind), ("id < {}", q.after), (state or "", state)]
