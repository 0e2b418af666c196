"""The dashboard's session cookie: the API's bearer token, where scripts cannot read it.

A browser cannot set an Authorization header on EventSource or WebSocket, and a token in the
URL ends up in access logs (the gateway's, a proxy's). So the dashboard signs in at
`POST /api/v1/session` and gets the token as a cookie that is `HttpOnly` (no script reads it),
`SameSite=Strict` (no other site's page sends it), `Path=/api/` (sent only to the API) and
`Secure` when the request came over TLS: the socket's scheme, or `X-Forwarded-Proto: https`
from a `[server] trusted_proxies` peer. It lives as long as the token, and works on any
worker or host that shares the signing key.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import HTTPConnection
from starlette.responses import Response

from gateway.ipnet import IPNetwork, ip_allowed

COOKIE: Final = "gateway_session"
PATH: Final = "/api/"


def over_tls(request: HTTPConnection, trusted_proxies: tuple[IPNetwork, ...]) -> bool:
    """Did the browser reach us over TLS? Only a trusted proxy may say so in X-Forwarded-Proto."""
    if request.url.scheme in ("https", "wss"):
        return True
    peer = request.client.host if request.client else None
    if not trusted_proxies or not ip_allowed(trusted_proxies, peer):
        return False
    proto = request.headers.get("x-forwarded-proto", "")
    return proto.split(",")[0].strip().lower() == "https"  # the first hop's: the browser's own


def issue(response: Response, token: str, max_age: int, secure: bool) -> None:
    response.set_cookie(COOKIE, token, max_age=max_age, path=PATH, secure=secure, httponly=True,
                        samesite="strict")


def clear(response: Response, secure: bool) -> None:
    response.delete_cookie(COOKIE, path=PATH, secure=secure, httponly=True, samesite="strict")
