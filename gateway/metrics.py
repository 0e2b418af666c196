"""Every Prometheus metric of the gateway, defined once, on an injectable registry.

Conventions: `_total` counters, `_seconds` in base units, low-cardinality labels only
(plugin, source, scheme, event type, code; never account or position ids).

With `gateway run --workers N` every worker counts into prometheus-client's multiprocess
files (the supervisor sets PROMETHEUS_MULTIPROC_DIR before it starts them), and `/metrics`
from any worker, or the supervisor's `[metrics] listen`, reports the sum of all of them,
dead workers' counts included, through the library's MultiProcessCollector. Gauges say how
they combine (`multiprocess_mode`): what the store says (backlogs, dead letters, the store's
size) is the most recent value of a live worker; a plugin's health is per worker (a `pid`
label). Callback gauges (`set_function`) are not exported in that mode, so the store's size
is measured by `refresh()`: at each scrape and every few seconds. docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.ledger import ANOMALY_KINDS

PLUGIN_HEALTH = ("ok", "degraded", "failed")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
INGEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 20)
# Sender timestamp minus receipt time: negative when the sender's clock is behind.
SKEW_BUCKETS = (-300, -60, -10, -2, -0.5, 0, 0.5, 2, 10, 60, 300)
UNKNOWN_SOURCE = "?"
MAX_EVENT_TYPES = 200  # per source; beyond that, "other" (types come from senders)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STORE_WIDE: Final = "livemostrecent"  # a gauge read from the store: any live worker's latest value


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format of `registry`, or of every worker's files when they count into
    PROMETHEUS_MULTIPROC_DIR (`registry` then only names what this process defines)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path is None:
        return generate_latest(registry)
    combined = CollectorRegistry()
    MultiProcessCollector(combined, path)  # type: ignore[no-untyped-call]
    return generate_latest(combined)


class Metrics:
    """The gateway's metrics. Tests build one on a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "gateway_deliveries", "Delivery attempts by plugin and outcome (delivered, retried, dead).",
            ["plugin", "outcome"], registry=r,
        )
        self.delivery_latency = Histogram(
            "gateway_delivery_latency_seconds", "From the event's receipt to the plugin's acknowledgement.",
            ["plugin"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.delivery_attempt_duration = Histogram(
            "gateway_delivery_attempt_duration_seconds", "How long one deliver() call took, whatever its outcome.",
            ["plugin"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.delivery_backlog = Gauge(
            "gateway_delivery_backlog", "Deliveries pending (due or waiting to retry).", ["plugin"], registry=r,
            multiprocess_mode=STORE_WIDE,
        )
        self.delivery_oldest_pending_age = Gauge(
            "gateway_delivery_oldest_pending_age_seconds",
            "Age of the oldest pending delivery, from its event's receipt (0 when none).", ["plugin"], registry=r,
            multiprocess_mode=STORE_WIDE,
        )
        self.dead_letters = Gauge(
            "gateway_delivery_dead_letters", "Deliveries dead-lettered and not replayed since.", ["plugin"],
            registry=r, multiprocess_mode=STORE_WIDE,
        )
        self.plugin_health = Gauge(
            "gateway_plugin_health", "1 for the plugin's current health (ok; degraded: its oldest pending "
            "delivery is older than degraded_after_seconds, or its latest attempt failed; failed: it cannot "
            "start), 0 for the others. With several workers, one series per worker (pid).", ["plugin", "health"],
            registry=r, multiprocess_mode="liveall",
        )
        self.plugin_filtered = Counter(
            "gateway_plugin_filtered", "Stored events a plugin's `where` kept from it: no_match, or error (the "
            "expression failed on the event; logged).", ["plugin", "reason"], registry=r)
        # ingest
        self.requests = Counter("gateway_requests", "Webhook requests by source ('?' for unknown names).",
                                ["source"], registry=r)
        self.events = Counter("gateway_events", "Events by source, event type and outcome (stored, duplicate, "
                              "quarantined, conflict).", ["source", "event_type", "status"], registry=r)
        self.dedup_conflicts = Counter(
            "gateway_dedup_conflicts", "Events whose identity was stored already with other content, kept as "
            "`conflict` (a sender re-sent an event with changed content).", ["source", "event_type"], registry=r)
        self.rejections = Counter("gateway_rejections", "Refused requests by source and code.", ["source", "code"],
                                  registry=r)
        self.ingest_latency = Histogram("gateway_ingest_latency_seconds", "From receipt of a request to the commit "
                                        "of its events.", ["source"], buckets=INGEST_BUCKETS, registry=r)
        self.commit_batch = Histogram("gateway_commit_batch_size", "Events written per group commit.",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.sender_attempt = Histogram("gateway_sender_attempt", "The sender's own delivery attempt number, as "
                                        "received.", ["source"], buckets=ATTEMPT_BUCKETS, registry=r)
        self.sender_clock_skew = Histogram("gateway_sender_clock_skew_seconds", "Sender timestamp minus receipt "
                                           "time.", ["source"], buckets=SKEW_BUCKETS, registry=r)
        self.rejections_dropped = Counter(
            "gateway_rejections_dropped", "Rejections whose forensics were not kept: more arrived than the "
            "store's writer took (they are still counted in gateway_rejections_total).", registry=r)
        self.token_failures = Counter(
            "gateway_token_failures", "Refused client authentications at /oauth/token, by reason: invalid_client "
            "(unknown id or wrong secret) or throttled ([api] token_failures_per_minute reached).", ["reason"],
            registry=r)
        for reason in ("invalid_client", "throttled"):
            self.token_failures.labels(reason)
        self.notification_lag = Histogram(
            "gateway_store_notification_lag_seconds", "From another instance's commit to this instance hearing of "
            "it (PostgreSQL's LISTEN/NOTIFY).", buckets=INGEST_BUCKETS, registry=r)
        self.store_pool = Gauge("gateway_store_pool_connections", "The store's database connections by state "
                                "(PostgreSQL's pool; per instance).", ["state"], registry=r,
                                multiprocess_mode="liveall")
        self.store_size = Gauge("gateway_store_size_bytes", "Size of the store's files (database and WAL).",
                                registry=r, multiprocess_mode=STORE_WIDE)
        # the position ledger (gateway.projector)
        self.positions = Gauge("gateway_positions", "Positions in the ledger by source and state (open, "
                               "partially_closed, closed).", ["source", "state"], registry=r,
                               multiprocess_mode=STORE_WIDE)
        # Counted in the store (the projector runs in a process of its own, and any process on
        # the store may report it): a gauge that only grows, so that every worker reports the
        # same figure; increase() reads it as it reads a counter.
        self.ledger_anomalies = Gauge(
            "gateway_ledger_anomalies_total", "Anomalies the ledger raised so far, by source and kind "
            "(close_without_open, overclosed, stale_open, conflict, reopened, side_or_symbol_mismatch); "
            "read from the store.", ["source", "kind"], registry=r, multiprocess_mode=STORE_WIDE)
        self.ledger_lag = Gauge("gateway_ledger_lag_seconds", "How long the oldest event not yet in the ledger "
                                "has waited since its receipt (0: the ledger is current).", registry=r,
                                multiprocess_mode=STORE_WIDE)
        self._ledger_sources: set[str] = set()
        self._measure_store: Callable[[], float] | None = None
        self._types: dict[str, set[str]] = {}
        # (source, event type, status) -> its children: `labels()` costs about 1 µs a call
        self._event_series: dict[tuple[str, str, str], tuple[Any, Any | None]] = {}

    def event_type_label(self, source: str, event_type: str) -> str:
        """Bound the label's values: senders choose event types."""
        seen = self._types.setdefault(source, set())
        if event_type in seen:
            return event_type or "-"
        if len(seen) >= MAX_EVENT_TYPES:
            return "other"
        seen.add(event_type)
        return event_type or "-"

    def count_events(self, source: str, event_type: str, status: str, count: int = 1) -> None:
        """`gateway_events_total` (and `gateway_dedup_conflicts_total` for a conflict) += count."""
        series = self._event_series.get((source, event_type, status))
        if series is None:
            label = self.event_type_label(source, event_type)
            series = (self.events.labels(source, label, status),
                      self.dedup_conflicts.labels(source, label) if status == "conflict" else None)
            if label != "other":  # bounded like the labels: types beyond the cap are looked up each time
                self._event_series[(source, event_type, status)] = series
        series[0].inc(count)
        if series[1] is not None:
            series[1].inc(count)

    def watch_store_size(self, measure: Callable[[], float]) -> None:
        self._measure_store = measure
        self.refresh()

    def refresh(self) -> None:
        """Measure the gauges that are read rather than counted (the store's size)."""
        if self._measure_store is not None:
            with contextlib.suppress(OSError):  # a file replaced between listing and measuring
                self.store_size.set(self._measure_store())

    def exposition(self) -> bytes:
        self.refresh()
        return exposition(self.registry)

    # gateway.store.StoreObserver: the store reports through these.
    def group_committed(self, events: int) -> None:
        self.commit_batch.observe(events)

    def rejection_dropped(self) -> None:
        self.rejections_dropped.inc()

    def notification_heard(self, lag: float) -> None:
        self.notification_lag.observe(max(0.0, lag))

    def pool_measured(self, busy: int, idle: int) -> None:
        self.store_pool.labels("busy").set(busy)
        self.store_pool.labels("idle").set(idle)

    def ledger_measured(self, lag: float, positions: Sequence[tuple[str, str, int]],
                        anomalies: Sequence[tuple[str, str, int]]) -> None:
        """The ledger's figures as read from the store (`GatewayApp.measure_ledger`); every
        configured source's series, at 0 where the store has none."""
        self.ledger_lag.set(lag)
        counted = {(source, state): n for source, state, n in positions}
        for source in self._ledger_sources | {source for source, _ in counted}:
            for state in ("open", "partially_closed", "closed"):
                self.positions.labels(source, state).set(counted.get((source, state), 0))
        raised = {(source, kind): n for source, kind, n in anomalies}
        for source in self._ledger_sources | {source for source, _ in raised}:
            for kind in ANOMALY_KINDS:
                self.ledger_anomalies.labels(source, kind).set(raised.get((source, kind), 0))

    def add_ledger_source(self, source: str) -> None:
        """Report this source's ledger series, at 0 while the store has none. Set at the first
        look at the store, not before: a worker starting must not report 0 over the store's
        count (the gauges take the most recent value of any worker)."""
        self._ledger_sources.add(source)

    def add_plugin(self, plugin: str) -> None:
        """Create a plugin's series at zero, so dashboards and alerts see them from the start."""
        for outcome in ("delivered", "retried", "dead"):
            self.deliveries.labels(plugin, outcome)
        self.delivery_latency.labels(plugin)
        self.delivery_attempt_duration.labels(plugin)
        self.delivery_backlog.labels(plugin).set(0)
        self.delivery_oldest_pending_age.labels(plugin).set(0)
        self.dead_letters.labels(plugin).set(0)
        self.set_plugin_health(plugin, "ok")

    def set_plugin_health(self, plugin: str, health: str) -> None:
        for value in PLUGIN_HEALTH:
            self.plugin_health.labels(plugin, value).set(1 if value == health else 0)
