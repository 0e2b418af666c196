"""What the per-scheme tests share: a scheme's reference request with helpers that sign, verify
and catch rejections against it, the rejection codes, and JSON strategies for properties."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import strategies as st

from gateway.config import SourceConfig
from gateway.errors import Rejected
from gateway.model import ParsedEvent, Verified

Verify = Callable[[bytes, Mapping[str, str], float, SourceConfig], Verified]

# Every code a verifier may reject with (all 401s).
REJECT_CODES = {"missing_signature", "malformed_signature", "bad_signature", "stale_timestamp",
                "future_timestamp"}

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names lower-cased, as the ASGI server hands them to a verifier."""
    return {k.lower(): v for k, v in headers.items()}


def sha256_id(data: bytes) -> str:
    """The entity id of an event without one: a hash of its bytes."""
    return "sha256-" + hashlib.sha256(data).hexdigest()


def assert_quarantined(event: ParsedEvent, body: bytes, reason: str) -> None:
    """`event` was quarantined with `reason` in its reason: no type, no payload, and the hash of
    `body` for its id."""
    assert event.status == "quarantined"
    assert event.event_type == ""
    assert event.entity_id == sha256_id(body)
    assert event.payload is None
    assert event.quarantine_reason is not None and reason in event.quarantine_reason


@dataclass(frozen=True)
class Reference:
    """One scheme's reference request: its verifier, the clock it was signed at, the source that
    accepts it and, for signing schemes, how to sign a body. Each helper defaults to these."""

    verify: Verify
    body: bytes
    now: float
    source: SourceConfig
    sign: Callable[[bytes, str, Any], dict[str, str]] | None = None  # (body, secret, timestamp)
    secret: str = ""
    timestamp: int = 0
    one_event: bool = False  # the scheme makes exactly one event of any request it accepts

    def signed(self, body: bytes | None = None, secret: str | None = None) -> dict[str, str]:
        """The credential headers for `body` (default: the reference body), lower-cased."""
        assert self.sign is not None, "this scheme signs nothing"
        return lower(self.sign(self.body if body is None else body, secret or self.secret, self.timestamp))

    def verify_signed(self, body: bytes, source: SourceConfig | None = None) -> Verified:
        """`body` verified with its own correct signature."""
        return self.verify(body, self.signed(body), self.now, source or self.source)

    def rejected(self, body: bytes, headers: dict[str, str], now: float | None = None,
                 source: SourceConfig | None = None) -> Rejected:
        """The rejection of this request; fails the test if the request verifies."""
        with pytest.raises(Rejected) as info:
            self.verify(body, headers, self.now if now is None else now, source or self.source)
        return info.value

    def outcome(self, body: bytes, headers: dict[str, str], now: float | None = None,
                source: SourceConfig | None = None) -> Verified | None:
        """`Verified`, or `None` after a rejection with one of REJECT_CODES; anything else fails."""
        try:
            verified = self.verify(body, headers, self.now if now is None else now, source or self.source)
        except Rejected as exc:
            assert exc.code in REJECT_CODES
            return None
        assert isinstance(verified, Verified)
        if self.one_event:
            assert len(verified.events) == 1
        return verified
