"""Browser security headers on the dashboard and the API (issue 13, item 10).

The dashboard is one page with its script and style sheet served from /dashboard/: no inline
script or style, no eval, no frames, and it only talks to its own origin (fetch, EventSource,
WebSocket). So the policy allows exactly that, and nothing may frame the gateway's pages.
"""

from __future__ import annotations

from gateway._asgi import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
PREFIXES = ("/dashboard/", "/api/")


def wants_headers(path: str) -> bool:
    """`/`, `/dashboard/*` and `/api/*`: what a browser opens or the dashboard calls."""
    return path == "/" or path == "/dashboard" or path.startswith(PREFIXES)


class BrowserHeadersMiddleware:
    """Adds `HEADERS` to every HTTP response under the paths `wants_headers` names."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not wants_headers(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
