"""TradrAPI: `x-webhook-secret` is the lower-case hex SHA-1 of the shared key.

It is a static credential: no body signature and no timestamp, so deduplication is the
only replay defence. Bodies are batches under `payload` (or one event at the root); a
batch is stored atomically, each member deduplicated on its own.
"""

from __future__ import annotations

import hashlib
import secrets as _random
import time
from typing import Any

import orjson

from gateway.config import SourceConfig
from gateway.errors import Rejected
from gateway.model import ParsedEvent, Verified
from gateway.normalized import Normalized, Reader
from gateway.schemes._base import (
    at_path,
    event,
    first_at,
    has_wide_int,
    load_json,
    matches_any,
    occurrence,
    parse_hex,
    quarantined,
    require_header,
    scalar,
)
from gateway.schemes.spec import Headers, Scheme, SchemeSpec, SecretRule

EVENT_TYPES = (
    "open_position", "close_position", "open_order", "cancel_order", "balance_operation",
    "account_created", "account_updated", "challenge_created", "challenge_updated",
)
SECRET_HEADER = "x-webhook-secret"
DEFAULT_ID_PATHS = ("payload.id",)
# What tells two occurrences of one entity apart, by event type, first present wins: the
# platform's operation (deal) id, else the event's own time; updates by their update time.
OCCURRENCE = {
    "open_position": ("payload.platformOperationId", "payload.openedAt"),
    "close_position": ("payload.platformOperationId", "payload.closedAt"),
    "open_order": ("payload.platformOperationId", "payload.placedAt"),
    "cancel_order": ("payload.platformOperationId", "payload.cancelledAt"),
    "balance_operation": ("payload.platformOperationId", "payload.createdAt"),
    "account_created": ("payload.createdAt",),
    "account_updated": ("payload.updatedAt",),
    "challenge_created": ("payload.createdAt",),
    "challenge_updated": ("payload.updatedAt",),
}
OTHER_OCCURRENCE = ("payload.updatedAt", "payload.platformOperationId", "payload.createdAt")
# Batch members are compared without the batch envelope, where `attempts` sits.
DEFAULT_IGNORE: tuple[str, ...] = ()
POSITION_EVENTS = ("open_position", "close_position")
ORDER_EVENTS = ("open_order", "cancel_order")


def sha1_hex(key: bytes) -> str:
    """What TradrAPI sends for a key: computed once per secret at load (`Secret.derive`)."""
    return hashlib.sha1(key, usedforsecurity=False).hexdigest()


def verify(body: bytes, headers: Headers, now: float, source: SourceConfig) -> Verified:
    """Authenticate a TradrAPI request, then split its batch into events."""
    given = require_header(headers, (SECRET_HEADER,)).strip()
    if len(given) != 40 or any(c not in "0123456789abcdefABCDEF" for c in given):
        raise Rejected(
            "malformed_signature",
            "x-webhook-secret must be the 40-character hex SHA-1 of the shared key "
            f"(got {len(given)} characters); TradrAPI never sends the key itself",
        )
    given = parse_hex(given, 40, "x-webhook-secret")
    if not matches_any((s.derive(sha1_hex) for s in source.secrets), given):
        raise Rejected("bad_signature", "x-webhook-secret is the SHA-1 of no configured key")
    return parse(body, source)


def _canonical(member: Any) -> bytes:
    return orjson.dumps(member, option=orjson.OPT_SORT_KEYS)


def _member(member: Any, source: SourceConfig, payload: bytes | None) -> ParsedEvent:
    data = payload if payload is not None else _canonical(member)
    if not isinstance(member, dict):
        return quarantined(data, f"batch member is JSON {type(member).__name__}, not an object", data)
    event_type = member.get("eventType")
    if not isinstance(event_type, str) or not event_type.strip():
        return quarantined(data, "batch member has no eventType", payload)
    return event(
        event_type, member, None,  # `parse` quarantined any body with an integer beyond 64 bits
        identity=occurrence(member, source.dedup_fields, DEFAULT_ID_PATHS,
                            OCCURRENCE.get(event_type, OTHER_OCCURRENCE)),
        entity=_entity(event_type, member),
        ignore=DEFAULT_IGNORE if source.dedup_ignore_fields is None else source.dedup_ignore_fields,
        account=scalar(member.get("accountId")) or scalar(member.get("exchangeAccountId")),
        symbol=scalar(at_path(member, "payload.symbol")),
        payload=payload,
    )


