"""Domain errors and their one mapping to RFC 9457 problem+json responses.

`problem()` renders an error: its status, the headers it needs (Allow, Retry-After,
WWW-Authenticate) and its body. Every answer with a problem goes through it: `send_problem()` on
the raw ASGI ingest path, `problem_bytes()` for a whole HTTP/1.1 response that the guarded
protocol writes on a transport (gateway/_http.py), and `problem_response()` in
gateway/error_handlers.py for Starlette's routes. This module imports no web framework: the
verifiers and the store raise these errors too.
"""

from __future__ import annotations

import http
from typing import Final

import orjson

from gateway._asgi import Send, send_response

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
_CONTENT_TYPE: Final = PROBLEM_CONTENT_TYPE.encode()

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
    "cross_origin": (403, "Cross-origin request"),
    "invalid_client": (401, "Invalid client"),
    "invalid_request": (400, "Invalid request"),
    "unsupported_grant_type": (400, "Unsupported grant type"),
    "invalid_scope": (400, "Invalid scope"),
    "invalid_cursor": (400, "Invalid cursor"),
    "invalid_parameter": (400, "Invalid parameter"),
    "too_many_streams": (429, "Too many streams"),
}

# The read API's challenges (RFC 6750 section 3; RFC 6749 section 5.2: a failed HTTP Basic client
# authentication is challenged with Basic). Sent with a 401 or 403 only: the token endpoint answers
# a failed form authentication with a 400, so that browsers do not pop up a credentials dialog.
CHALLENGES: Final[dict[str, bytes]] = {
    "unauthorized": b"Bearer",
    "invalid_token": b'Bearer error="invalid_token"',
    "token_expired": b'Bearer error="invalid_token"',
    "insufficient_scope": b'Bearer error="insufficient_scope"',
    "invalid_client": b"Basic",
}
# The token endpoint's errors also carry RFC 6749 section 5.2's `error`, for OAuth client libraries.
OAUTH_CODES: Final = frozenset({"invalid_client", "invalid_request", "unsupported_grant_type", "invalid_scope"})
_TYPES: Final = {code: f"urn:webhook-gateway:problem:{code}" for code in CODES}

Headers = list[tuple[bytes, bytes]]


class GatewayError(Exception):
    """An error with a stable `code`; its HTTP status and title come from `CODES`.
    `retry_after` (seconds) becomes a Retry-After header: the sender should try again.
    `allow` (the methods a 405 resource takes) becomes an Allow header."""

    def __init__(self, code: str, detail: str, status: int | None = None, *, retry_after: int | None = None,
                 allow: str | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self._status = status
        self.retry_after = retry_after
        self.allow = allow

    @property
    def status(self) -> int:
        return self._status or CODES[self.code][0]


class Rejected(GatewayError):
    """A request that failed authentication; raised only by verifiers."""


class StoreUnavailable(GatewayError):
    """The store could not durably commit; the sender should retry."""

    def __init__(self, detail: str = "the event store cannot commit right now; retry later") -> None:
        super().__init__("store_unavailable", detail, retry_after=5)


def problem(error: GatewayError, request_id: str) -> tuple[int, Headers, bytes]:
    """The status, the headers beyond content-type, content-length and x-request-id, and the
    problem+json body of `error`: the one place a problem is rendered."""
    code, status = error.code, error.status
    headers: Headers = []
    if error.allow is not None:
        headers.append((b"allow", error.allow.encode("latin-1")))
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if status in (401, 403) and (challenge := CHALLENGES.get(code)) is not None:
        headers.append((b"www-authenticate", challenge))
    body = {
        "type": _TYPES[code],
        "title": CODES[code][1],
        "status": status,
        "detail": error.detail,
        "code": code,
        "request_id": request_id,
    }
    if code in OAUTH_CODES:
        body["error"] = code
    return status, headers, orjson.dumps(body)


async def send_problem(send: Send, error: GatewayError, request_id: str) -> None:
    """`error` answered on a raw ASGI path."""
    status, headers, body = problem(error, request_id)
    await send_response(send, status, body, _CONTENT_TYPE, request_id, headers)


def problem_bytes(error: GatewayError, request_id: str) -> bytes:
    """`error` as a whole HTTP/1.1 response that closes the connection, for a protocol that
    answers without the app (gateway/_http.py)."""
    status, headers, body = problem(error, request_id)
    head = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode("latin-1"),
        b"content-type: " + _CONTENT_TYPE,
        b"content-length: %d" % len(body),
        b"x-request-id: " + request_id.encode(),
        b"connection: close",
        *(name + b": " + value for name, value in headers),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def close_reason(code: str, detail: str) -> str:
    """A WebSocket close reason: `code: detail`, cut short (a close frame holds 123 bytes)."""
    return f"{code}: {detail}"[:120]
