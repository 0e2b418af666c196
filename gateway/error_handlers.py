"""Starlette's side of gateway.errors: the problem response, and the exception handlers that the
app registers once (`Starlette(exception_handlers=EXCEPTION_HANDLERS)`), so that a route raises
`GatewayError` and never builds an error body itself."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final, cast

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ExceptionHandler
from starlette.websockets import WebSocket

from gateway.errors import PROBLEM_CONTENT_TYPE, GatewayError, close_reason, problem

log = logging.getLogger("gateway.http")


def problem_response(error: GatewayError, request_id: str) -> Response:
    """`error` as a Starlette response (RequestIdMiddleware adds the x-request-id header)."""
    status, headers, body = problem(error, request_id)
    response = Response(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE)
    response.raw_headers.extend(headers)
    return response


def _as_error(exc: Exception) -> GatewayError:
    """Starlette's own 404 and 405 (no route, wrong method) as our errors."""
    if isinstance(exc, GatewayError):
        return exc
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "not_found")
    return GatewayError(code, exc.detail, exc.status_code, allow=(exc.headers or {}).get("Allow"))


async def handle_error(conn: HTTPConnection, exc: Exception) -> Response | None:
    """The exception handler for Starlette's routes: a problem response, or for a WebSocket
    not yet accepted a close with policy violation (1008) and the reason."""
    error = _as_error(exc)
    if isinstance(conn, WebSocket):
        log.info("websocket refused: %s: %s", error.code, error.detail)
        await conn.close(code=1008, reason=close_reason(error.code, error.detail))
        return None
    return problem_response(error, conn.state.request_id)


# Starlette passes a Request or, on a WebSocket route, a WebSocket: one handler takes both.
_HANDLER = cast(ExceptionHandler, handle_error)
EXCEPTION_HANDLERS: Final[Mapping[type[Exception], ExceptionHandler]] = {
    GatewayError: _HANDLER,
    HTTPException: _HANDLER,
}
