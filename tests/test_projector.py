"""gateway/projector.py: the ledger kept as events come equals the ledger rebuilt from the store,
whatever order they arrived in and however the projector's steps cut them; and both equal the
pure fold of each position's events. On a real SQLite store (the contract suite covers every
backend's side of it: tests/store/test_contract_ledger.py)."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import SourceConfig
from gateway.ledger import fold, position_json
from gateway.projector import Projector, entries_of
from gateway.schemes import metacopier
from gateway.store import EventQuery, Receipt, Store
from gateway.store.ledger_records import AnomalyQuery, PositionQuery
from gateway.store.sqlite import SQLiteStore

SOURCE = SourceConfig(name="src", scheme="metacopier")
TIMES = ["2026-11-20T10:00:00.000Z", "2026-11-20T11:00:00.000Z", "2026-11-20T12:00:00.000Z"]
EVENT = st.tuples(st.sampled_from(["position.opened", "position.closed"]), st.sampled_from(["a", "b", "c"]),
                  st.sampled_from([0.1, 0.2, 0.5, 1.0, None]), st.sampled_from(TIMES),
                  st.sampled_from(["EURUSD", "GBPUSD"]))


def body(event_type: str, position: str, volume: float | None, at: str, symbol: str) -> bytes:
    details: dict[str, Any] = {"id": position, "symbol": symbol, "orderType": "Buy", "openTime": at}
    if volume is not None:
        details["volume"] = volume
    if event_type == "position.closed":
        details["closeTime"] = at
    return orjson.dumps({"type": event_type, "timestamp": at, "accountId": "acc", "position": details})


async def ledger(store: Store) -> tuple[list[dict[str, Any]], list[tuple[str, tuple[int, ...]]]]:
    positions = sorted((dict(p.document) for p in await store.list_positions(PositionQuery(limit=1000))),
                       key=lambda d: d["position_id"])
    anomalies = sorted((a.kind + a.position_id, a.event_ids)
                       for a in await store.list_anomalies(AnomalyQuery(open=True, limit=1000)))
    return positions, anomalies


async def scenario(path: Path, events: list[tuple[Any, ...]], cuts: list[int]) -> None:
    store = SQLiteStore(path, synchronous="OFF")
    await store.open()
    try:
        projector = Projector(store, {"src": None}, holder="test", batch=3)
        counter = itertools.count()
        for n, event in enumerate(events):
            data = body(*event)
            receipt = Receipt(request_id=f"r{next(counter)}", source="src", scheme="metacopier", received_at=1.0,
                              remote_addr=None, attempt=None, headers=(), body=data)
            await store.ingest(receipt, [metacopier.parse(data, SOURCE)])
            if n in cuts:  # the projector runs now and then, mid-stream
                await projector.catch_up()
        await projector.catch_up()
        incremental = await ledger(store)

        await store.ledger_reset()
        await projector.catch_up()
        assert await ledger(store) == incremental

        stored = await store.list_events(EventQuery(newest_first=False, limit=1000))
        by_key: dict[Any, list[Any]] = {}
        for item in entries_of(stored):
            by_key.setdefault(item.key, []).append(item.entry)
        folded = sorted((position_json(fold(entries)) for entries in by_key.values()), key=lambda d: d["position_id"])
        assert incremental[0] == folded
    finally:
        await store.close()


@given(st.lists(EVENT, min_size=1, max_size=12), st.lists(st.integers(0, 11), max_size=4))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_rebuild_equals_incremental_over_random_arrival_orders(events: list[tuple[Any, ...]], cuts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(scenario(Path(folder) / "ledger.db", events, cuts))
