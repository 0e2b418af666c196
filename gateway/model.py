"""The records every layer shares: what a verifier hands the store (authenticated requests
split into events), and the one event record the store hands back to plugins and readers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

EventStatus = Literal["stored", "duplicate", "quarantined"]


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """One authenticated event, parsed but not yet stored.

    `payload` is the event's own JSON when it is one member of a batch; `None` means
    the request body itself is the event. `quarantine_reason` is set when the body is
    authentic but has a shape we cannot read (it is stored, never dropped).
    """

    event_type: str
    entity_id: str
    account: str | None = None
    symbol: str | None = None
    payload: bytes | None = None
    quarantine_reason: str | None = None

    @property
    def status(self) -> EventStatus:
        return "quarantined" if self.quarantine_reason else "stored"


@dataclass(frozen=True, slots=True)
class Verified:
    """The result of a successful verification: the events and what the sender told us."""

    events: tuple[ParsedEvent, ...]
    attempt: int | None = None
    sent_at: float | None = None  # the sender's timestamp, Unix seconds, when it sends one


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one event of a request."""

    id: int
    status: EventStatus
    dedup_key: str


QUARANTINE_TYPE = ""


def _escape(part: str) -> str:
    if "%" in part or ":" in part or "\x00" in part:
        # NUL too: SQLite's JSON functions, which the store's duplicate lookup goes through,
        # cut text at NUL, so a key holding one would never be found again.
        return part.replace("%", "%25").replace(":", "%3A").replace("\x00", "%00")
    return part


def dedup_key(source: str, event_type: str, entity_id: str) -> str:
    """`source:event_type:entity_id`, with `%`, `:` and NUL escaped so keys never collide.

    Quarantined events (no readable type) use `-` as their type.
    """
    if not event_type:
        kind = "-"
    elif event_type == "-":
        kind = "%2D"  # a literal "-" type must not collide with the quarantine marker
    else:
        kind = _escape(event_type)
    return f"{source}:{kind}:{_escape(entity_id)}"


JSON_MAX_DEPTH = 200
"""The deepest nesting an event's JSON may have and still be served as JSON.

orjson reads 1024 levels but writes only 254, and the API, the stream and plugins write an
event's payload inside a few levels of their own (a listing: object, array, event object).
"""
_WRITE_LIMIT = 254


def too_deep(data: bytes, obj: Any) -> bool:
    """Whether `obj`, parsed from `data` by orjson, nests deeper than `JSON_MAX_DEPTH`."""
    # Nesting needs brackets: almost every body has too few to matter, and skips the re-encoding.
    if data.count(b"[") + data.count(b"{") <= JSON_MAX_DEPTH:
        return False
    for _ in range(_WRITE_LIMIT - JSON_MAX_DEPTH):
        obj = [obj]  # orjson measures depth for us: it refuses to write past its limit
    try:
        orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return True
    return False


def load_payload(data: bytes | None) -> Any:
    """A stored event's JSON, parsed; `None` when it is not JSON or cannot be written back out.

    Everything that hands events on (the API, the stream, plugins) serialises the payload with
    orjson: a payload it could read but not write would fail every one of them, so it is handed
    on as `None`, like any unparseable body (the raw bytes still go with it).
    """
    if data is None:
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return None if too_deep(data, obj) else obj


def iso_utc(timestamp: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds and a `Z`, as every JSON view shows times."""
    stamp = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class EventRecord:
    """The fields of a stored event that every view shares (plugins, the API, the stream).

    Attributes:
        id: the gateway's event id, unique and increasing; use it for idempotency.
        source: the source name (`POST /hooks/{source}`).
        scheme: `metacopier`, `pipsync` or `tradrapi`.
        event_type: the sender's type, e.g. `position.opened`; `""` when quarantined.
        entity_id: the deduplication id (position id, trade id, ...).
        dedup_key: `source:event_type:entity_id`.
        status: `stored` or `quarantined`.
        account: the sender's account id, when present.
        symbol: the instrument, when present.
        received_at: Unix time (seconds) the gateway received the request.
        payload: the parsed event (for a TradrAPI batch, this member); None if unparseable.
    """

    id: int
    source: str
    scheme: str
    event_type: str
    entity_id: str
    dedup_key: str
    status: str
    account: str | None
    symbol: str | None
    received_at: float
    payload: Any


def event_json(event: EventRecord, **extra: Any) -> dict[str, Any]:
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


@dataclass(frozen=True, slots=True)
class Event(EventRecord):
    """One stored event, as every plugin receives it (`gateway.plugins.Event`): the fields of
    `EventRecord`, plus:

    Attributes:
        body: the event's own bytes: the raw request body, byte for byte, for a
            single-event request; the member's JSON (keys sorted) for a TradrAPI batch member.
        attempt: this plugin's delivery attempt for this event, starting at 1.
    """

    body: bytes
    attempt: int = 1

    def to_json(self) -> dict[str, Any]:
        """The event as JSON-ready data (without the raw body), as the built-ins send it."""
        return event_json(self)
