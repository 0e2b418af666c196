"""The event store contract. SQLite is the one backend today; PostgreSQL can follow.

Every backend runs the same contract tests (tests/store/test_contract.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

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
class EventQuery:
    """Filters for listing events. `event_type` is a glob; times are Unix seconds.
    `after` continues a listing past the event with that id, in the listing's order."""

    source: str | None = None
    scheme: str | None = None
    event_type: str | None = None
    account: str | None = None
    symbol: str | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None
    newest_first: bool = True
    after: int | None = None
    limit: int = 100


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
        """The public shape of an event (`gateway events --json`, the API, the stream)."""
        return event_json(self, request_id=self.request_id, attempt=self.attempt,
                          remote_addr=self.remote_addr, quarantine_reason=self.quarantine_reason)


class _EventLike(Protocol):
    """What every JSON view of an event reads (read-only, as frozen dataclasses are)."""

    @property
    def id(self) -> int: ...

    @property
    def source(self) -> str: ...

    @property
    def scheme(self) -> str: ...

    @property
    def event_type(self) -> str: ...

    @property
    def entity_id(self) -> str: ...

    @property
    def dedup_key(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def account(self) -> str | None: ...

    @property
    def symbol(self) -> str | None: ...

    @property
    def received_at(self) -> float: ...

    @property
    def payload(self) -> Any: ...


def event_json(event: _EventLike, **extra: Any) -> dict[str, Any]:
    """The fields every JSON view of an event shares (stored events and plugin events)."""
    return {
        "id": event.id,
        "source": event.source,
        "scheme": event.scheme,
        "event_type": event.event_type or None,
        "entity_id": event.entity_id,
        "dedup_key": event.dedup_key,
        "status": event.status,
        "account": event.account,
        "symbol": event.symbol,
        "received_at": iso_utc(event.received_at),
        **extra,
        "payload": event.payload,
    }


DeliveryStatus = Literal["pending", "delivered", "dead"]


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A pending delivery whose time has come, with what the plugin needs of its event.

    `data` is the event's own bytes: the request body, or the member's JSON in a batch.
    """

    id: int
    plugin: str
    attempts: int
    event_id: int
    source: str
    scheme: str
    event_type: str
    entity_id: str
    dedup_key: str
    status: EventStatus
    account: str | None
    symbol: str | None
    received_at: float
    data: bytes


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one delivery attempt ended. `status` "pending" means retry at `next_attempt_at`."""

    id: int
    status: DeliveryStatus
    next_attempt_at: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A delivery row as listed by `gateway deliveries` and the API."""

    id: int
    event_id: int
    plugin: str
    source: str
    entity_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "plugin": self.plugin,
            "source": self.source,
            "entity_id": self.entity_id,
            "event_type": self.event_type or None,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": iso_utc(self.next_attempt_at) if self.status == "pending" else None,
            "created_at": iso_utc(self.created_at),
            "updated_at": iso_utc(self.updated_at),
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    pending: int
    oldest_pending_at: float | None
    dead: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused request, as kept for forensics: never a body, a header value or a secret."""

    received_at: float
    request_id: str
    source: str
    code: str
    detail: str
    remote_addr: str | None
    header_names: tuple[str, ...]
    body_size: int | None
    body_sha256: str | None
    known_source: bool = True
    id: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": iso_utc(self.received_at),
            "request_id": self.request_id,
            "source": self.source,
            "code": self.code,
            "detail": self.detail,
            "remote_addr": self.remote_addr,
            "header_names": list(self.header_names),
            "body_size": self.body_size,
            "body_sha256": self.body_sha256,
        }


CommitListener = Callable[[frozenset[str]], None]
"""Called after a commit that queued deliveries, with the names of the plugins concerned."""


@dataclass(frozen=True, slots=True)
class EventDetail:
    event: StoredEvent
    body: bytes
    headers: list[tuple[str, str]]


