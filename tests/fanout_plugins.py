"""Plugins for the fan-out tests, loaded by import string like any third-party plugin."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from gateway.plugins import Event, PermanentFailure, PluginContext


class Recorder:
    """Records successful deliveries; can be slow, flaky, failing, refusing or hanging."""

    def __init__(self, options: Mapping[str, Any], context: PluginContext) -> None:
        self.name = context.name
        self.delay = float(options.get("delay", 0))
        self.fail_first = int(options.get("fail_first", 0))
        self.fail_rate = float(options.get("fail_rate", 0))
        self.always_fail = bool(options.get("always_fail", False))
        self.permanent = bool(options.get("permanent", False))
        self.hang = bool(options.get("hang", False))
        self.log = options.get("log")
        self.delivered: list[Event] = []
        self.calls: list[tuple[int, int]] = []  # (event id, attempt)
        self.in_flight = 0
        self.max_in_flight = 0
        self.rng = random.Random(7)

    async def start(self) -> None:
        """Nothing to open (tests read the plugin object itself: it must not be wrapped)."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def deliver(self, event: Event) -> None:
        self.calls.append((event.id, event.attempt))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hang:
                await asyncio.Event().wait()
            if self.delay:
                await asyncio.sleep(self.delay * self.rng.random())
            if event.attempt <= self.fail_first or self.always_fail:
                raise RuntimeError(f"simulated outage on attempt {event.attempt}")
            if self.permanent:
                raise PermanentFailure("this event is refused")
            if self.rng.random() < self.fail_rate:
                raise ConnectionError("flaky")
            self.delivered.append(event)
            if self.log:
                with open(self.log, "a") as fh:
                    fh.write(f"{event.id} {event.event_type} {event.entity_id}\n")
        finally:
            self.in_flight -= 1


def recorder(options: Mapping[str, Any], context: PluginContext) -> Recorder:
    return Recorder(options, context)
