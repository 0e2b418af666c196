"""The position ledger's projector in a process of its own.

Ingest runs its Python on one core, and normalizing and folding every event costs about half as
much again (63 µs an event against ingest's 131 µs, measured): in the serving process the
projector took 40% of ingest's throughput (bench: 7,400 to 4,400 requests/s). In a process of
its own it runs on another core, and nothing it does (a bug, a hang, its memory) reaches
ingest. Whoever serves starts one: `GatewayApp` when it is the only process, else the
supervisor (one per host, not one per worker). It is spawned (a fresh interpreter: no thread or
connection is copied), opens the store itself and runs `gateway.projector.Projector.run`; of
all such processes on one store, the one holding the lease projects. It ends on SIGTERM, or by
itself once its parent is gone; a projector that dies is started again after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import Config, StoreConfig

log = logging.getLogger("gateway.ledger")
_spawn = multiprocessing.get_context("spawn")
PARENT_CHECK = 1.0  # seconds between looks at whether the parent is still there
RESTART_PAUSE = (1.0, 60.0)  # after a projector process died: first pause, longest pause
STOP_TIMEOUT = 10.0
PROCESS_NAME = "gateway-ledger"


@dataclass(frozen=True, slots=True)
class LedgerSpec:
    """What the projector process needs; picklable."""

    store: StoreConfig
    max_open_days: Mapping[str, float | None]
    holder: str
    log_format: str = "auto"

    @classmethod
    def of(cls, config: Config, holder: str, log_format: str = "auto") -> LedgerSpec:
        return cls(config.store, {s.name: s.max_open_days for s in config.sources.values()}, f"{holder}:ledger",
                   log_format)


def ledger_main(spec: LedgerSpec, parent: int) -> None:
    """The projector process's entry point."""
    from gateway.logs import configure

    configure(spec.log_format)
    _name_process(PROCESS_NAME)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    asyncio.run(_project(spec, parent))


def _name_process(name: str) -> None:
    """Show the process as `name` in ps and top (Linux's comm; elsewhere nothing happens)."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(name)


async def _project(spec: LedgerSpec, parent: int) -> None:
    from gateway.projector import Projector
    from gateway.store import open_store

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    store = open_store(spec.store)
    while not stop.is_set():
        try:
            await store.open()
            break
        except Exception as exc:  # not there yet, or not writable: the gateway says so too
            log.warning("ledger: cannot open the store yet: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
    job = asyncio.create_task(Projector(store, dict(spec.max_open_days), spec.holder).run(), name="ledger")
    try:
        while not stop.is_set() and os.getppid() == parent and not job.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PARENT_CHECK)
    finally:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job  # releases the lease: another process may take it at once
        await store.close()


class LedgerProcess:
    """The projector process of one serving process (or supervisor): started, watched, restarted."""

    def __init__(self, spec: LedgerSpec) -> None:
        self.spec = spec
        self.process: Any = None
        self.pause = RESTART_PAUSE[0]
        self.restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else int(self.process.pid)

    def start(self) -> None:
        self.process = _spawn.Process(target=ledger_main, args=(self.spec, os.getpid()), name="gateway-ledger",
                                      daemon=True)
        self.process.start()
        self.started = time.monotonic()
        log.info("ledger projector pid %d starting", self.process.pid)

    def watch(self) -> None:
        """Start it again if it died (after a pause that grows while it keeps dying young)."""
        now = time.monotonic()
        if self.process is not None and not self.process.is_alive():
            code = self.process.exitcode
            self.process.join()
            self.process = None
            if now - self.started > 60:
                self.pause = RESTART_PAUSE[0]
            log.error("ledger projector ended (exit %s); starting another in %g s", code, self.pause)
            self.restart_at = now + self.pause
            self.pause = min(RESTART_PAUSE[1], self.pause * 2)
        if self.process is None and self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL past `timeout` (the lease it held then ends by itself)."""
        self.restart_at = None
        if self.process is None:
            return
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
            if self.process.is_alive():
                log.error("ledger projector pid %d did not stop within %g s; killing it", self.process.pid, timeout)
                self.process.kill()
        self.process.join()
        self.process = None
