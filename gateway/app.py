"""The ASGI application: `/hooks/*` on a lean path, everything else through Starlette."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, start_http_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway._asgi import Receive, RequestIdMiddleware, Scope, Send
from gateway.api import Api
from gateway.auth import MIN_KEY_BYTES, Tokens, load_or_create_key
from gateway.browser_headers import BrowserHeadersMiddleware
from gateway.config import Config, ip_allowed
from gateway.error_handlers import EXCEPTION_HANDLERS
from gateway.errors import GatewayError
from gateway.fanout import Fanout
from gateway.ingest import PREFIX, IngestApp
from gateway.ledger_api import LedgerApi
from gateway.ledger_process import LedgerProcess, LedgerSpec
from gateway.limits import client_address
from gateway.metrics import Metrics
from gateway.overview_api import OverviewApi
from gateway.plugins import Plugin
from gateway.plugins.loader import load_plugins
from gateway.schemes import reader
from gateway.store import Store, open_store
from gateway.stream import Streams

DASHBOARD = Path(__file__).resolve().parent / "dashboard"
READY_TIMEOUT = 2.0
RETENTION_INTERVAL = 3600.0
RETENTION_GRACE = 600.0  # the lease outlasts the interval: its holder renews it before it ends
RETENTION_JOB = "retention"
REIDENTIFY_RETRY = 5.0
METRICS_REFRESH = 5.0  # seconds between measurements of the gauges that are read, not counted
log = logging.getLogger("gateway")


async def dashboard(request: Request) -> Response:
    """The dashboard page holds no data: it signs in with client credentials and then uses
    the same API and stream as any other client."""
    return FileResponse(DASHBOARD / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


class GatewayApp:
    """Serves webhooks and the gateway's own endpoints. The store opens in the lifespan."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        plugins: dict[str, Plugin] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        shutdown_grace: float = 5.0,
        run_dir: Path | None = None,
        ledger: bool = True,
    ) -> None:
        """`plugins` defaults to building those the config names (raises ConfigError).
        `run_dir`: this process is one of a supervisor's workers (gateway.supervisor), which
        share sources' rate limits there; the supervisor serves `[metrics] listen` and runs the
        ledger's projector. `ledger=False`: no projector process (the store's ledger still reads)."""
        self.config = config
        self.store = store if store is not None else open_store(config.store)
        self.metrics = metrics if metrics is not None else Metrics()
        self.plugins = plugins if plugins is not None else load_plugins(config)
        self.fanout = Fanout(config.plugins, self.plugins, self.store, self.metrics, clock)
        self.shutdown_grace = shutdown_grace
        self.supervised = run_dir is not None
        # Names this process to the other processes on the store (background jobs' leases).
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.ingest = IngestApp(config, self.store, clock=clock, metrics=self.metrics, shared_dir=run_dir)
        self.store.observe(self.metrics)
        self.metrics.watch_store_size(self.store.size_bytes)
        # The ledger's projector runs in a process of its own (gateway/ledger_process.py); under a
        # supervisor, the supervisor starts it.
        self.ledger = LedgerProcess(LedgerSpec.of(config, self.holder)) if ledger and not self.supervised else None
        self.clock = clock
        for source in config.sources:
            self.metrics.add_ledger_source(source)
        self.tokens = Tokens(config.api, load_or_create_key(config.store.path.parent), clock=clock)
        self.api = Api(self.store, self.tokens, config.api.public, clock=clock, metrics=self.metrics,
                       trusted_proxies=config.server.trusted_proxies, plugins=[p.name for p in config.plugins])
        self.streams = Streams(self.api, self.store)
        self.router = RequestIdMiddleware(BrowserHeadersMiddleware(
            Starlette(
                routes=[
                    Route("/healthz", healthz),
                    Route("/readyz", self._readyz),
                    Route("/metrics", self._metrics),
                    *self.api.routes(),
                    *LedgerApi(self.api).routes(),
                    *OverviewApi(self.api, list(config.sources)).routes(),
                    *self.streams.routes(),
                    Route("/", dashboard),
                    Mount("/dashboard", StaticFiles(directory=DASHBOARD), name="dashboard"),
                ],
                lifespan=self._lifespan,
                exception_handlers=EXCEPTION_HANDLERS,
            )
        ))

    async def _readyz(self, request: Request) -> Response:
        """Ready when the store takes a write within 2 s: only the store, since load balancers
        act on it and a plugin problem on every instance must not take ingest out of rotation.
        The body also has each plugin's health (`ok`, `degraded`, `failed`) and why."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.store.check_writable(), READY_TIMEOUT)
            checks["store"] = "ok"
        except TimeoutError:
            checks["store"] = f"the writer did not commit within {READY_TIMEOUT:g} s (stalled or locked)"
        except Exception as exc:
            checks["store"] = f"not writable: {exc}"
        plugins: dict[str, dict[str, str]] = {}
        for name, runner in self.fanout.runners.items():
            health, reason = runner.health(runner.clock())
            plugins[name] = {"health": health} if reason is None else {"health": health, "reason": reason}
        ready = checks["store"] == "ok"
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks, "plugins": plugins},
                            status_code=200 if ready else 503)

    async def _metrics(self, request: Request) -> Response:
        settings = self.config.metrics
        if settings.listen is not None:
            raise GatewayError("not_found", f"metrics are served on {settings.listen[0]}:{settings.listen[1]}")
        if settings.allow_ips:
            peer = client_address(request.client.host if request.client else None,
                                  [v for k, v in request.scope["headers"] if k == b"x-forwarded-for"],
                                  self.config.server.trusted_proxies)
            if not ip_allowed(settings.allow_ips, peer):
                raise GatewayError("ip_denied", f"{peer} may not read /metrics")
        with contextlib.suppress(Exception):  # the store is down: the figures of the last look stay
            await self.measure_ledger()
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def measure_ledger(self) -> None:
        """The ledger's gauges, read from the store: any process on it reports the same."""
        status = await self.store.ledger_status()
        lag = 0.0 if status.pending_since is None else max(0.0, self.clock() - status.pending_since)
        self.metrics.ledger_measured(lag, await self.store.position_counts(), await self.store.anomaly_counts())

    async def _refresh_metrics(self) -> None:
        """Keep the read gauges current for scrapes that do not come through `_metrics`
        (`[metrics] listen`, served by another thread or by the supervisor), and watch the
        ledger's projector process."""
        while True:
            await asyncio.sleep(METRICS_REFRESH)
            try:
                self.metrics.refresh()
                await self.measure_ledger()
            except Exception as exc:  # a store file being replaced, a restore under way
                log.debug("metrics: cannot measure the store: %s", exc)

    async def _watch_ledger(self) -> None:
        assert self.ledger is not None
        while True:
            await asyncio.sleep(1.0)
            self.ledger.watch()

    async def _retention(self) -> None:
        """Prune events older than `[store] retention_days`, hourly, in small batches with a
        pause between them, so ingest never waits long for the writer. Of the processes on one
        store (workers, a second gateway), the one holding the job's lease prunes; it renews
        the lease each hour, and another takes over once it lapses (or at its stop)."""
        days = self.config.store.retention_days
        while True:
            try:
                if await self.store.hold_job(RETENTION_JOB, self.holder, RETENTION_INTERVAL + RETENTION_GRACE):
                    pruned = await self.store.prune_all(time.time() - days * 86400, pause=0.05)
                    if pruned:
                        log.info("retention: pruned %d event(s) older than %d day(s)", pruned, days)
            except Exception as exc:
                log.warning("retention: pruning failed, will try again: %s", exc)
            await asyncio.sleep(RETENTION_INTERVAL)

    async def _reidentify(self) -> bool:
        """Name the events stored before the identity rules changed again, before requests are
        taken, so their senders' retries still deduplicate against them. False if the store
        cannot be written yet."""
        started = time.monotonic()
        try:
            renamed = await self.store.reidentify(reader(self.config.sources))
        except Exception as exc:
            log.warning("store upgrade: cannot recompute stored identities yet: %s", exc)
            return False
        if renamed:
            log.info("store upgrade: identities of %d stored event(s) recomputed in %.1f s",
                     renamed, time.monotonic() - started)
        return True

    async def _reidentify_later(self) -> None:
        while not await self._reidentify():
            await asyncio.sleep(REIDENTIFY_RETRY)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.store.open()
        shared = await self.store.signing_key(lambda: secrets.token_bytes(MIN_KEY_BYTES))
        if shared is not None:  # every instance on this store signs with the same key
            self.tokens.use_key(shared)
        upgrade = None
        retention = None
        ledger = None
        exporter = None
        if self.config.metrics.listen is not None and not self.supervised:
            host, port = self.config.metrics.listen
            exporter, _ = start_http_server(port, host, registry=self.metrics.registry)
            log.info("metrics on http://%s:%d/metrics", host, exporter.server_port)
        with contextlib.suppress(Exception):  # the ledger's figures before the first scrape
            await self.measure_ledger()
        refresh = asyncio.create_task(self._refresh_metrics(), name="metrics-refresh")
        try:
            if not await self._reidentify():  # the store is not writable yet: keep trying
                upgrade = asyncio.create_task(self._reidentify_later(), name="reidentify")
            await self.streams.start()
            await self.fanout.start()
            if self.config.store.retention_days:
                retention = asyncio.create_task(self._retention(), name="retention")
            if self.ledger is not None:
                self.ledger.start()
                ledger = asyncio.create_task(self._watch_ledger(), name="ledger-watch")
            try:
                yield
            finally:
                if exporter is not None:
                    exporter.shutdown()
                    exporter.server_close()
                for task in (upgrade, retention, ledger, refresh):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if self.ledger is not None:
                    await asyncio.to_thread(self.ledger.stop)
                if retention is not None:  # another process on the store may take the job at once
                    with contextlib.suppress(Exception):
                        await self.store.release_job(RETENTION_JOB, self.holder)
                # uvicorn has stopped taking requests: finish deliveries, then the store.
                await self.fanout.stop(self.shutdown_grace)
        finally:
            await self.store.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self.ingest(scope, receive, send)
        else:
            await self.router(scope, receive, send)