def _entity(event_type: str, member: dict[str, Any]) -> str | None:
    """What delivery is ordered by. A position is the platform's trade (`platformTradeId`, the
    same ticket on its open and its close), else `payload.id`; an order is `payload.id`; every
    other event (account, challenge, balance) is about the root account."""
    if event_type in POSITION_EVENTS:
        position = first_at(member, ("payload.platformTradeId", "payload.id"))
        return None if position is None else f"position:{position}"
    if event_type in ORDER_EVENTS:
        order = first_at(member, ("payload.id",))
        return None if order is None else f"order:{order}"
    paths = ("accountId", "exchangeAccountId") + (("payload.id",) if event_type.startswith("account_") else ())
    account = first_at(member, paths)
    return None if account is None else f"account:{account}"


def parse(body: bytes, source: SourceConfig) -> Verified:
    obj, reason = load_json(body)
    if reason is not None:
        return Verified(events=(quarantined(body, reason),))
    attempts = obj.get("attempts")
    # A counter, as MetaCopier's header: fewer than 10 digits (the store keeps signed 64-bit integers).
    counter = isinstance(attempts, int) and not isinstance(attempts, bool) and 0 <= attempts < 10**9
    attempt = attempts if counter else None
    if has_wide_int(body):
        # Members are stored (and their ids hashed) as JSON written back from the parsed body,
        # which would round such an integer: keep the body whole, exactly as sent.
        reason = "an integer beyond 64 bits, which splitting the batch would round"
        return Verified(events=(quarantined(body, reason),), attempt=attempt)
    batch = obj.get("payload")
    # load_json refused bodies nested too deeply to write back, so canonical JSON cannot fail.
    if isinstance(batch, list):
        # Members are stored as their own canonical JSON; the raw body is kept beside them.
        events = tuple(_member(m, source, _canonical(m)) for m in batch)
        return Verified(events=events, attempt=attempt)
    if "eventType" in obj:
        # A root event carries the batch's delivery counter itself: left out of what names and
        # compares the event, else a retry would be a conflict (or, unnamed, a second event).
        root = {k: v for k, v in obj.items() if k != "attempts"}
        return Verified(events=(_member(root, source, None),), attempt=attempt)
    reason = "no payload array and no eventType at the root"
    return Verified(events=(quarantined(body, reason),), attempt=attempt)


# The event interfaces of TradrAPI's page: which kind, and where the sender's time is.
# Challenges (the PROP API's own shapes) have no trading meaning here.
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "open_position": ("position.opened", ("payload.openedAt",)),
    "close_position": ("position.closed", ("payload.closedAt",)),
    "open_order": ("order.placed", ("payload.placedAt",)),
    "cancel_order": ("order.cancelled", ("payload.cancelledAt",)),
    "balance_operation": ("balance.operation", ("payload.createdAt",)),
    "account_created": ("account.created", ("payload.createdAt",)),
    "account_updated": ("account.updated", ("payload.updatedAt", "payload.createdAt")),
}


