"""Live event stream: Server-Sent Events at /api/v1/stream and a WebSocket at /api/v1/ws.

Subscribers pull from the store rather than being pushed to: each keeps the id of the last
event it sent and reads the matching events after it (in batches, in id order) whenever a
commit stored something. So a client that reconnects with `Last-Event-ID` (SSE) or `since`
(WebSocket) gets every matching event it missed, then live ones, with no gap and no
repeat; and no client holds a queue that ingest could fill.

A stream's lag is measured from its own position in the whole event sequence: how far it has
looked, matching or not. A filtered stream that is caught up is never behind, however much
traffic it does not match. A stream whose unsent matching events reach more than `max_lag`
events behind the newest one is disconnected with a reason: it can reconnect and resume where
it stopped.

A stream lives no longer than its credential: it ends when the token expires, or when a
re-check refuses it (its client was removed or narrowed), with `event: error` (SSE) or close
code 1008 (WebSocket) and the reason. Streams are capped per client and in total
(`[api] max_streams_per_client`, `[api] max_streams`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.api import Api
from gateway.errors import GatewayError, close_reason
from gateway.store import EventQuery, Store, StoredEvent

log = logging.getLogger("gateway.stream")

BATCH = 500
MAX_LAG = 50_000  # events behind the newest before a client is cut off
HEARTBEAT_SECONDS = 15.0
STREAM_RETRY_AFTER = 10  # seconds, in the Retry-After of a refused stream


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


@dataclass(frozen=True, slots=True)
class Lease:
    """What keeps a stream allowed: `check()` re-authorizes it (raises GatewayError), and it
    ends at `deadline` (the clock's seconds; None: never, e.g. a public stream)."""

    check: Callable[[], object]
    deadline: float | None
    clock: Callable[[], float]

    def valid_for(self) -> float:
        """Seconds left; raises GatewayError when the credential no longer holds."""
        self.check()
        if self.deadline is None:
            return math.inf
        left = self.deadline - self.clock()
        if left <= 0:
            raise GatewayError("token_expired", "the access token has expired; sign in or request a new one")
        return left


OPEN_LEASE = Lease(lambda: None, None, time.time)


@dataclass(slots=True)
class Follower:
    """One stream's reading of the store: `after` is the last id it looked at."""

    store: Store
    notifier: Notifier
    query: EventQuery
    after: int
    heartbeat: float = HEARTBEAT_SECONDS
    max_lag: int = MAX_LAG
    batch: int = BATCH
    lease: Lease = OPEN_LEASE

    async def events(self) -> AsyncIterator[StoredEvent | None]:
        """Matching events with ids above `after`, until the lease ends; None when idle for
        `heartbeat` s. Raises TooSlow, or GatewayError when the lease ends."""
        while True:
            left = self.lease.valid_for()
            ticket = self.notifier.ticket()
            seen = self.notifier.latest  # committed, so visible to the read below
            page = await self.store.list_events(replace(self.query, newest_first=False, after=self.after,
                                                        limit=self.batch))
            for event in page:
                yield event
                self.after = event.id
            if len(page) == self.batch:  # more may match: behind by what lies beyond this page
                if self.notifier.latest - self.after > self.max_lag:
                    raise TooSlow(f"more than {self.max_lag} events behind; "
                                  f"reconnect to resume from event {self.after}")
                continue
            self.after = max(self.after, seen)  # every event up to `seen` was looked at
            woken = await self.notifier.wait(ticket, min(self.heartbeat, left))
            if not woken and left > self.heartbeat:  # idle: not merely at the lease's end
                yield None


class StreamSlots:
    """Open streams per client (its id, or its address when anonymous) and in total."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self.open: dict[str, int] = {}

    def take(self, who: str) -> Callable[[], None]:
        """Reserve a stream for `who`; returns the release (call it once). Raises GatewayError."""
        held = self.open.get(who, 0)
        if held >= self.per_client:
            raise GatewayError("too_many_streams",
                               f"{who} already has {held} streams open ([api] max_streams_per_client = "
                               f"{self.per_client}); close one first", retry_after=STREAM_RETRY_AFTER)
        if sum(self.open.values()) >= self.total:
            raise GatewayError("overloaded", f"the gateway serves its maximum of {self.total} streams "
                               "([api] max_streams); try again later", retry_after=STREAM_RETRY_AFTER)
        self.open[who] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open[who] -= 1
                if not self.open[who]:
                    del self.open[who]

        return release


class _Held(StreamingResponse):
    """A stream response that gives its slot back when it ends, however it ends."""

    def __init__(self, lines: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(lines, media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


class Streams:
    def __init__(self, api: Api, store: Store, heartbeat: float = HEARTBEAT_SECONDS, *,
                 max_lag: int = MAX_LAG, batch: int = BATCH) -> None:
        self.api = api
        self.store = store
        self.heartbeat = heartbeat
        self.max_lag = max_lag
        self.batch = batch
        self.notifier = Notifier()
        settings = api.tokens.api
        self.slots = StreamSlots(settings.max_streams_per_client, settings.max_streams)
        store.add_event_listener(self.notifier.notify)

    async def start(self) -> None:
        self.notifier.latest = await self.store.latest_event_id()

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/v1/stream", self.sse), WebSocketRoute("/api/v1/ws", self.ws)]

    def _open(self, conn: HTTPConnection) -> tuple[Lease, Callable[[], None]]:
        """Authorize a stream (the credential from the Authorization header or the session
        cookie, never the URL) and take its slot."""
        principal = self.api.principal(conn, "events:read")
        token = self.api.credential(conn)
        deadline = None if token is None else self.api.tokens_expire_at(token)
        lease = Lease(lambda: self.api.principal(conn, "events:read"), deadline, self.api.clock)
        who = f"client {principal.client_id}" if principal.client_id else f"address {self.api.address(conn)}"
        return lease, self.slots.take(who)

    def _follower(self, conn: HTTPConnection, header: str | None, lease: Lease) -> Follower:
        query = self.api.query(conn, since_may_be_id=True)
        return Follower(self.store, self.notifier, query, self._start_after(conn, header), self.heartbeat,
                        self.max_lag, self.batch, lease)

    def _start_after(self, request: HTTPConnection, header: str | None) -> int:
        if header is not None:
            if not _event_id(header.strip()):
                raise GatewayError("invalid_parameter", "Last-Event-ID must be an event id")
            return int(header)
        since = request.query_params.get("since", "")
        if since.isdigit() and not _event_id(since):  # "²" is a digit to Python; 2**64 is no id
            raise GatewayError("invalid_parameter", "since must be an event id or a time")
        return int(since) if since.isdigit() else self.notifier.latest  # from now on

    async def sse(self, request: Request) -> Response:
        lease, release = self._open(request)
        try:
            follower = self._follower(request, request.headers.get("last-event-id"), lease)
        except BaseException:
            release()
            raise

        async def lines() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n: connected\n\n"
            try:
                async for event in follower.events():
                    if event is None:
                        yield b": heartbeat\n\n"
                    else:
                        yield b"id: %d\nevent: event\ndata: %s\n\n" % (event.id, orjson.dumps(event.to_json()))
            except TooSlow as exc:
                yield _sse_error("too_slow", str(exc))
            except GatewayError as exc:
                yield _sse_error(exc.code, exc.detail)

        return _Held(lines(), release)

    async def ws(self, websocket: WebSocket) -> None:
        # A GatewayError raised before accept() closes the socket with 1008 and the reason
        # (gateway/error_handlers.py).
        lease, release = self._open(websocket)
        try:
            follower = self._follower(websocket, None, lease)
            await websocket.accept()
            sender = asyncio.create_task(self._send_events(websocket, follower))
            receiver = asyncio.create_task(self._drain(websocket))
            # Whichever ends first (the client left, or the stream ended) ends the other.
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in (sender, receiver):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                    await task
        finally:
            release()

    @staticmethod
    async def _send_events(websocket: WebSocket, follower: Follower) -> None:
        try:
            async for event in follower.events():
                if event is None:
                    await websocket.send_text('{"type":"heartbeat"}')
                else:
                    message = orjson.dumps({"type": "event", "id": event.id, "event": event.to_json()})
                    await websocket.send_text(message.decode())
        except TooSlow as exc:
            await websocket.close(code=1008, reason=close_reason("too_slow", str(exc)))
        except GatewayError as exc:
            await websocket.close(code=1008, reason=close_reason(exc.code, exc.detail))

    @staticmethod
    async def _drain(websocket: WebSocket) -> None:
        """Read (and ignore) what the client sends, so a disconnect is noticed."""
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


def _sse_error(code: str, detail: str) -> bytes:
    return b"event: error\ndata: %s\n\n" % orjson.dumps({"code": code, "detail": detail})


def _event_id(text: str) -> bool:
    """ASCII digits that fit SQLite's 64-bit integer ids."""
    return text.isascii() and text.isdigit() and len(text) <= 19 and int(text) < 2**63
