"""Small helpers for the raw ASGI paths (ingest runs without Starlette's request objects)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from gateway import logs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# Set in a request's scope by the server's protocol (gateway/_http.py) once the whole body has
# arrived, which for most webhooks is before the app first runs. The ingest then skips the
# head-only credential check, which exists to keep bodies still on their way out of its
# in-flight places unless they carry a credential, and verifies the whole request at once.
BODY_COMPLETE = "gateway.body_complete"

_ids = random.Random()  # seeded from os.urandom; ids need to be unique, not secret


def new_request_id() -> str:
    return f"{_ids.getrandbits(64):016x}"


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    request_id: str,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Gives every non-ingest request an id (scope["state"]["request_id"]) and the header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        logs.request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)
