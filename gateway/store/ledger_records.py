"""The records the position ledger keeps in a store (gateway.projector writes them, the API
and the CLI read them). Plain frozen data, as gateway/store/records.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.ledger import Entry
from gateway.model import iso_utc

PositionKey = tuple[str, str, str]
"""(source, account, position id): one position. The account is "" when the sender gives none."""


@dataclass(frozen=True, slots=True)
class StoredAnomaly:
    """An anomaly as kept: raised by the projector, resolved by it when the events no longer
    show it, acknowledged by an operator (it then stays listed, marked as such)."""

    id: int
    source: str
    account: str
    position_id: str
    kind: str
    event_ids: tuple[int, ...]
    detail: str
    raised_at: float
    resolved_at: float | None = None
    acked_at: float | None = None
    note: str | None = None

    @property
    def key(self) -> PositionKey:
        return self.source, self.account, self.position_id

    @property
    def open(self) -> bool:
        """Neither resolved nor acknowledged: somebody should look."""
        return self.resolved_at is None and self.acked_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "source": self.source, "account": self.account,
            "position_id": self.position_id, "event_ids": list(self.event_ids), "detail": self.detail,
            "raised_at": iso_utc(self.raised_at),
            "resolved_at": None if self.resolved_at is None else iso_utc(self.resolved_at),
            "acknowledged_at": None if self.acked_at is None else iso_utc(self.acked_at),
            "note": self.note, "open": self.open,
        }


@dataclass(frozen=True, slots=True)
class StoredPosition:
    """A row of the ledger: the folded position (`gateway.ledger.position_json`) as `document`."""

    id: int
    updated_at: float
    document: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.document, "updated_at": iso_utc(self.updated_at)}


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """Where the projection stands. `pending_since`: receive time of the oldest event not
    projected yet (None when it is caught up). `orphans`: a rebuild left positions whose
    events were all pruned to fold again from their entries."""

    checkpoint: int
    latest: int
    pending_since: float | None
    orphans: bool = False


@dataclass(slots=True)
class LoadedPosition:
    """What the projector folds again: a position's entries, its state as stored (None: new)
    and its unresolved anomalies."""

    state: str | None = None
    entries: list[Entry] = field(default_factory=list)
    anomalies: list[StoredAnomaly] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NewAnomaly:
    key: PositionKey
    kind: str
    event_ids: tuple[int, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class PositionRow:
    key: PositionKey
    state: str
    symbol: str | None
    opened_at: str | None
    document: bytes


@dataclass(frozen=True, slots=True)
class EntryRow:
    key: PositionKey
    event_id: int
    conflict: bool
    record: bytes


@dataclass(frozen=True, slots=True)
class LedgerWrite:
    """One step of the projection, written in one transaction, and only if the checkpoint is
    still `after` (another projector moved it, or a rebuild reset it: nothing is written)."""

    after: int
    checkpoint: int
    at: float
    entries: Sequence[EntryRow] = ()
    positions: Sequence[PositionRow] = ()
    raised: Sequence[NewAnomaly] = ()
    resolved: Sequence[int] = ()
    changed: Sequence[tuple[int, tuple[int, ...], str]] = ()  # (anomaly id, event ids, detail)
    counts: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (source, state) -> change
    orphans_done: bool = False


@dataclass(frozen=True, slots=True)
class PositionQuery:
    """Filters for listing positions, newest first; `after` continues past that position id.
    `opened_before` (ISO 8601) with `state` finds open positions old enough to be stale."""

    source: str | None = None
    account: str | None = None
    symbol: str | None = None
    state: str | None = None
    anomalous: bool | None = None
    opened_before: str | None = None
    after: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class AnomalyQuery:
    """Filters for listing anomalies, newest first. `open`: True for those neither resolved nor
    acknowledged, False for the others."""

    source: str | None = None
    account: str | None = None
    position_id: str | None = None
    kind: str | None = None
    open: bool | None = None
    after: int | None = None
    limit: int = 100
