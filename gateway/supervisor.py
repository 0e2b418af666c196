"""`gateway run --workers N`: one listening socket, N worker processes serving it.

Modelled on uvicorn's supervisor (uvicorn.supervisors.Multiprocess, 0.54), which cannot be
used as it is: its workers run a plain `uvicorn.Server` from a config pickled once at start,
so they would lose the guarded protocol, the deadline sweep and the second-signal exit, and a
SIGHUP would bring back the old config. Here each worker builds its own server from the
config and code on disk (gateway.worker.worker_main). What the supervisor does:

- binds the socket once (or takes one from systemd, `LISTEN_FDS`, or `--fd`); the workers
  accept from it, so connections wait in the kernel's queue while any worker is up;
- restarts a worker that dies, logging how it ended; one that dies before it serves is
  restarted after a growing pause (a broken store or config must not spin the CPU);
- kills a worker whose event loop stops ticking (its heartbeat, a shared double) for
  HEARTBEAT_TIMEOUT s, and one that is not serving within STARTUP_TIMEOUT s;
- SIGTERM or SIGINT: one SIGTERM to each worker, which drains within
  `[server] shutdown_timeout_seconds`; what is still running past that (and a margin) is
  killed. A second signal is passed on: the workers exit at once;
- SIGHUP: checks the config on disk as `check-config` does. If it is bad, logs why and keeps
  the running workers. Else replaces them one at a time: a new worker serves before the old
  one is told to drain, so no connection is refused and no request fails. `[server] workers`
  may change the count (unless `--workers` was given);
- serves `[metrics] listen` itself, once, from the workers' multiprocess files;
- runs the position ledger's projector in one process of its own (gateway/ledger_process.py),
  restarted if it dies, replaced on SIGHUP.

Workers are spawned, not forked: a fresh interpreter imports the code on disk, and no thread
or SQLite connection of the supervisor is copied into it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import Config, ConfigError
from gateway.ledger_process import LedgerProcess, LedgerSpec
from gateway.metrics import MULTIPROC_ENV
from gateway.worker import WorkerSpec, worker_main

log = logging.getLogger("gateway.supervisor")
STARTUP_TIMEOUT = 60.0
HEARTBEAT_TIMEOUT = 30.0
STOP_MARGIN = 5.0  # past shutdown_timeout_seconds, before a draining worker is killed
RESTART_PAUSE = (0.5, 30.0)  # after a worker died before serving: first pause, longest pause
POLL = 0.05
STARTUP_FAILURE = 3  # uvicorn's exit status when a server cannot start
_spawn = multiprocessing.get_context("spawn")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, shared by the workers. Raises OSError."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class Worker:
    """One worker process and its heartbeat (0.0 until it serves)."""

    def __init__(self, spec: WorkerSpec, sock: socket.socket) -> None:
        self.heartbeat: Any = _spawn.RawValue("d", 0.0)
        self.process = _spawn.Process(target=worker_main, args=(spec, sock, self.heartbeat), name="gateway-worker")
        self.process.start()
        self.pid: int = self.process.pid or 0
        self.started = time.monotonic()
        self.stop_by: float | None = None  # set when told to drain
        self.announced = False  # its serving was logged

    @property
    def ready(self) -> bool:
        return bool(self.heartbeat.value)

    @property
    def ended(self) -> bool:
        return self.process.exitcode is not None

    def how_ended(self) -> str:
        code = self.process.exitcode
        if code == -signal.SIGTERM:  # uvicorn ends a drained server by raising the signal again
            return "ended on SIGTERM"
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def drain(self, deadline: float) -> None:
        self.stop_by = time.monotonic() + deadline
        self.send(signal.SIGTERM)


class Supervisor:
    def __init__(
        self,
        spec: WorkerSpec,
        sock: socket.socket,
        config: Config,
        *,
        fixed_workers: bool,
        check: Callable[[], Config],
        on_listening: Callable[[tuple[Any, ...]], Callable[[], None]] | None = None,
    ) -> None:
        """`spec.workers` workers on `sock`. `check` reads and checks the config on disk for a
        SIGHUP (raises ConfigError). `fixed_workers`: --workers was given, so a reload keeps the
        count."""
        self.spec = spec
        self.sock = sock
        self.config = config
        self.fixed_workers = fixed_workers
        self.check = check
        self.on_listening = on_listening
        self.workers: list[Worker] = []
        self.draining: list[Worker] = []
        self.restarts: list[float] = []  # when to start a worker in each empty slot
        self.pause = RESTART_PAUSE[0]
        self.signals: list[int] = []
        self.stopping = False
        self.metrics_dir = spec.run_dir / "metrics"
        self.ledger = LedgerProcess(self._ledger_spec(config))  # one per host, not one per worker

    def _ledger_spec(self, config: Config) -> LedgerSpec:
        return LedgerSpec.of(config, f"{socket.gethostname()}:{os.getpid()}", self.spec.log_format)

    # --- signals: handlers only queue them; the loop acts on them -------------------------

    def _on_signal(self, sig: int, frame: object) -> None:
        self.signals.append(sig)

    def _stop_requested(self) -> bool:
        return any(sig in (signal.SIGTERM, signal.SIGINT) for sig in self.signals)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGHUP and not self.stopping:
                self._reload()
            elif sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    log.warning("second signal %d: workers exit now", sig)
                    for worker in (*self.workers, *self.draining):
                        worker.send(signal.SIGTERM)  # their second: they exit at once
                    return
                log.info("signal %d: draining %d worker(s)", sig, len(self.workers))
                self.stopping = True
                for worker in self.workers:
                    self._retire(worker)
                self.workers.clear()
                self.restarts.clear()

    # --- workers ---------------------------------------------------------------------------

    def _start(self) -> Worker:
        worker = Worker(self.spec, self.sock)
        log.info("worker pid %d starting", worker.pid)
        return worker

    def _ended(self, worker: Worker) -> None:
        """Book-keeping for a worker whose process has ended: its live gauges go."""
        worker.process.join()
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(worker.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def _wait_ready(self, worker: Worker) -> bool:
        """Wait until `worker` serves; False if it ended, took too long, or a stop came."""
        while not worker.ready:
            if worker.ended:
                log.error("worker pid %d %s before it served", worker.pid, worker.how_ended())
                return False
            if time.monotonic() - worker.started > STARTUP_TIMEOUT:
                log.error("worker pid %d was not serving after %.0f s; killing it", worker.pid, STARTUP_TIMEOUT)
                return False
            if self._stop_requested():
                return False
            time.sleep(POLL)
        self._announce(worker)
        return True

    def _announce(self, worker: Worker) -> None:
        log.info("worker pid %d serving", worker.pid)
        worker.announced = True
        self.pause = RESTART_PAUSE[0]

    def _retire(self, worker: Worker) -> None:
        """Tell `worker` to drain; it is killed if still running past the deadline."""
        worker.drain(self.config.server.shutdown_timeout_seconds + STOP_MARGIN)
        self.draining.append(worker)

    def _watch(self) -> None:
        """Restart the workers (and the ledger's projector) that ended; kill those that hang."""
        if not self.stopping:
            self.ledger.watch()
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.ended:
                served = worker.ready
                log.error("worker pid %d %s; starting another%s", worker.pid, worker.how_ended(),
                          "" if served else f" in {self.pause:g} s (it never served)")
                self._ended(worker)
                self.workers.remove(worker)
                self.restarts.append(now if served else now + self.pause)
                if not served:
                    self.pause = min(RESTART_PAUSE[1], self.pause * 2)
            elif worker.ready and not worker.announced:
                self._announce(worker)
            elif worker.ready and now - worker.heartbeat.value > HEARTBEAT_TIMEOUT:
                log.error("worker pid %d: its event loop has not run for %.0f s; killing it", worker.pid,
                          now - worker.heartbeat.value)
                worker.send(signal.SIGKILL)
            elif not worker.ready and now - worker.started > STARTUP_TIMEOUT:
                log.error("worker pid %d was not serving after %.0f s; killing it", worker.pid, STARTUP_TIMEOUT)
                worker.send(signal.SIGKILL)
        for when in [t for t in self.restarts if t <= now]:
            self.restarts.remove(when)
            self.workers.append(self._start())
        for worker in [w for w in self.draining if w.ended]:
            self.draining.remove(worker)
            self._ended(worker)
            log.info("worker pid %d stopped: %s", worker.pid, worker.how_ended())
        for worker in self.draining:
            if worker.stop_by is not None and now > worker.stop_by:
                log.error("worker pid %d still running %.0f s after SIGTERM; killing it", worker.pid,
                          self.config.server.shutdown_timeout_seconds + STOP_MARGIN)
                worker.send(signal.SIGKILL)
                worker.stop_by = None

    def _reload(self) -> None:
        """SIGHUP: a rolling replace on the config now on disk, if it is good."""
        try:
            config = self.check()
        except ConfigError as exc:
            for line in exc.errors:
                log.error("SIGHUP: config error: %s", line)
            log.error("SIGHUP: the config on disk is not valid; the %d running worker(s) carry on",
                      len(self.workers))
            return
        if (config.server.host, config.server.port) != (self.config.server.host, self.config.server.port):
            log.warning("SIGHUP: the listening address changes only when the supervisor restarts")
        count = self.spec.workers if self.fixed_workers else config.server.workers
        self.config = config
        self.spec = dataclasses.replace(self.spec, workers=count)
        log.info("SIGHUP: replacing %d worker(s) one at a time, %d when done", len(self.workers), count)
        for old in list(self.workers):
            new = self._start()
            if not self._wait_ready(new):
                self._retire(new)
                log.error("SIGHUP: replacement stopped; the running workers carry on")
                return
            self.workers[self.workers.index(old)] = new
            self._retire(old)
        while len(self.workers) + len(self.restarts) > count and self.workers:
            self._retire(self.workers.pop())
        self.restarts.extend([time.monotonic()] * (count - len(self.workers) - len(self.restarts)))
        if self.ledger.process is not None:  # the projector takes the new sources' settings too
            self.ledger.stop()
            self.ledger = LedgerProcess(self._ledger_spec(config))
            self.ledger.start()
        log.info("SIGHUP: done")

    # --- the whole run -----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the process's exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        exporter = self._serve_metrics()
        try:
            return self._serve()
        finally:
            self._stop()
            if exporter is not None:
                exporter.shutdown()
                exporter.server_close()
            shutil.rmtree(self.spec.run_dir, ignore_errors=True)

    def _serve(self) -> int:
        self.workers = [self._start() for _ in range(self.spec.workers)]
        for worker in list(self.workers):
            if not self._wait_ready(worker):
                if self._stop_requested():
                    return 0
                log.error("a worker could not start: stopping (see its lines above)")
                return STARTUP_FAILURE
        self.ledger.start()
        cleanup = self.on_listening(self.sock.getsockname()) if self.on_listening is not None else None
        log.info("%d workers serving (supervisor pid %d; SIGHUP replaces them on the config on disk)",
                 len(self.workers), os.getpid())
        try:
            while not (self.stopping and not self.draining):
                self._handle_signals()
                self._watch()
                time.sleep(POLL)
        finally:
            if cleanup is not None:
                cleanup()
        return 0

    def _stop(self) -> None:
        """Drain whatever still runs (after a failed start, or an error here)."""
        self.stopping = True
        self.restarts.clear()
        self.ledger.stop()
        for worker in self.workers:
            self._retire(worker)
        self.workers.clear()
        while self.draining:
            self._watch()
            time.sleep(POLL)

    def _serve_metrics(self) -> Any:
        if self.config.metrics.listen is None:
            return None
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        host, port = self.config.metrics.listen
        exporter, _ = start_http_server(port, host, registry=registry)
        log.info("metrics of all workers on http://%s:%d/metrics", host, exporter.server_port)
        return exporter


def prepare_run_dir() -> Path:
    """A fresh folder for the workers' shared files (metrics, rate limits), named in the
    environment for prometheus-client before any worker starts."""
    run_dir = Path(tempfile.mkdtemp(prefix="gateway-run-"))
    (run_dir / "metrics").mkdir()
    os.environ[MULTIPROC_ENV] = str(run_dir / "metrics")
    return run_dir