def iso_utc(timestamp: float) -> str:
    stamp = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class Store(Protocol):
    """What the gateway needs from an event store."""

    async def open(self) -> None:
        """Connect, create or migrate the schema, start the writer."""

    async def close(self) -> None:
        """Commit what is queued, then release everything."""

    async def ingest(
        self,
        receipt: Receipt,
        events: Sequence[ParsedEvent],
        routes: Sequence[Sequence[str]] | None = None,
    ) -> list[Outcome]:
        """Store the request's new events atomically; return once they are durable.

        `routes[i]` names the plugins that get `events[i]`: their delivery rows are written
        in the same transaction. Events already stored (same source, event type and entity
        id) come back as `duplicate` with the id of the stored copy and are not routed again.
        Raises `StoreUnavailable`.
        """
        ...

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call `listener` after each commit that queued deliveries."""

    async def prune(self, before: float, batch: int = 500) -> int:
        """Delete one batch of events received before `before` whose deliveries are all
        finished, with their finished deliveries, orphaned receipts and old rejections.
        Returns how many events went (0: nothing left to prune). Call until it returns 0."""
        ...

    async def backup(self, target: Path) -> None:
        """Write a consistent copy of the store to `target` while it keeps serving."""

    async def check_writable(self) -> None:
        """Write and commit one small row through the writer; raises StoreUnavailable."""

    def add_event_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener` with the newest event id after each commit that stored events."""

    async def latest_event_id(self) -> int:
        """The highest event id stored (0 when empty)."""
        ...

    async def due_deliveries(self, plugin: str, now: float, limit: int) -> list[DueDelivery]:
        """Pending deliveries due by `now`, oldest first, at most one per (source, entity id):
        a delivery waits while an earlier one of the same entity is pending."""
        ...

    async def finish_deliveries(self, results: Sequence[DeliveryResult]) -> None:
        """Record how attempts ended (one transaction)."""

    async def replay(self, plugin: str, *, event_id: int | None = None, dead: bool = False) -> int:
        """Make deliveries pending again: one event's (creating its row if the plugin never
        had it) or every dead one. Returns how many rows changed. Never copies an event."""
        ...

    async def delivery_stats(self, plugin: str) -> DeliveryStats:
        """Backlog, oldest pending receive time and dead letters of one plugin."""
        ...

    def record_rejection(self, rejection: Rejection) -> None:
        """Keep a rejected request's forensics, without waiting: written with the next group,
        pruned to the newest `rejections_per_source` per source (unknown names share one
        bucket). Under a flood, records beyond a bounded buffer are dropped, never queued."""

    async def list_rejections(
        self, *, source: str | None = None, code: str | None = None, limit: int = 100
    ) -> list[Rejection]:
        """Recorded rejections, newest first."""
        ...

    async def list_deliveries(
        self, *, plugin: str | None = None, status: str | None = None, event_id: int | None = None,
        limit: int = 100, delivery_id: int | None = None,
    ) -> list[DeliveryRecord]:
        """Delivery rows, newest first."""
        ...

    async def list_events(self, query: EventQuery | None = None, **filters: Any) -> list[StoredEvent]:
        """Stored events matching `query` (or an EventQuery built from `filters`).
        Keyset-paginated on id: a page never skips or repeats while new events arrive."""
        ...

    async def get_event(self, event_id: int) -> EventDetail | None:
        """One event with its raw request body and the headers kept."""
        ...

    async def event_stats(self, since: float | None, until: float | None) -> list[tuple[str, str, str, int]]:
        """(source, event type, status, count) of events received in [since, until)."""
        ...

    async def retry_delivery(self, delivery_id: int) -> bool:
        """Make one delivery pending again, due now. False if there is no such delivery."""
        ...


def open_store(config: StoreConfig, *, readonly: bool = False) -> Store:
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(
        config.path,
        synchronous=config.synchronous,
        busy_timeout_ms=config.busy_timeout_ms,
        readonly=readonly,
        rejections_per_source=config.rejections_per_source,
    )
