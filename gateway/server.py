"""The HTTP server: uvicorn with the gateway's connection limits; a second SIGTERM or SIGINT ends
the process at once.

The first signal stops accepting connections, lets in-flight requests finish (half of
`[server] shutdown_timeout_seconds`), then the app's lifespan stops the plugins and commits
whatever is queued (the other half). Forcing exit is safe: nothing is acknowledged before it
is committed, and SQLite's write-ahead log survives any exit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any, Protocol

import uvicorn

from gateway._http import GuardedHttpToolsProtocol, sweep
from gateway.config import ServerConfig

log = logging.getLogger("gateway")
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
WS_MAX_MESSAGE_BYTES = 64 * 1024  # clients send the live stream nothing but control frames


def uvicorn_config(app: Any, server: ServerConfig, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for the gateway: the guarded protocol with `server`'s limits, and no
    proxy-header rewriting (the app reads X-Forwarded-For itself, from `trusted_proxies` only:
    uvicorn's own `proxy_headers` would trust 127.0.0.1 by default, so any local process, or a
    proxy that passes a client's header through, could choose its address)."""

    class Protocol(GuardedHttpToolsProtocol):
        max_head_bytes = server.max_header_bytes
        client_timeout = server.client_timeout_seconds
        max_connections = server.max_connections
        reserved_hook_connections = server.reserved_hook_connections

    settings: dict[str, Any] = {
        "lifespan": "on", "access_log": False, "server_header": False, "log_config": None,
        "proxy_headers": False, "timeout_keep_alive": KEEP_ALIVE_SECONDS, "ws_max_size": WS_MAX_MESSAGE_BYTES,
        **options,
    }
    return uvicorn.Config(app, host=host, port=port, http=Protocol, **settings)


# The store's writer thread gives up the GIL in every SQLite call and must then wait for it
# while the event loop works: by default up to 5 ms each time. At 1 ms the writer gets it back
# sooner and its groups commit sooner: MetaCopier at 32 connections +6% requests/s, measured
# side by side (docs/benchmarks.md). Process-wide, so set when the server starts.
SWITCH_INTERVAL_SECONDS = 0.001


class Heartbeat(Protocol):
    """A value shared with the supervisor (multiprocessing's RawValue of a double)."""

    value: float


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the deadline sweep and the second-signal exit. As a supervisor's
    worker (`heartbeat` given) it also writes `time.monotonic()` to `heartbeat` every tick once
    started (the supervisor's readiness and liveness check: a blocked event loop stops it), and
    leaves SIGINT to the supervisor, which answers Ctrl-C in a terminal (sent to the whole
    process group) with one SIGTERM to each worker."""

    def __init__(self, config: uvicorn.Config, heartbeat: Heartbeat | None = None) -> None:
        super().__init__(config)
        self.heartbeat = heartbeat
        self.parent = os.getppid()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        await super().serve(sockets)

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # uvicorn ticks every 0.1 s; deadlines are checked every second
            sweep(self.server_state.connections, time.monotonic())
        if self.heartbeat is not None and self.started:
            self.heartbeat.value = time.monotonic()
            if counter % 10 == 0 and os.getppid() != self.parent and not self.should_exit:
                log.error("the supervisor has gone: draining and exiting")
                self.should_exit = True
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.heartbeat is not None and sig == signal.SIGINT:
            return
        if self.should_exit:
            log.warning("second signal %d: exiting now", sig)
            os._exit(1)
        log.info("signal %d: shutting down gracefully", sig)
        super().handle_exit(sig, frame)
