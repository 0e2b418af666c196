"""Every Prometheus metric of the gateway, defined once, on an injectable registry.

Conventions: `_total` counters, `_seconds` in base units, low-cardinality labels only
(plugin, source, scheme, event type, code; never account or position ids).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


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
        )
        self.delivery_oldest_pending_age = Gauge(
            "gateway_delivery_oldest_pending_age_seconds",
            "Age of the oldest pending delivery, from its event's receipt (0 when none).", ["plugin"], registry=r,
        )
        self.dead_letters = Gauge(
            "gateway_delivery_dead_letters", "Deliveries dead-lettered and not replayed since.", ["plugin"],
            registry=r,
        )

    def add_plugin(self, plugin: str) -> None:
        """Create a plugin's series at zero, so dashboards and alerts see them from the start."""
        for outcome in ("delivered", "retried", "dead"):
            self.deliveries.labels(plugin, outcome)
        self.delivery_latency.labels(plugin)
        self.delivery_attempt_duration.labels(plugin)
        self.delivery_backlog.labels(plugin).set(0)
        self.delivery_oldest_pending_age.labels(plugin).set(0)
        self.dead_letters.labels(plugin).set(0)
