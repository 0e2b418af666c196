"""The HTTP server: uvicorn, except that a second SIGTERM or SIGINT ends the process at once.

The first signal stops accepting connections, lets in-flight requests finish (half of
`[server] shutdown_timeout_seconds`), then the app's lifespan stops the plugins and commits
whatever is queued (the other half). Forcing exit is safe: nothing is acknowledged before it
is committed, and SQLite's write-ahead log survives any exit.
"""

from __future__ import annotations

import logging
import os
from types import FrameType

import uvicorn

log = logging.getLogger("gateway")


class GatewayServer(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            log.warning("second signal %d: exiting now", sig)
            os._exit(1)
        log.info("signal %d: shutting down gracefully", sig)
        super().handle_exit(sig, frame)
