"""Read what a gateway stored through the store contract, as any backend would show it.

Tests use these instead of opening the SQLite file: the store is opened read-only next to
the running gateway (`gateway.cli.opened_store`), like `gateway events` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.cli import opened_store
from gateway.config import Config
from gateway.store import DeliveryRecord, Store, StoredEvent

T = TypeVar("T")
ALL = 1_000_000


def on_store(config: Config, read: Callable[[Store], Awaitable[T]], *, readonly: bool = True) -> T:
    async def run() -> T:
        async with opened_store(config, readonly=readonly) as store:
            return await read(store)

    return asyncio.run(run())


def events(config: Config, **filters: Any) -> list[StoredEvent]:
    """Stored events, oldest first unless `newest_first=True` is given."""
    filters.setdefault("newest_first", False)
    filters.setdefault("limit", ALL)
    return on_store(config, lambda store: store.list_events(**filters))


def deliveries(config: Config, **filters: Any) -> list[DeliveryRecord]:
    """Delivery rows, oldest first."""
    filters.setdefault("limit", ALL)
    return on_store(config, lambda store: store.list_deliveries(**filters))[::-1]
