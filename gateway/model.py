"""The records every layer shares: what a verifier hands the store (authenticated requests
split into events), and the one event record the store hands back to plugins and readers."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

EventStatus = Literal["stored", "duplicate", "quarantined", "conflict"]
STORED_STATUSES = ("stored", "quarantined", "conflict")
"""What a stored event's status can be (`duplicate` is only an answer: nothing is stored)."""

Identity = tuple[str, ...] | bytes
"""What names one occurrence: its id parts, or (nothing naming it) its content digest."""


# The records made per event and per request on the hot path are plain slotted dataclasses,
# treated as immutable but not `frozen`: a frozen one's __init__ costs 3.5x as much (443 ns
# against 125 ns for four fields, measured), paid per batch member.
@dataclass(slots=True)
class ParsedEvent:
    """One authenticated event, parsed but not yet stored.

    `identity` names this one real-world occurrence (the dedup identity, after source and
    event type): the same across the sender's retries, different between two occurrences.
    Its id parts, or the content digest where nothing else names it; empty means the entity
    id alone. `entity_id` is the business entity the event is about
    (a position, an account, an order): delivery to plugins is ordered per entity.
    `fingerprint` is a digest of the event's canonical content: an event whose identity is
    stored with another fingerprint is a `conflict`, kept beside the first version. Empty
    means "no content to compare": the identity alone decides.

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
    identity: Identity = ()
    fingerprint: bytes = b""
    # The event's parsed JSON, for the plugins' `where` filters (gateway/routing.py); not stored.
    document: Any = None

    @property
    def status(self) -> EventStatus:
        return "quarantined" if self.quarantine_reason else "stored"

    @property
    def named_by(self) -> Identity:
        """The identity, or the entity id alone where none was given."""
        return self.identity or (self.entity_id,)


@dataclass(slots=True)
class Verified:
    """The result of a successful verification: the events and what the sender told us."""

    events: tuple[ParsedEvent, ...]
    attempt: int | None = None
    sent_at: float | None = None  # the sender's timestamp, Unix seconds, when it sends one


@dataclass(slots=True)
class Outcome:
    """What happened to one event of a request."""

    id: int
    status: EventStatus
    dedup_key: str
    conflicts_with: int | None = None  # a `conflict`: the id of the first stored version


QUARANTINE_TYPE = ""
_ESCAPES = {"%": "%25", ":": "%3A", "@": "%40", "#": "%23", "\x00": "%00"}
_TYPE_ESCAPES = ("%", ":", "\x00")
_PART_ESCAPES = ("%", "@", "#", "\x00")


# One search tells whether a joined identity needs escaping: nearly none does (the hot path).
_PART_SPECIAL = re.compile("[%#\x00]")  # and "@", counted apart: it also joins the parts


def _escape(part: str, special: tuple[str, ...]) -> str:
    # NUL too: SQLite's JSON functions, which the store's duplicate lookup goes through,
    # cut text at NUL, so a key holding one would never be found again.
    for char in special:
        if char in part:
            part = part.replace(char, _ESCAPES[char])
    return part


@functools.lru_cache(maxsize=4096)
def _prefix(source: str, event_type: str) -> str:
    """`source:event_type:`, escaped: few distinct pairs, so computed once each."""
    if not event_type:
        kind = "-"
    elif event_type == "-":
        kind = "%2D"  # a literal "-" type must not collide with the quarantine marker
    else:
        kind = _escape(event_type, _TYPE_ESCAPES)
    return f"{_escape(source, _TYPE_ESCAPES)}:{kind}:"


def dedup_key(source: str, event_type: str, identity: Identity) -> str:
    """`source:event_type:part@part...`, or `source:event_type:#sha256-<hex>` for an event
    named by its content: one occurrence as one string.

    Injective: `%`, `:` and NUL are escaped in the source and type, `%`, `@`, `#` and NUL in
    each identity part, so two different identities never give the same key (`decode_key`
    reads every key back; a property test checks it). `:` may stand in a part (times as sent):
    a key splits at its first two `:` only. Quarantined events (no readable type) use `-`.
    """
    if type(identity) is tuple and len(identity) == 1:  # the common case: one id
        named = _escape(identity[0], _PART_ESCAPES)
    elif type(identity) is tuple and identity:
        named = "@".join(identity)
        # a part holding "@" (more of them than separators) or another special character
        if named.count("@") >= len(identity) or _PART_SPECIAL.search(named):
            named = "@".join(_escape(part, _PART_ESCAPES) for part in identity)
    elif isinstance(identity, bytes):
        named = "#sha256-" + identity.hex()
    elif isinstance(identity, str):  # a plain string would split into one part per character
        raise TypeError("an identity is a tuple of parts or a digest, not a str")
    else:
        raise ValueError("an identity has at least one part")
    return _prefix(source, event_type) + named


def _unescape(part: str) -> str:
    out, i = [], 0
    while i < len(part):
        if part[i] == "%":
            out.append(chr(int(part[i + 1:i + 3], 16)))
            i += 3
        else:
            out.append(part[i])
            i += 1
    return "".join(out)


def decode_key(key: str) -> tuple[str, str, Identity]:
    """`(source, event_type, identity)` back from a key: `dedup_key`'s inverse."""
    source, kind, named = key.split(":", 2)
    event_type = "" if kind == "-" else _unescape(kind)
    identity: Identity = (bytes.fromhex(named[8:]) if named.startswith("#sha256-")
                          else tuple(_unescape(part) for part in named.split("@")))
    return _unescape(source), event_type, identity


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
        entity_id: the business entity the event is about, which orders delivery:
            `position:<id>`, `account:<id>`, `order:<id>` (`trade:<id>` for a PipSync trade
            without a position id), else the event's own identity.
        dedup_key: the identity of this one occurrence, `source:event_type:part@part...`
            (docs/architecture.md has each scheme's rule).
        status: `stored`, `quarantined`, or `conflict` (the identity was stored already with
            other content: this is a second version, kept beside the first).
        conflicts_with: for a `conflict`, the id of the first stored version; else None.
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
    conflicts_with: int | None
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
        "conflicts_with": event.conflicts_with,
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
        shape: `raw`, or `normalized` for a plugin configured with `shape = "normalized"`.
        normalized: with that shape, the event's trading meaning (`gateway.normalized.Normalized`),
            or None for an event that has none; the JSON then carries it as `normalized`.
    """

    body: bytes
    attempt: int = 1
    shape: Literal["raw", "normalized"] = "raw"
    normalized: Any = None

    def to_json(self) -> dict[str, Any]:
        """The event as JSON-ready data (without the raw body), as the built-ins send it."""
        if self.shape == "normalized":
            return event_json(self, normalized=None if self.normalized is None else self.normalized.to_json())
        return event_json(self)
