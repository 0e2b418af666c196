"""Fan-out: deliver every stored event to each matching plugin, at least once, in order
per (plugin, source, entity id), with retries, timeouts and dead letters.

Each plugin has its own `PluginRunner`, so a slow, failing or hanging plugin only ever
delays itself. A runner reads due deliveries from the store in batches (never one query per
event), runs up to `concurrency` of them at once (different positions in parallel; the
store hands out only the head of each position's line), and records outcomes in batches
through the store's single writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping

from gateway.config import PluginConfig
from gateway.metrics import Metrics
from gateway.model import load_payload
from gateway.plugins import Event, PermanentFailure, Plugin
from gateway.store import DeliveryResult, DueDelivery, Store

log = logging.getLogger("gateway.fanout")

POLL_SECONDS = 1.0  # also picks up `gateway replay` from another process
STATS_SECONDS = 1.0


def backoff(config: PluginConfig, attempts: int, rng: random.Random) -> float:
    """Delay before attempt `attempts + 1`: exponential from the base, capped, with jitter."""
    ceiling = min(config.retry_backoff_max_seconds, config.retry_backoff_seconds * 2 ** (attempts - 1))
    return rng.uniform(ceiling / 2, ceiling)


def to_event(due: DueDelivery) -> Event:
    payload = load_payload(due.data)  # None when unparseable, or too deep for plugins to serialise
    return Event(
        id=due.event_id, source=due.source, scheme=due.scheme, event_type=due.event_type,
        entity_id=due.entity_id, dedup_key=due.dedup_key, status=due.status, account=due.account,
        symbol=due.symbol, received_at=due.received_at, payload=payload, body=due.data,
        attempt=due.attempts + 1,
    )


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
        self._in_flight: set[int] = set()
        # A due-query that started before an outcome was committed may still list that
        # delivery as pending: remember when each outcome landed (flush generation) and
        # ignore it in queries that started earlier. Otherwise it would be delivered twice.
        self._generation = 0
        self._finished: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[DeliveryResult] = []
        self._flushing: asyncio.Task[None] | None = None
        self._next_retry = float("inf")
        self._stats_at = 0.0
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._rng = random.Random()

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self) -> None:
        await self.plugin.start()
        self.metrics.add_plugin(self.name)
        self._loop_task = asyncio.create_task(self._loop(), name=f"plugin-{self.name}")

    async def stop(self, grace: float) -> None:
        """Stop taking deliveries, let those in flight finish for `grace` s, then cancel them."""
        self._stopping = True
        if self._loop_task is not None:
            # The loop may be waiting for a slot that hanging deliveries hold: cancel it.
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._flush_now()
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
            generation = self._generation
            try:
                due = await self.store.due_deliveries(self.name, now, self.batch)
            except Exception as exc:  # store fault: keep going, the rows are still there
                log.warning("plugin %s cannot read its deliveries: %s", self.name, exc)
                due = []
            finished = self._finished
            fresh = [d for d in due if d.id not in self._in_flight and finished.get(d.id, -1) <= generation]
            if finished:  # what landed before this query started is reflected from now on
                self._finished = {k: g for k, g in finished.items() if g > generation}
            for delivery in fresh:
                await self._slots.acquire()
                if self._stopping:
                    self._slots.release()
                    return
                self._in_flight.add(delivery.id)
                task = asyncio.create_task(self._deliver(delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(due) == self.batch and fresh:
                continue  # more may be due right now
            timeout = min(POLL_SECONDS, max(0.0, self._next_retry - self.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self.clock() >= self._next_retry:
                self._next_retry = float("inf")

    async def _deliver(self, due: DueDelivery) -> None:
        event = to_event(due)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                await self.plugin.deliver(event)
        except asyncio.CancelledError:
            self._in_flight.discard(due.id)  # shutdown: still pending, delivered after restart
            raise
        except PermanentFailure as exc:
            result = self._dead(due, f"permanent failure: {_describe(exc)}")
        except Exception as exc:
            error = (f"timed out after {self.config.timeout_seconds:g} s" if isinstance(exc, TimeoutError)
                     else _describe(exc))
            if event.attempt >= self.config.max_attempts:
                result = self._dead(due, f"{error} (attempt {event.attempt} of {self.config.max_attempts})")
            else:
                retry_at = self.clock() + backoff(self.config, event.attempt, self._rng)
                self._next_retry = min(self._next_retry, retry_at)
                self.metrics.deliveries.labels(self.name, "retried").inc()
                log.info("plugin %s: event %d attempt %d failed, retrying: %s",
                         self.name, due.event_id, event.attempt, error)
                result = DeliveryResult(due.id, "pending", retry_at, error)
        else:
            self.metrics.deliveries.labels(self.name, "delivered").inc()
            self.metrics.delivery_latency.labels(self.name).observe(max(0.0, self.clock() - due.received_at))
            result = DeliveryResult(due.id, "delivered")
        finally:
            self.metrics.delivery_attempt_duration.labels(self.name).observe(time.monotonic() - started)
            self._slots.release()
        self._results.append(result)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_loop())

    def _dead(self, due: DueDelivery, error: str) -> DeliveryResult:
        self.metrics.deliveries.labels(self.name, "dead").inc()
        log.warning("plugin %s: event %d dead-lettered: %s", self.name, due.event_id, error)
        return DeliveryResult(due.id, "dead", 0.0, error)

    async def _flush_loop(self) -> None:
        while self._results:
            await self._flush_now()

    async def _flush_now(self) -> None:
        batch, self._results = self._results, []
        if not batch:
            return
        try:
            await self.store.finish_deliveries(batch)
        except Exception as exc:  # the rows stay pending and are delivered again: at least once
            log.warning("plugin %s: cannot record %d outcome(s): %s", self.name, len(batch), exc)
        finally:
            self._generation += 1
            for result in batch:
                self._in_flight.discard(result.id)
                self._finished[result.id] = self._generation
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


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:500]


class Fanout:
    """All plugin runners; woken by the store whenever a commit queued deliveries."""

    def __init__(self, configs: tuple[PluginConfig, ...], plugins: Mapping[str, Plugin], store: Store,
                 metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.runners = {c.name: PluginRunner(c, plugins[c.name], store, metrics, clock) for c in configs}
        store.add_commit_listener(self._on_commit)

    def _on_commit(self, plugins: frozenset[str]) -> None:
        for name in plugins:
            runner = self.runners.get(name)
            if runner is not None:
                runner.wake()

    async def start(self) -> None:
        started: list[PluginRunner] = []
        try:
            for runner in self.runners.values():
                await runner.start()
                started.append(runner)
        except BaseException:
            for runner in started:
                await runner.stop(0)
            raise

    async def stop(self, grace: float = 5.0) -> None:
        await asyncio.gather(*(runner.stop(grace) for runner in self.runners.values()))
