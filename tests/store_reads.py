"""Read what a gateway stored through the store contract, as any backend would show it.

Tests use these instead of opening the SQLite file: the store is opened read-only next to
the running gateway (`gateway.cli.opened_store`), like `gateway events` does.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from typing import Any, TypeVar

from gateway.cli import opened_store
from gateway.config import Config
from gateway.store import DeliveryRecord, EventDetail, Rejection, Store, StoredEvent

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


def detail(config: Config, event_id: int) -> EventDetail:
    """One stored event with its request's raw body and the headers kept."""
    found = on_store(config, lambda store: store.get_event(event_id))
    assert found is not None, f"no event {event_id} in the store"
    return found


def details(config: Config, **filters: Any) -> list[EventDetail]:
    """`detail` of every stored event (filtered), oldest first, read in one go."""
    filters.setdefault("newest_first", False)
    filters.setdefault("limit", ALL)

    async def read(store: Store) -> list[EventDetail]:
        found = [await store.get_event(e.id) for e in await store.list_events(**filters)]
        return [d for d in found if d is not None]

    return on_store(config, read)


def rejections(config: Config, **filters: Any) -> list[Rejection]:
    """Recorded rejections, oldest first."""
    filters.setdefault("limit", ALL)
    return on_store(config, lambda store: store.list_rejections(**filters))[::-1]


def sqlite_receipt_count(config: Config) -> int:
    """Request rows in a SQLite store's file. The contract hands back events, not requests; that a
    refused request left no row at all behind is a property of the storage, read from the file."""
    with closing(sqlite3.connect(f"{config.store.path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        count: int = conn.execute("SELECT count(*) FROM receipts").fetchone()[0]
    return count
