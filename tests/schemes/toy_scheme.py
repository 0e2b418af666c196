"""A fourth sender scheme, defined outside gateway/ to show that adding one needs no edit there.

"Toy" senders put a static token in `X-Toy-Token` and name the event type in a body field that
each source chooses (`type_field`, a key only this scheme takes).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import orjson

from gateway.config import SourceConfig
from gateway.errors import Rejected
from gateway.model import ParsedEvent, Verified
from gateway.schemes import Option, Scheme, SchemeSpec, SecretRule
from gateway.schemes._base import event, first_at, load_json, matches_any, quarantined, require_header

TOKEN_HEADER = "X-Toy-Token"
OPTIONS = {"type_field": Option(str, "kind")}


def verify(body: bytes, headers: Mapping[str, str], now: float, source: SourceConfig) -> Verified:
    token = require_header(headers, (TOKEN_HEADER,)).strip().encode("latin-1")
    if not matches_any((s.key for s in source.secrets), token):
        raise Rejected("bad_signature", f"{TOKEN_HEADER} matches no configured token")
    return Verified(events=(identify(body, source, False),))


def identify(body: bytes, source: SourceConfig, member: bool) -> ParsedEvent:
    obj, reason = load_json(body)
    if reason is not None:
        return quarantined(body, reason)
    event_type = obj.get(source.options.get("type_field", "kind"))
    if not isinstance(event_type, str):
        return quarantined(body, "no event type")
    toy = first_at(obj, ("id",))
    return event(event_type, obj, body, identity=None if toy is None else (toy,), entity=None, ignore=(),
                 account=None, symbol=None)


def sign(body: bytes, source: SourceConfig, now: float) -> dict[str, str]:
    return {"Content-Type": "application/json", TOKEN_HEADER: source.secrets[0].reveal()}


def sample(event_type: str) -> bytes:
    return orjson.dumps({"id": secrets.token_hex(4), "kind": event_type})


scheme: Scheme = SchemeSpec(
    name="toy",
    event_types=("toy.made", "toy.broken"),
    verify=verify,
    identify=identify,
    sign=sign,
    sample=sample,
    new_secret=lambda: secrets.token_urlsafe(24),
    secrets=SecretRule(24, why="toy tokens are at least 24 characters"),
    dedup_fields=("id",),
    credential_headers=frozenset({TOKEN_HEADER.lower()}),
    options=OPTIONS,
)


class NotAScheme:
    """Registered by a test to be refused: it has a name and a verifier, and nothing else."""

    name = "broken"

    def verify(self, body: bytes, headers: Mapping[str, str], now: float, source: SourceConfig) -> Verified:
        raise Rejected("bad_signature", "never")


broken = NotAScheme()
