"""MetaCopier: HMAC-SHA256 hex over `timestamp.body` (or the body), bearer token, or none.

See shared/docs/senders.md. The timestamp header is in milliseconds.
"""

from __future__ import annotations

import re
import secrets as _random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.config import SourceConfig
from gateway.errors import Rejected
from gateway.model import ParsedEvent, Verified
from gateway.normalized import Normalized, Reader
from gateway.schemes._base import (
    at_path,
    check_window,
    event,
    first_at,
    first_str,
    hmac_sha256_hex,
    load_json,
    matches_any,
    occurrence,
    parse_hex,
    parse_unix,
    quarantined,
    require_header,
    scalar,
)
from gateway.schemes.spec import Headers, Option, Problems, Scheme, SchemeSpec, SecretRule

EVENT_TYPES = ("position.opened", "position.closed", "history.updated")
SIGNATURE_HEADERS = ("X-MetaCopier-Signature", "X-Webhook-Signature")
TIMESTAMP_HEADER = "x-metacopier-timestamp"
ATTEMPT_HEADER = "x-metacopier-delivery-attempt"
DEFAULT_ID_PATHS = ("position.id", "ticket")
# `<digits>.` opening a body sent without a timestamp: a timestamped request (signed over
# `<ts>.<body>`) replayed with its timestamp moved into the body. No JSON object starts so.
MOVED_TIMESTAMP = re.compile(rb"[0-9]+\.")
# MetaCopier: "use the position id and timestamp to deduplicate". The event's own time tells two
# occurrences of one position apart (an MT5 partial close keeps the position id).
OCCURRENCE_TIME = {
    "position.opened": ("position.openTime", "openTime"),
    "position.closed": ("position.closeTime", "closeTime"),
}
# The root timestamp may be stamped per delivery; the identity already holds the position's times.
DEFAULT_IGNORE = ("timestamp",)
OPTIONS = {
    "auth": Option(str, "hmac", ("hmac", "bearer", "none")),
    "require_timestamp": Option(bool, True),
}
# The minimum MetaCopier itself enforces for HMAC secrets; None: `auth = "none"` takes no secret.
SECRET_RULES = {
    "hmac": SecretRule(32, why="MetaCopier requires HMAC secrets of at least 32 characters"),
    "bearer": SecretRule(16, why="use a bearer token of at least 16 characters"),
    "none": None,
}


def _option(source: SourceConfig, name: str) -> Any:
    return source.options.get(name, OPTIONS[name].default)


def secret_rule(options: Mapping[str, Any]) -> SecretRule | None:
    return SECRET_RULES.get(options.get("auth", "hmac"))


def check(source: SourceConfig) -> Problems:
    if _option(source, "auth") == "none":
        if source.secrets:
            yield "secrets", 'auth = "none" takes no secrets'
        if not source.allow_ips:
            yield "auth", 'auth = "none" is refused unless allow_ips limits who may send'


def _check_hmac(body: bytes, headers: Headers, now: float, source: SourceConfig) -> float | None:
    given = require_header(headers, SIGNATURE_HEADERS).strip()
    if given[:7].lower() == "sha256=":
        given = given[7:]
    given = parse_hex(given, 64, "X-MetaCopier-Signature")
    raw_ts = headers.get(TIMESTAMP_HEADER)
    if raw_ts is None:
        if _option(source, "require_timestamp"):
            raise Rejected(
                "missing_signature",
                "the X-MetaCopier-Timestamp header is missing; enable 'Include timestamp in "
                "signature' at MetaCopier or set require_timestamp = false for this source",
            )
        if MOVED_TIMESTAMP.match(body):
            raise Rejected(
                "bad_signature",
                "a body that starts with digits and '.' is refused without X-MetaCopier-Timestamp: "
                "that is a timestamped request replayed with its timestamp moved into the body",
            )
        expected = (hmac_sha256_hex(s.key, body) for s in source.secrets)
        sent_at = None
    else:
        ts_ms = parse_unix(raw_ts, "X-MetaCopier-Timestamp")
        ts = raw_ts.strip().encode("ascii")
        expected = (hmac_sha256_hex(s.key, ts, b".", body) for s in source.secrets)
        sent_at = ts_ms / 1000
    if not matches_any(expected, given):
        raise Rejected(
            "bad_signature",
            "X-MetaCopier-Signature does not match the body with any configured secret"
            + ("" if raw_ts is None else " (signed string: timestamp + '.' + raw body)"),
        )
    if sent_at is not None:
        hint = " (X-MetaCopier-Timestamp is in milliseconds)" if ts_ms < 10**12 else ""
        check_window(sent_at, now, source.tolerance_seconds, "X-MetaCopier-Timestamp" + hint)
    return sent_at


def _check_bearer(headers: Headers, source: SourceConfig) -> None:
    value = require_header(headers, ("Authorization",))
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Rejected("malformed_signature", "Authorization must be 'Bearer <token>'")
    try:
        candidate = token.encode("latin-1")  # the header's own bytes, as the sender sent them
    except UnicodeEncodeError:
        raise Rejected("malformed_signature", "the bearer token is not Latin-1 text") from None
    if not matches_any((s.key for s in source.secrets), candidate):
        raise Rejected("bad_signature", "the bearer token matches no configured secret")


