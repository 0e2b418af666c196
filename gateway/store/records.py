"""The records a store takes and hands back. Plain frozen data: no backend in sight."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.model import Event, EventRecord, ParsedEvent, event_json, iso_utc


@dataclass(slots=True)  # made per request: not frozen, for speed (see gateway/model.py)
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
    sent_at: float | None = None  # the sender's own timestamp, when its scheme signs one
    arrived: float | None = None  # time.monotonic() at receipt: the latency kept is measured on it


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters for listing events. `event_type` is a glob; times are Unix seconds.
    `after` continues a listing past the event with that id, in the listing's order."""

    source: str | None = None
    scheme: str | None = None
    event_type: str | None = None
    account: str | None = None
    symbol: str | None = None
    entity: str | None = None  # exact: `position:88412231`, `account:...`
    status: str | None = None
    since: float | None = None
    until: float | None = None
    newest_first: bool = True
    after: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class StoredEvent(EventRecord):
    """An event as read back from the store, with what is known of its request.
    `attempt` is the sender's own delivery attempt counter, when it sends one."""

    request_id: str
    attempt: int | None
    remote_addr: str | None
    quarantine_reason: str | None

    def to_json(self) -> dict[str, Any]:
        """The public shape of an event (`gateway events --json`, the API, the stream), with its
        trading meaning (`normalized`, docs/ledger.md; null for an event without one)."""
        from gateway.normalized import normalize

        normalized = normalize(self)
        return event_json(self, request_id=self.request_id, attempt=self.attempt,
                          remote_addr=self.remote_addr, quarantine_reason=self.quarantine_reason,
                          normalized=None if normalized is None else normalized.to_json())


@dataclass(frozen=True, slots=True)
class EventDetail:
    event: StoredEvent
    body: bytes
    headers: list[tuple[str, str]]


DeliveryStatus = Literal["pending", "delivered", "dead"]


@dataclass(frozen=True, slots=True)
class Claim:
    """A due delivery handed to one plugin runner until `lease_until` (Unix seconds).

    While the lease holds, nobody else is handed this delivery nor any later one of the same
    (plugin, source, entity id). `claim_id` must come back with the outcome: once the lease
    expired and someone else claimed the delivery, the old holder's outcome is refused.
    """

    delivery_id: int
    claim_id: int
    plugin: str
    event: Event  # `event.attempt` is this attempt's number, starting at 1
    lease_until: float

    @property
    def attempt(self) -> int:
        return self.event.attempt


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one delivery attempt ended. `status` "pending" means retry at `next_attempt_at`."""

    id: int
    claim_id: int
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


CommitListener = Callable[[frozenset[str] | None], None]
"""Called after a commit that made deliveries due (new events routed, a replay, a retry),
with the names of the plugins concerned; None after a commit by another process or connection
on the same store, which may concern any plugin."""

EventListener = Callable[[int], None]
"""Called with the newest event id after a commit that stored events (this process's, or
another's on the same store)."""


Reidentify = Callable[[str, str, bytes, bool], ParsedEvent | None]
"""(source, scheme, the event's bytes, whether they are a batch member's JSON) -> the event read
again by its scheme, or None when that scheme is not registered (`Store.reidentify`)."""
