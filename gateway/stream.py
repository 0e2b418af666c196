"""Live event stream: Server-Sent Events at /api/v1/stream and a WebSocket at /api/v1/ws.

Subscribers pull from the store rather than being pushed to: each keeps the id of the last
event it sent and reads the matching events after it (in batches, in id order) whenever a
commit stored something. So a client that reconnects with `Last-Event-ID` (SSE) or `since`
(WebSocket) gets every matching event it missed, then live ones, with no gap and no
repeat; and no client holds a queue that ingest could fill. A client that falls more than
`MAX_LAG` events behind the newest one is disconnected with a reason: it can reconnect and
resume where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.api import Api
from gateway.errors import GatewayError, close_reason
from gateway.store import EventQuery, Store, StoredEvent

log = logging.getLogger("gateway.stream")

BATCH = 500
MAX_LAG = 50_000  # events behind the newest before a client is cut off
HEARTBEAT_SECONDS = 15.0


class Notifier:
    """Wakes every waiting subscriber when a commit stored events."""

    def __init__(self) -> None:
        self.latest = 0
        self._event = asyncio.Event()

    def notify(self, newest: int) -> None:
        self.latest = max(self.latest, newest)
        event, self._event = self._event, asyncio.Event()
        event.set()

    def ticket(self) -> asyncio.Event:
        """Take before reading the store: a commit after this point sets it, so waiting on it
        cannot miss one (no lost wake-up between the read and the wait)."""
        return self._event

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True


class TooSlow(Exception):
    pass


async def follow(store: Store, notifier: Notifier, query: EventQuery, after: int,
                 heartbeat: float = HEARTBEAT_SECONDS) -> AsyncIterator[StoredEvent | None]:
    """Matching events with ids above `after`, forever; None when idle for `heartbeat` s."""
    while True:
        if notifier.latest - after > MAX_LAG:
            raise TooSlow(f"more than {MAX_LAG} events behind; reconnect to resume from event {after}")
        ticket = notifier.ticket()
        batch = await store.list_events(replace(query, newest_first=False, after=after, limit=BATCH))
        for event in batch:
            yield event
            after = event.id
        if len(batch) < BATCH and not await notifier.wait(ticket, heartbeat):
            yield None


class Streams:
    def __init__(self, api: Api, store: Store, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.api = api
        self.store = store
        self.heartbeat = heartbeat
        self.notifier = Notifier()
        store.add_event_listener(self.notifier.notify)

    async def start(self) -> None:
        self.notifier.latest = await self.store.latest_event_id()

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/v1/stream", self.sse), WebSocketRoute("/api/v1/ws", self.ws)]

    def _authorize(self, request: Request | WebSocket) -> None:
        # Browsers cannot set headers on EventSource or WebSocket: accept the token in the
        # query too (RFC 6750 section 2.3), for the stream endpoints only.
        self.api.principal(request, "events:read", request.query_params.get("access_token"))

    def _start_after(self, request: Request | WebSocket, header: str | None) -> int:
        if header is not None:
            if not _event_id(header.strip()):
                raise GatewayError("invalid_parameter", "Last-Event-ID must be an event id")
            return int(header)
        since = request.query_params.get("since", "")
        if since.isdigit() and not _event_id(since):  # "²" is a digit to Python; 2**64 is no id
            raise GatewayError("invalid_parameter", "since must be an event id or a time")
        return int(since) if since.isdigit() else self.notifier.latest  # from now on

    async def sse(self, request: Request) -> Response:
        self._authorize(request)
        query = self.api.query(request, since_may_be_id=True)
        after = self._start_after(request, request.headers.get("last-event-id"))

        async def lines() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n: connected\n\n"
            try:
                async for event in follow(self.store, self.notifier, query, after, self.heartbeat):
                    if event is None:
                        yield b": heartbeat\n\n"
                    else:
                        yield b"id: %d\nevent: event\ndata: %s\n\n" % (event.id, orjson.dumps(event.to_json()))
            except TooSlow as exc:
                yield b"event: error\ndata: %s\n\n" % orjson.dumps({"code": "too_slow", "detail": str(exc)})

        return StreamingResponse(lines(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def ws(self, websocket: WebSocket) -> None:
        # A GatewayError raised before accept() closes the socket with 1008 and the reason
        # (gateway/error_handlers.py).
        self._authorize(websocket)
        query = self.api.query(websocket, since_may_be_id=True)
        after = self._start_after(websocket, None)
        await websocket.accept()
        sender = asyncio.create_task(self._send_events(websocket, query, after))
        receiver = asyncio.create_task(self._drain(websocket))
        # Whichever ends first (the client left, or the stream ended) ends the other.
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sender, receiver):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task

    async def _send_events(self, websocket: WebSocket, query: EventQuery, after: int) -> None:
        try:
            async for event in follow(self.store, self.notifier, query, after, self.heartbeat):
                if event is None:
                    await websocket.send_text('{"type":"heartbeat"}')
                else:
                    message = orjson.dumps({"type": "event", "id": event.id, "event": event.to_json()})
                    await websocket.send_text(message.decode())
        except TooSlow as exc:
            await websocket.close(code=1008, reason=close_reason("too_slow", str(exc)))

    @staticmethod
    async def _drain(websocket: WebSocket) -> None:
        """Read (and ignore) what the client sends, so a disconnect is noticed."""
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


def _event_id(text: str) -> bool:
    """ASCII digits that fit SQLite's 64-bit integer ids."""
    return text.isascii() and text.isdigit() and len(text) <= 19 and int(text) < 2**63
