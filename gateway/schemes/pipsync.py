"""PipSync: `X-PipSync-Signature: t=<unix>,v1=<hex hmac-sha256 of "t.body">` (Stripe-style).

Several `v1` entries may appear (rotation); unknown keys are ignored. A 13-digit `t` is
read as milliseconds (our reading, see senders.md).
"""

from __future__ import annotations

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
    check_window,
    event,
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
from gateway.schemes.spec import Headers, Scheme, SchemeSpec, SecretRule

EVENT_TYPES = ("trade.opened", "trade.closed", "trade.tp_hit", "trade.sl_hit", "signal.received")
SIGNATURE_HEADER = "X-PipSync-Signature"
# The event's own `id` names one occurrence and stays the same across retries (the Stripe
# construction PipSync's header copies); without it, the entity ids as before.
DEFAULT_ID_PATHS = ("id", "data.position_id", "data.trade_id", "data.signal_id")
DEFAULT_IGNORE: tuple[str, ...] = ()


def parse_header(value: str) -> tuple[str, list[str]]:
    """`(t as sent, [v1 signatures])` from the header; raises `malformed_signature`."""
    timestamp: str | None = None
    signatures: list[str] = []
    for position, item in enumerate(value.split(","), 1):
        key, sep, val = item.strip().partition("=")
        if not sep:
            if item.strip():
                # never quote the part: a misconfigured sender may put the secret itself here
                raise Rejected("malformed_signature", f"X-PipSync-Signature has a part without '=' (part {position}, "
                                                      f"{len(item.strip())} characters); expected t=<unix>,v1=<hex>")
            continue
        key = key.strip()
        if key == "t":
            if timestamp is not None:
                raise Rejected("malformed_signature", "X-PipSync-Signature has more than one t")
            timestamp = val.strip()
        elif key == "v1":
            signatures.append(parse_hex(val, 64, "each v1 in X-PipSync-Signature"))
    if timestamp is None:
        raise Rejected("malformed_signature", "X-PipSync-Signature has no t=<unix timestamp>")
    if not signatures:
        raise Rejected("malformed_signature", "X-PipSync-Signature has no v1=<signature>")
    return timestamp, signatures


def verify(body: bytes, headers: Headers, now: float, source: SourceConfig) -> Verified:
    """Authenticate a PipSync request, then read its one event."""
    timestamp, signatures = parse_header(require_header(headers, (SIGNATURE_HEADER,)))
    t = parse_unix(timestamp, "t in X-PipSync-Signature")
    signed = timestamp.encode("ascii")
    expected = [hmac_sha256_hex(s.key, signed, b".", body) for s in source.secrets]
    if not any(matches_any(expected, given) for given in signatures):
        raise Rejected(
            "bad_signature",
            "no v1 in X-PipSync-Signature matches the body with any configured secret "
            "(signed string: t + '.' + raw body)",
        )
    sent_at = t / 1000 if len(timestamp) == 13 else float(t)
    check_window(sent_at, now, source.tolerance_seconds, "t in X-PipSync-Signature")
    return Verified(events=(parse(body, source),), sent_at=sent_at)


def parse(body: bytes, source: SourceConfig) -> ParsedEvent:
    obj, reason = load_json(body)
    if reason is not None:
        return quarantined(body, reason)
    event_type = first_str(obj, ("type",))
    if event_type is None:
        return quarantined(body, "no event type at type")
    return event(
        event_type, obj, body,
        identity=occurrence(obj, source.dedup_fields, DEFAULT_ID_PATHS, ()),
        entity=_entity(obj),
        ignore=DEFAULT_IGNORE if source.dedup_ignore_fields is None else source.dedup_ignore_fields,
        account=scalar(at_path(obj, "data.account_id")),
        symbol=scalar(at_path(obj, "data.symbol")),
    )


def _entity(obj: Any) -> str | None:
    """What delivery is ordered by: the position a trade event is about, else its trade, its
    account (signals), or nothing (each event on its own)."""
    for path, kind in (("data.position_id", "position"), ("data.trade_id", "trade"),
                       ("data.account_id", "account")):
        value = scalar(at_path(obj, path))
        if value is not None:
            return f"{kind}:{value}"
    return None


# PipSync's trade events (senders.md's reading: the vendor page has no outbound field table).
# A take-profit or stop-loss hit is a close.
KINDS = {"trade.opened": "position.opened", "trade.closed": "position.closed",
         "trade.tp_hit": "position.closed", "trade.sl_hit": "position.closed"}


def normalize(event_type: str, event: Any) -> Normalized | None:
    """`trade.*` with `data.*`: the position is `data.position_id` (else `data.trade_id`, as
    delivery orders them), `lots` the volume, `price` the open or the close price, `created` the
    time. `signal.received` has no trading meaning (it is an instruction, not a fill)."""
    kind = KINDS.get(event_type)
    if kind is None:
        return None
    read = Reader(event)
    position = read.text("data.position_id", "data.trade_id")
    read.require("position_id", position)
    volume = read.number("data.lots", "data.volume", positive=True)
    read.require("volume", volume)
    return Normalized(
        kind="position.opened" if kind == "position.opened" else "position.closed",
        account=read.text("data.account_id"),
        position_id=position,
        symbol=read.text("data.symbol"),
        side=read.side("data.side"),
        volume=volume,
        price=read.number("data.close_price", "data.price") if kind == "position.closed" else read.number("data.price"),
        sl=read.number("data.sl"),
        tp=read.number("data.tp"),
        profit=read.number("data.profit") if kind == "position.closed" else None,
        occurred_at=read.when("created"),
        problems=tuple(read.problems),
    )


def identify(data: bytes, source: SourceConfig, member: bool) -> ParsedEvent:
    """A stored request body read again (this scheme sends one event per request)."""
    return parse(data, source)


def sign(body: bytes, source: SourceConfig, now: float) -> dict[str, str]:
    t = str(int(now))
    sig = hmac_sha256_hex(source.secrets[0].key, t.encode(), b".", body)
    return {"Content-Type": "application/json", "X-PipSync-Signature": f"t={t},v1={sig}"}


def sample(event_type: str, position: str | None = None, volume: float | None = None) -> bytes:
    data: dict[str, object] = {"account_id": "acc_12", "platform": "ctrader", "symbol": "EURUSD"}
    if event_type == "signal.received":
        data |= {"signal_id": f"sig_{_random.token_hex(4)}", "action": "buy", "lots": 0.5}
    else:
        data |= {
            "trade_id": f"tr_{_random.token_hex(4)}",
            "position_id": position or str(_random.randbelow(10**9)),
            "side": "buy",
            "lots": 0.5 if volume is None else volume,
            "price": 1.08512,
            "sl": 1.081,
            "tp": 1.092,
        }
    return orjson.dumps(
        {"id": f"evt_{_random.token_hex(8)}", "type": event_type, "created": int(time.time()),
         "data": data}
    )


def new_secret() -> str:
    return "whsec_" + _random.token_urlsafe(24)


scheme: Scheme = SchemeSpec(
    name="pipsync",
    event_types=EVENT_TYPES,
    verify=verify,
    identify=identify,
    sign=sign,
    sample=sample,
    normalize=normalize,
    new_secret=new_secret,
    secrets=SecretRule(8, why="use the webhook secret PipSync shows"),
    dedup_fields=DEFAULT_ID_PATHS,
)
