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
    "header_too_large": (431, "Request header too large"),
    "request_timeout": (408, "Request timeout"),
    "rate_limited": (429, "Too many requests"),
    "overloaded": (503, "Overloaded"),
    "store_unavailable": (503, "Store unavailable"),
    "internal_error": (500, "Internal error"),
    # the read API
    "unauthorized": (401, "Authentication required"),
    "invalid_token": (401, "Invalid token"),
    "token_expired": (401, "Token expired"),
    "insufficient_scope": (403, "Insufficient scope"),
    "invalid_client": (401, "Invalid client"),
    "invalid_request": (400, "Invalid request"),
    "unsupported_grant_type": (400, "Unsupported grant type"),
    "invalid_scope": (400, "Invalid scope"),
    "invalid_cursor": (400, "Invalid cursor"),
    "invalid_parameter": (400, "Invalid parameter"),
}


class GatewayError(Exception):
    """An error with a stable `code`; its HTTP status and title come from `CODES`.
    `retry_after` (seconds) becomes a Retry-After header: the sender should try again."""

    def __init__(self, code: str, detail: str, status: int | None = None, *, retry_after: int | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self._status = status
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return self._status or CODES[self.code][0]


class Rejected(GatewayError):
    """A request that failed authentication; raised only by verifiers."""


class StoreUnavailable(GatewayError):
    """The store could not durably commit; the sender should retry."""

    def __init__(self, detail: str = "the event store cannot commit right now; retry later") -> None:
        super().__init__("store_unavailable", detail, retry_after=5)


def problem_body(code: str, detail: str, request_id: str, status: int | None = None) -> bytes:
    default_status, title = CODES[code]
    status = status or default_status
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