def normalize(event_type: str, event: Any) -> Normalized | None:
    """One batch member (`{brandId, serverId, accountId?, eventType, platform, payload}`) by the
    page's interfaces: PositionOpenEvent, PositionClosedEvent, OrderOpenEvent,
    OrderCancelledEvent, BalanceTransactionPayload, AccountCreatedEvent/AccountUpdatedEvent.
    The position is `platformTradeId` (the same ticket on its open and its close), else `id`."""
    found = KINDS.get(event_type)
    if found is None:
        return None
    kind, when = found
    read = Reader(event)
    account = read.text("accountId", "exchangeAccountId", *(("payload.id",) if kind.startswith("account") else ()))
    fields: dict[str, Any] = {"account": account, "occurred_at": read.when(*when)}
    if kind.startswith("position") or kind.startswith("order"):
        fields |= {"symbol": read.text("payload.symbol"), "side": read.side("payload.type"),
                   "volume": read.number("payload.lots", positive=True), "sl": read.number("payload.stopLoss"),
                   "tp": read.number("payload.takeProfit")}
        read.require("volume", fields["volume"])
    if kind.startswith("position"):
        fields["position_id"] = read.text("payload.platformTradeId", "payload.id")
        read.require("position_id", fields["position_id"])
        closed = kind == "position.closed"
        fields["price"] = read.number("payload.closePrice" if closed else "payload.openPrice")
        if closed:
            fields["profit"] = read.number("payload.profit")
    elif kind.startswith("order"):
        fields |= {"order_id": read.text("payload.id"), "price": read.number("payload.openPrice")}
        read.require("order_id", fields["order_id"])
    elif kind == "balance.operation":
        fields |= {"amount": read.number("payload.amount"), "currency": read.text("payload.currency"),
                   "operation": read.text("payload.operation")}
        read.require("amount", fields["amount"])
    else:
        fields["currency"] = read.text("payload.currency")
    read.require("account", account)
    return Normalized(kind=kind, problems=tuple(read.problems), **fields)  # type: ignore[arg-type]


def identify(data: bytes, source: SourceConfig, member: bool) -> ParsedEvent:
    """A stored event read again: a batch member from its own JSON (as `parse` wrote it), else
    the one event of a body stored whole (a root event, or a body quarantined whole)."""
    if member:
        return _member(orjson.loads(data), source, data)
    events = parse(data, source).events
    return events[0] if len(events) == 1 else quarantined(data, "not one event")


def sign(body: bytes, source: SourceConfig, now: float) -> dict[str, str]:
    return {"Content-Type": "application/json", "x-webhook-secret": source.secrets[0].derive(sha1_hex)}


def sample(event_type: str, count: int = 1, position: str | None = None, volume: float | None = None) -> bytes:
    def event() -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        payload: dict[str, Any] = {
            "id": _random.randbelow(10**9),
            "platformOperationId": f"op-{_random.token_hex(4)}",
            "symbol": "EURUSD",
        }
        if event_type in ("open_position", "close_position"):
            payload |= {"platformTradeId": position or f"t-{_random.token_hex(4)}", "openPrice": 1.0851,
                        "lots": 1 if volume is None else volume, "type": "BUY", "balance": 10000, "openedAt": now_ms}
            if event_type == "close_position":
                payload |= {"closePrice": 1.0871, "profit": 200.0, "closedAt": now_ms}
        elif event_type == "balance_operation":
            payload |= {"referenceId": f"ref-{_random.token_hex(4)}", "amount": 500,
                        "currency": "USD", "operation": "add", "balance": 10500}
        elif event_type.startswith("account_"):
            payload = {"id": _random.randbelow(10**6), "platform": "MT5", "currency": "USD",
                       "leverage": 100, "email": "trader@example.com", "createdAt": now_ms}
            if event_type == "account_updated":
                payload["updatedAt"] = now_ms
        return {"brandId": 12, "serverId": 3, "accountId": 99121, "eventType": event_type,
                "platform": "MT5", "payload": payload}

    return orjson.dumps({"payload": [event() for _ in range(count)], "count": count, "attempts": 1})


def new_secret() -> str:
    return _random.token_urlsafe(30)  # 40 characters


scheme: Scheme = SchemeSpec(
    name="tradrapi",
    event_types=EVENT_TYPES,
    verify=verify,
    identify=identify,
    sign=sign,
    sample=sample,
    normalize=normalize,
    new_secret=new_secret,
    secrets=SecretRule(20, 140, "TradrAPI keys are 20 to 140 characters"),
    dedup_fields=DEFAULT_ID_PATHS,
    credential_headers=frozenset({SECRET_HEADER}),  # the key's hash: a static credential
    secret_form=sha1_hex,
)
