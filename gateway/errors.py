"""Domain errors and their one mapping to RFC 9457 problem+json responses."""

from __future__ import annotations

from typing import Final

import orjson

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

# code -> (HTTP status, title)
CODES: Final[dict[str, tuple[int, str]]] = {
    "unknown_source": (404, "Unknown source"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "ip_denied": (403, "Address not allowed"),
    "missing_signature": (401, "Missing signature"),
    "malformed_signature": (401, "Malformed signature"),
    "bad_signature": (401, "Bad signature"),
    "stale_timestamp": (401, "Stale timestamp"),
    "future_timestamp": (401, "Timestamp in the future"),
    "payload_too_large": (413, "Payload too large"),
    "store_unavailable": (503, "Store unavailable"),
    "internal_error": (500, "Internal error"),
}


class GatewayError(Exception):
    """An error with a stable `code`; its HTTP status and title come from `CODES`."""

    def __init__(self, code: str, detail: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def status(self) -> int:
        return CODES[self.code][0]


class Rejected(GatewayError):
    """A request that failed authentication; raised only by verifiers."""


class StoreUnavailable(GatewayError):
    """The store could not durably commit; the sender should retry."""

    def __init__(self, detail: str = "the event store cannot commit right now; retry later") -> None:
        super().__init__("store_unavailable", detail)


def problem_body(code: str, detail: str, request_id: str) -> bytes:
    status, title = CODES[code]
    return orjson.dumps(
        {
            "type": f"urn:webhook-gateway:problem:{code}",
            "title": title,
            "status": status,
            "detail": detail,
            "code": code,
            "request_id": request_id,
        }
    )
