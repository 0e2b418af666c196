"""The event store contract. SQLite is the one backend today; PostgreSQL can follow.

Every backend runs the same contract tests (tests/store/test_contract.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.config import StoreConfig
from gateway.model import EventStatus, Outcome, ParsedEvent


@dataclass(frozen=True, slots=True)
class Receipt:
    """One authenticated request as received. `headers` has credentials removed already."""

    request_id: str
    source: str
    scheme: str
    received_at: float
    remote_addr: str | None
    attempt: int | None
    headers: Sequence[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back from the store."""

    id: int
    source: str
    scheme: str
    event_type: str
    entity_id: str
    dedup_key: str
    status: EventStatus
    account: str | None
    symbol: str | None
    received_at: float
    request_id: str
    attempt: int | None
    remote_addr: str | None
    payload: Any
    quarantine_reason: str | None

    def to_json(self) -> dict[str, Any]:
        """The public shape of an event (`gateway events --json`, and later the API)."""
        return {
            "id": self.id,
            "source": self.source,
            "scheme": self.scheme,
            "event_type": self.event_type or None,
            "entity_id": self.entity_id,
            "dedup_key": self.dedup_key,
            "status": self.status,
            "account": self.account,
            "symbol": self.symbol,
            "received_at": iso_utc(self.received_at),
            "request_id": self.request_id,
            "attempt": self.attempt,
            "remote_addr": self.remote_addr,
            "quarantine_reason": self.quarantine_reason,
            "payload": self.payload,
        }


def iso_utc(timestamp: float) -> str:
    stamp = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class Store(Protocol):
    """What the gateway needs from an event store."""

    async def open(self) -> None:
        """Connect, create or migrate the schema, start the writer."""

    async def close(self) -> None:
        """Commit what is queued, then release everything."""

    async def ingest(self, receipt: Receipt, events: Sequence[ParsedEvent]) -> list[Outcome]:
        """Store the request's new events atomically; return once they are durable.

        Events already stored (same source, event type and entity id) come back as
        `duplicate` with the id of the stored copy. Raises `StoreUnavailable`.
        """
        ...

    async def list_events(
        self,
        *,
        source: str | None = None,
        event_type: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Stored events, newest first. `event_type` is a glob."""
        ...


def open_store(config: StoreConfig, *, readonly: bool = False) -> Store:
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(
        config.path,
        synchronous=config.synchronous,
        busy_timeout_ms=config.busy_timeout_ms,
        readonly=readonly,
    )
