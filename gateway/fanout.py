"""Fan-out: deliver every stored event to each matching plugin, at least once, in order
per (plugin, source, entity id), with retries, timeouts and dead letters.

Each plugin has its own `PluginRunner`, so a slow, failing or hanging plugin only ever
delays itself. A runner claims due deliveries from the store in batches (never one query per
event), each under a lease that it renews while they wait and run; it runs up to
`concurrency` of them at once (different positions in parallel; the store hands out only the
head of each position's line), and records outcomes in batches, under their claim ids,
through the store's single writer. What a runner holds is in the store, not in the runner:
a claimed delivery is handed to nobody else until its outcome is recorded or its lease ends.

A plugin that cannot start never stops the gateway: ingest goes on, its deliveries wait
(pending), the log says why, and its start is retried with backoff. Its health (`ok`,
`degraded`, `failed`) is in /readyz's body and in `gateway_plugin_health`, never in /readyz's
status: a plugin problem on every instance must not take ingest out of a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Mapping

from gateway.config import PluginConfig
from gateway.metrics import Metrics
from gateway.normalized import normalize
from gateway.plugins import PermanentFailure, Plugin
from gateway.store import Claim, DeliveryResult, Store

log = logging.getLogger("gateway.fanout")

POLL_SECONDS = 1.0  # a backstop: other processes' commits wake the runners (FOREIGN_POLL_SECONDS)
STATS_SECONDS = 1.0
LEASE_SECONDS = 10.0  # a claim's lease: how long a crashed runner's deliveries wait for another
RENEW_SECONDS = LEASE_SECONDS / 3  # held claims are renewed this often, long before they end
START_RETRY_SECONDS = 1.0  # a plugin that cannot start is tried again after this, doubling
START_RETRY_MAX_SECONDS = 60.0


def backoff(config: PluginConfig, attempts: int, rng: random.Random) -> float:
    """Delay before attempt `attempts + 1`: exponential from the base, capped, with jitter."""
    ceiling = min(config.retry_backoff_max_seconds, config.retry_backoff_seconds * 2 ** (attempts - 1))
    return rng.uniform(ceiling / 2, ceiling)


class PluginRunner:
    def __init__(self, config: PluginConfig, plugin: Plugin, store: Store, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.name = config.name
        self.plugin = plugin
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.batch = max(64, config.concurrency * 16)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._wake = asyncio.Event()
        self._held: dict[int, Claim] = {}  # by delivery id: claimed, outcome not recorded yet
        self._renewing: asyncio.Task[None] | None = None
        self._claiming: asyncio.Task[list[Claim]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[DeliveryResult] = []
        self._flushing: asyncio.Task[None] | None = None
        self._next_retry = float("inf")
        self._stats_at = 0.0
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._started = False
        self._start_error: str | None = None  # why the plugin cannot start, while it cannot
        self._starting: asyncio.Task[None] | None = None  # the start retried in the background
        self._last_error: str | None = None  # the latest attempt's error; None after a success
        self._oldest_pending_at: float | None = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def health(self, now: float) -> tuple[str, str | None]:
        """`ok`, `degraded` or `failed`, and why when not `ok`."""
        if self._start_error is not None:
            return "failed", f"cannot start: {self._start_error}"
        if self._started and not self._stopping and not self.running:
            return "failed", "its runner stopped"
        limit = self.config.degraded_after_seconds
        if self._oldest_pending_at is not None and now - self._oldest_pending_at > limit:
            return "degraded", (f"the oldest pending delivery is {now - self._oldest_pending_at:.0f} s old "
                                f"(degraded_after_seconds = {limit:g})")
        if self._last_error is not None:
            return "degraded", f"the latest delivery attempt failed: {self._last_error}"
        return "ok", None

    def _report_health(self) -> None:
        self.metrics.set_plugin_health(self.name, self.health(self.clock())[0])

    async def start(self) -> None:
        """Start the plugin. One that cannot start is logged and retried in the background:
        this never raises, and ingest never waits for a plugin."""
        self.metrics.add_plugin(self.name)
        if not await self._try_start(attempt=1):
            self._starting = asyncio.create_task(self._start_later(), name=f"plugin-{self.name}-start")

    async def _try_start(self, attempt: int) -> bool:
        try:
            await self.plugin.start()
        except Exception as exc:
            self._start_error = _describe(exc)
            self._report_health()
            log.error("plugin %s cannot start (attempt %d), its deliveries wait: %s",
                      self.name, attempt, self._start_error)
            return False
        if self._start_error is not None:
            log.warning("plugin %s started at attempt %d: delivering its pending events", self.name, attempt)
        self._start_error = None
        self._started = True
        self._loop_task = asyncio.create_task(self._loop(), name=f"plugin-{self.name}")
        self._renewing = asyncio.create_task(self._renew_loop(), name=f"plugin-{self.name}-leases")
        self._report_health()
        return True

    async def _start_later(self) -> None:
        attempt = 1
        while True:
            ceiling = min(START_RETRY_MAX_SECONDS, START_RETRY_SECONDS * 2 ** (attempt - 1))
            await asyncio.sleep(self._rng.uniform(ceiling / 2, ceiling))
            attempt += 1
            await self._refresh_stats(self.clock())  # its backlog keeps being reported
            if await self._try_start(attempt):
                return

    async def stop(self, grace: float) -> None:
        """Stop taking deliveries, let those in flight finish for `grace` s, then cancel them."""
        self._stopping = True
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        if self._loop_task is not None:
            # The loop may be waiting for a slot that hanging deliveries hold: cancel it.
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._claiming is not None:
            await self._claiming
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._flush_now()
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
        try:  # cancelled or never started: due again at once, for the next run
            await self.store.release(list(self._held.values()))
        except Exception as exc:  # their leases end by themselves
            log.warning("plugin %s: cannot release %d claim(s): %s", self.name, len(self._held), exc)
        self._held.clear()
        if not self._started:
            return  # never started: nothing to stop
        try:
            await self.plugin.stop()
        except Exception:
            log.exception("plugin %s failed to stop", self.name)

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = self.clock()
            if now - self._stats_at >= STATS_SECONDS:
                await self._refresh_stats(now)
            # Shielded: if stop() cancels the loop meanwhile, the claims still reach `_held`,
            # and stop() releases them.
            self._claiming = asyncio.create_task(self._claim(now))
            claims = await asyncio.shield(self._claiming)
            for claim in claims:
                await self._slots.acquire()
                if self._stopping:
                    self._slots.release()
                    return
                task = asyncio.create_task(self._deliver(claim))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(claims) == self.batch:
                continue  # more may be due right now
            timeout = min(POLL_SECONDS, max(0.0, self._next_retry - self.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self.clock() >= self._next_retry:
                self._next_retry = float("inf")

    async def _claim(self, now: float) -> list[Claim]:
        try:
            claims = await self.store.claim_due(self.name, now, self.batch, LEASE_SECONDS)
        except Exception as exc:  # store fault: keep going, the rows are still there
            log.warning("plugin %s cannot claim its deliveries: %s", self.name, exc)
            return []
        for claim in claims:
            self._held[claim.delivery_id] = claim
        return claims

    async def _renew_loop(self) -> None:
        """Keep the leases of held claims (waiting for a slot or running) from ending."""
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            if self._held:
                try:
                    await self.store.renew(list(self._held.values()), LEASE_SECONDS)
                except Exception as exc:  # a lease that ends is taken over: at least once
                    log.warning("plugin %s: cannot renew %d claim(s): %s", self.name, len(self._held), exc)

    async def _deliver(self, claim: Claim) -> None:
        event = claim.event
        if self.config.shape == "normalized":
            event = dataclasses.replace(event, shape="normalized", normalized=normalize(event))
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                await self.plugin.deliver(event)
        except asyncio.CancelledError:
            raise  # shutdown: still held, released by stop(), delivered after restart
        except PermanentFailure as exc:
            self._last_error = f"permanent failure: {_describe(exc)}"
            result = self._dead(claim, self._last_error)
        except Exception as exc:
            error = (f"timed out after {self.config.timeout_seconds:g} s" if isinstance(exc, TimeoutError)
                     else _describe(exc))
            self._last_error = error
            if event.attempt >= self.config.max_attempts:
                result = self._dead(claim, f"{error} (attempt {event.attempt} of {self.config.max_attempts})")
            else:
                retry_at = self.clock() + backoff(self.config, event.attempt, self._rng)
                self._next_retry = min(self._next_retry, retry_at)
                self.metrics.deliveries.labels(self.name, "retried").inc()
                log.info("plugin %s: event %d attempt %d failed, retrying: %s",
                         self.name, event.id, event.attempt, error)
                result = DeliveryResult(claim.delivery_id, claim.claim_id, "pending", retry_at, error)
        else:
            self._last_error = None
            self.metrics.deliveries.labels(self.name, "delivered").inc()
            self.metrics.delivery_latency.labels(self.name).observe(max(0.0, self.clock() - event.received_at))
            result = DeliveryResult(claim.delivery_id, claim.claim_id, "delivered")
        finally:
            self.metrics.delivery_attempt_duration.labels(self.name).observe(time.monotonic() - started)
            self._slots.release()
            self._report_health()
        self._results.append(result)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_loop())

    def _dead(self, claim: Claim, error: str) -> DeliveryResult:
        self.metrics.deliveries.labels(self.name, "dead").inc()
        log.warning("plugin %s: event %d dead-lettered: %s", self.name, claim.event.id, error)
        return DeliveryResult(claim.delivery_id, claim.claim_id, "dead", 0.0, error)

    async def _flush_loop(self) -> None:
        while self._results:
            await self._flush_now()

    async def _flush_now(self) -> None:
        batch, self._results = self._results, []
        if not batch:
            return
        try:
            refused = await self.store.finish_deliveries(batch)
            if refused:  # a lease ended while the delivery ran, and another holder took over
                log.warning("plugin %s: outcome(s) of delivery(ies) %s refused: claimed again meanwhile",
                            self.name, ", ".join(map(str, refused)))
        except Exception as exc:  # the rows stay pending and are delivered again: at least once
            log.warning("plugin %s: cannot record %d outcome(s): %s", self.name, len(batch), exc)
        finally:
            for result in batch:  # recorded, or claimed again once their lease ends
                self._held.pop(result.id, None)
            self._wake.set()

    async def _refresh_stats(self, now: float) -> None:
        self._stats_at = now
        try:
            stats = await self.store.delivery_stats(self.name)
        except Exception:
            return
        self.metrics.delivery_backlog.labels(self.name).set(stats.pending)
        age = 0.0 if stats.oldest_pending_at is None else max(0.0, now - stats.oldest_pending_at)
        self.metrics.delivery_oldest_pending_age.labels(self.name).set(age)
        self.metrics.dead_letters.labels(self.name).set(stats.dead)
        self._oldest_pending_at = stats.oldest_pending_at
        self._report_health()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:500]


class Fanout:
    """All plugin runners; woken by the store whenever a commit queued deliveries."""

    def __init__(self, configs: tuple[PluginConfig, ...], plugins: Mapping[str, Plugin], store: Store,
                 metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.runners = {c.name: PluginRunner(c, plugins[c.name], store, metrics, clock) for c in configs}
        store.add_commit_listener(self._on_commit)

    def _on_commit(self, plugins: frozenset[str] | None) -> None:
        for name in self.runners if plugins is None else plugins:  # None: another process committed
            runner = self.runners.get(name)
            if runner is not None:
                runner.wake()

    async def start(self) -> None:
        """Start every runner; a plugin that cannot start keeps retrying in the background."""
        for runner in self.runners.values():
            await runner.start()

    async def stop(self, grace: float = 5.0) -> None:
        await asyncio.gather(*(runner.stop(grace) for runner in self.runners.values()))
