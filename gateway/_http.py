"""uvicorn's httptools protocol, plus the connection limits uvicorn does not have.

Measured on uvicorn 0.54 with httptools: an 8 MiB request header is accepted whole, and a
connection that never completes a request head (slowloris, or one that sends nothing) is never
timed out: uvicorn's only timer is the keep-alive one, armed after a response. This subclass adds:

- a cap on the request head (request line and headers): past `max_head_bytes` the connection
  gets 431 `header_too_large` and is closed, before the head is buffered any further;
- a deadline for the head, from the connection's (or the request's) first byte: a client that
  sends nothing is closed quietly, one that dribbles a head gets 408 `request_timeout`;
- a deadline for the body, from the end of the head: unless the app has answered already, the
  client gets 408 `request_timeout` and the connection is closed (the app's receive() then sees
  a disconnect, so nothing of that request is stored);
- a cap on open connections: beyond `max_connections` a new one gets 503 `overloaded` with
  Retry-After and is closed (every sender retries a 5xx);
- a reserve for webhooks: while more than `max_connections - reserved_hook_connections` are
  open, a request for anything but /hooks/ (the API, a stream, a WebSocket handshake) gets 503
  `overloaded` and its connection is closed, so read clients can never take every connection.

Deadlines are not timers: a request only notes a `time.monotonic()` value (a timer per request
costs ~8 µs, a tenth of a request), and `GatewayServer` sweeps the connections once a second, so
a limit takes effect within a second of its deadline.

This reaches into uvicorn's internals (`connections`, `cycle` and its `message_event`, the
parser callbacks): pyproject.toml pins uvicorn to the versions tests/test_uvicorn_internals.py
checks.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Iterable

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway._asgi import BODY_COMPLETE, Receive, Scope, Send, new_request_id, send_response
from gateway.errors import GatewayError, problem, problem_bytes

log = logging.getLogger("gateway.http")
NEVER = float("inf")
DRAIN_IDLE_SECONDS = 1.0  # at shutdown, how long an idle connection may still bring a request


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """The limits are class attributes: `gateway.server.uvicorn_config` subclasses with the config's values."""

    max_head_bytes = 16384
    client_timeout = 30.0
    max_connections = 2048
    reserved_hook_connections = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._for_hooks_only = False
        self._draining = False
        self._start_head()  # a new connection owes us a request head, within the deadline
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse("overloaded", f"more than {self.max_connections} open connections; retry shortly",
                         retry_after=1)

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0  # head bytes in earlier chunks
        self._tail = b""  # the last bytes of the previous chunk, where a head end may begin
        self._deadline = time.monotonic() + self.client_timeout

    def data_received(self, data: bytes) -> None:
        if not self._in_head and self._deadline == NEVER:
            # Bytes between requests start the next head's clock, even bare CRLFs that the
            # parser skips without beginning a message (they also disarm uvicorn's keep-alive timer).
            self._start_head()
        if self._in_head and self._head_bytes + len(data) > self.max_head_bytes and not self._head_ends_in(data):
            self._refuse_large_head()
            return
        super().data_received(data)
        if self._in_head:  # still no complete head, so all of this chunk was head
            self._head_bytes += len(data)
            self._tail = data[-2:]
            if self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
                self._refuse_large_head()

    def _head_ends_in(self, data: bytes) -> bool:
        """Does the head end within this chunk's allowance? Only asked when the chunk could take it
        past the cap: a chunk may hold a whole head and a body, so its size alone says nothing."""
        room = self.max_head_bytes - self._head_bytes
        window = self._tail + data[:room + 3]
        for marker in (b"\n\r\n", b"\n\n"):  # the blank line, strict or lenient
            at = window.find(marker)
            if at >= 0 and at + len(marker) - len(self._tail) <= room:
                return True
        return False

    def _refuse_large_head(self) -> None:
        self._refuse("header_too_large", f"the request line and headers exceed {self.max_head_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._deadline = time.monotonic() + self.client_timeout  # now for the body
        self._for_hooks_only = self._in_reserve() and not self._is_hook()
        if not self._for_hooks_only:
            super().on_headers_complete()
            if self._draining and self.cycle is not None:
                self.cycle.keep_alive = False  # the last request on this connection
            return
        app = self.app  # uvicorn starts this request with its app; this one refuses it instead
        self.app = _refuse_for_hooks
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _in_reserve(self) -> bool:
        return len(self.connections) > self.max_connections - self.reserved_hook_connections

    def _is_hook(self) -> bool:
        try:
            path = httptools.parse_url(self.url).path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            return False  # uvicorn refuses it too
        return urllib.parse.unquote(path).startswith("/hooks/")  # as the app routes it

    def _should_upgrade(self) -> bool:
        return not self._for_hooks_only and super()._should_upgrade()  # a refused handshake stays HTTP

    def _unsupported_upgrade_warning(self) -> None:
        if not self._for_hooks_only:
            super()._unsupported_upgrade_warning()

    def shutdown(self) -> None:
        """Graceful shutdown without the keep-alive race. uvicorn closes an idle connection at
        once, so a request its client sent at that moment fails with no answer ("server
        disconnected"): measured, 2 in 1,200 requests across a rolling restart. Here an idle
        connection has DRAIN_IDLE_SECONDS more: a request that arrives is served, with
        `Connection: close`; without one it is closed then, as at keep-alive expiry."""
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            if self.timeout_keep_alive_task is not None:
                self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = self.loop.call_later(DRAIN_IDLE_SECONDS, self.timeout_keep_alive_handler)
        else:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._deadline = NEVER  # the app takes its time; after the answer, keep-alive rules
        if self.scope is not None:
            self.scope[BODY_COMPLETE] = True  # type: ignore[literal-required]  # an extension key (gateway/_asgi.py)

    def check(self, now: float) -> None:
        """Enforce the deadline (called by the server's sweep)."""
        if now < self._deadline or self.transport.is_closing():
            return
        self._deadline = NEVER
        if self._in_head and self._head_bytes == 0:
            self.transport.close()  # connected and said nothing: nobody to answer
        elif self._in_head:
            self._refuse("request_timeout", f"the request head did not arrive within {self.client_timeout:g} s")
        elif self.cycle is not None and not self.cycle.response_started:
            self._refuse("request_timeout", f"the request body did not arrive within {self.client_timeout:g} s")
        else:
            self.transport.close()

    def _refuse(self, code: str, detail: str, retry_after: int | None = None) -> None:
        """Answer with a problem+json of our own and close; a request in progress is cut off."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # whatever the app sends now is dropped; its receive() ends
            cycle.message_event.set()
        log.info("connection refused: %s: %s", code, detail, extra={"remote": self.client[0] if self.client else None})
        self.transport.write(problem_bytes(GatewayError(code, detail, retry_after=retry_after), new_request_id()))
        self.transport.close()


async def _refuse_for_hooks(scope: Scope, receive: Receive, send: Send) -> None:
    error = GatewayError("overloaded", "the remaining connections are reserved for webhooks; retry shortly",
                         retry_after=1)
    log.info("request refused: %s: %s", error.code, error.detail, extra={"path": scope["path"][:64]})
    status, headers, body = problem(error, request_id := new_request_id())
    await send_response(send, status, body, b"application/problem+json", request_id,
                        [*headers, (b"connection", b"close")])


def sweep(connections: Iterable[object], now: float) -> None:
    """Enforce every guarded connection's deadline."""
    for connection in tuple(connections):  # closing one changes the set later, not during the loop
        if isinstance(connection, GuardedHttpToolsProtocol):
            connection.check(now)
