"""One gateway process: the app in uvicorn, on an address or on a socket it was given.

`gateway run` serves one itself when `[server] workers` is 1; otherwise the supervisor
(gateway.supervisor) starts `worker_main` in N processes, which share its listening socket.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Config, ConfigError
from gateway.limits import divided
from gateway.plugins import Plugin
from gateway.server import GatewayServer, Heartbeat, uvicorn_config

log = logging.getLogger("gateway")


def serve(
    config: Config,
    plugins: dict[str, Plugin],
    *,
    host: str,
    port: int,
    sock: socket.socket | None = None,
    heartbeat: Heartbeat | None = None,
    run_dir: Path | None = None,
    on_listening: Callable[[tuple[Any, ...]], Callable[[], None]] | None = None,
) -> None:
    """Serve until a signal ends it. `sock`: listen there rather than on host:port.
    `heartbeat` and `run_dir`: this is one of a supervisor's workers. `on_listening` is called
    with the address once listening, and what it returns at the end. Raises ConfigError
    (an unusable token signing key)."""
    from gateway.app import GatewayApp

    deadline = config.server.shutdown_timeout_seconds
    app = GatewayApp(config, plugins=plugins, shutdown_grace=deadline / 2, run_dir=run_dir)
    cleanups: list[Callable[[], None]] = []

    class Server(GatewayServer):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if on_listening is not None and self.started and self.servers and self.servers[0].sockets:
                cleanups.append(on_listening(self.servers[0].sockets[0].getsockname()))

        async def shutdown(self, sockets: Any = None) -> None:
            try:
                await super().shutdown(sockets)
            finally:  # here, not after run(): uvicorn ends the process by re-raising the signal
                for cleanup in cleanups:
                    cleanup()

    server = Server(uvicorn_config(
        app, config.server, host=host, port=port,
        # in-flight requests get half the deadline (live streams never end by themselves);
        # plugins and the last commit get the other half, in the lifespan shutdown
        timeout_graceful_shutdown=max(1, int(deadline / 2)),
    ), heartbeat=heartbeat)
    server.run(sockets=None if sock is None else [sock])


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker needs besides its socket; picklable (workers are spawned, not forked)."""

    config_path: Path | None
    host: str
    port: int
    log_format: str
    workers: int
    run_dir: Path


def worker_main(spec: WorkerSpec, sock: socket.socket, heartbeat: Heartbeat) -> None:
    """A worker process: the config and the code as they are on disk now (a SIGHUP's rolling
    replace is how an edit or an upgrade takes effect), with the host-wide limits divided
    between the workers (gateway.limits.divided)."""
    from gateway import logs
    from gateway.cli import build_plugins, resolve_config

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor's alone: a terminal hang-up reaches us too
    logs.configure(spec.log_format)
    config = divided(resolve_config(spec.config_path), spec.workers)
    try:
        serve(config, build_plugins(config), host=spec.host, port=spec.port, sock=sock, heartbeat=heartbeat,
              run_dir=spec.run_dir)
    except ConfigError as exc:
        for line in exc.errors:
            log.error("config error: %s", line)
        raise SystemExit(2) from None