def _attempt(headers: Headers) -> int | None:
    value = headers.get(ATTEMPT_HEADER, "").strip()
    # isdigit() alone would accept '²' (a Latin-1 byte), which int() refuses
    return int(value) if value.isascii() and value.isdigit() and len(value) < 10 else None


def verify(body: bytes, headers: Headers, now: float, source: SourceConfig) -> Verified:
    """Authenticate a MetaCopier request, then read its one event."""
    sent_at = None
    auth = _option(source, "auth")
    if auth == "hmac":
        sent_at = _check_hmac(body, headers, now, source)
    elif auth == "bearer":
        _check_bearer(headers, source)
    return Verified(events=(parse(body, source),), attempt=_attempt(headers), sent_at=sent_at)


def parse(body: bytes, source: SourceConfig) -> ParsedEvent:
    obj, reason = load_json(body)
    if reason is not None:
        return quarantined(body, reason)
    event_type = first_str(obj, ("type", "event", "eventType"))
    if event_type is None:
        return quarantined(body, "no event type at type, event or eventType")
    position = first_at(obj, DEFAULT_ID_PATHS)
    account = scalar(obj.get("accountId"))
    return event(
        event_type, obj, body,
        identity=occurrence(obj, source.dedup_fields, DEFAULT_ID_PATHS, OCCURRENCE_TIME.get(event_type, ())),
        entity=f"position:{position}" if position else f"account:{account}" if account else None,
        ignore=DEFAULT_IGNORE if source.dedup_ignore_fields is None else source.dedup_ignore_fields,
        account=account,
        symbol=scalar(at_path(obj, "position.symbol")) or scalar(obj.get("symbol")),
    )


def normalize(event_type: str, event: Any) -> Normalized | None:
    """`position.opened` and `position.closed` with the position fields table (the vendor's page);
    `history.updated` has no trading meaning. The close carries the volume it closes."""
    if event_type not in ("position.opened", "position.closed"):
        return None
    read = Reader(event)
    opened = event_type == "position.opened"
    position = read.text("position.id", "ticket")
    read.require("position_id", position)
    volume = read.number("position.volume", positive=True)
    read.require("volume", volume)
    return Normalized(
        kind="position.opened" if opened else "position.closed",
        account=read.text("accountId"),
        position_id=position,
        symbol=read.text("position.symbol", "symbol"),
        side=read.side("position.orderType", "orderType"),
        volume=volume,
        price=read.number("position.openPrice" if opened else "position.closePrice"),
        sl=read.number("position.stopLoss"),
        tp=read.number("position.takeProfit"),
        profit=None if opened else read.number("position.profit"),
        occurred_at=read.when(*(("position.openTime", "openTime") if opened else ("position.closeTime", "closeTime")),
                              "timestamp"),
        problems=tuple(read.problems),
    )


def identify(data: bytes, source: SourceConfig, member: bool) -> ParsedEvent:
    """A stored request body read again (this scheme sends one event per request)."""
    return parse(data, source)


def sign(body: bytes, source: SourceConfig, now: float) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-MetaCopier-Delivery-Attempt": "1"}
    auth = _option(source, "auth")
    if auth == "hmac":
        ts = str(int(now * 1000))
        sig = hmac_sha256_hex(source.secrets[0].key, ts.encode(), b".", body)
        headers |= {"X-MetaCopier-Timestamp": ts, "X-MetaCopier-Signature": sig}
    elif auth == "bearer":
        headers["Authorization"] = f"Bearer {source.secrets[0].reveal()}"
    return headers


def sample(event_type: str, position: str | None = None, volume: float | None = None) -> bytes:
    now = datetime.now(UTC)
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body: dict[str, object] = {
        "type": event_type,
        "timestamp": stamp,
        "accountId": "6f1c2d7e-5b0a-4c1e-9a53-2f7c8f0b9d11",
    }
    if event_type != "history.updated":
        details: dict[str, object] = {
            "id": position or str(_random.randbelow(10**9)),
            "symbol": "EURUSD",
            "orderType": "Buy",
            "volume": 0.5 if volume is None else volume,
            "openPrice": 1.08512,
            "stopLoss": 1.081,
            "takeProfit": 1.092,
            "openTime": stamp,
            "magicNumber": "7001",
        }
        if event_type == "position.closed":
            details |= {"closePrice": 1.0871, "closeTime": stamp, "profit": 99.0,
                        "netProfit": 96.5, "swap": -0.5, "commission": -2.0}
        body["position"] = details
    return orjson.dumps(body)


def new_secret() -> str:
    return _random.token_urlsafe(36)  # 48 characters


scheme: Scheme = SchemeSpec(
    name="metacopier",
    event_types=EVENT_TYPES,
    verify=verify,
    identify=identify,
    sign=sign,
    sample=sample,
    normalize=normalize,
    new_secret=new_secret,
    secrets=secret_rule,
    dedup_fields=DEFAULT_ID_PATHS,
    credential_headers=frozenset({"authorization"}),  # the bearer token
    options=OPTIONS,
    check=check,
)
