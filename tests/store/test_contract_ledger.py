"""The store contract, the position ledger: what gateway.projector writes and the API reads.
Every backend runs these through the `backend` fixture (tests/store/conftest.py), driven by the
real projector over real MetaCopier events."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
import pytest

from gateway.config import SourceConfig
from gateway.projector import LEDGER_JOB, Projector
from gateway.schemes import metacopier
from gateway.store import Store
from gateway.store.ledger_records import AnomalyQuery, LedgerWrite, PositionQuery
from tests.store.conftest import one, receipt

pytestmark = pytest.mark.anyio

SOURCE = SourceConfig(name="src", scheme="metacopier")
_requests = itertools.count(1)


async def send(store: Store, event_type: str, position: str = "p-1", volume: float | None = 1.0,
               at: str = "2026-11-20T10:00:00.000Z", account: str = "acc-1", **fields: Any) -> int:
    """Store one MetaCopier position event, as ingest would; returns its id."""
    details: dict[str, Any] = {"id": position, "symbol": "EURUSD", "orderType": "Buy", "openPrice": 1.085,
                               "openTime": at, **fields}
    if volume is not None:
        details["volume"] = volume
    if event_type == "position.closed":
        details |= {"closeTime": at, "closePrice": 1.087, "profit": 10.0}
    body = orjson.dumps({"type": event_type, "timestamp": at, "accountId": account, "position": details})
    parsed = metacopier.parse(body, SOURCE)
    outcome = await one(store, receipt(f"req-{next(_requests)}", body=body), parsed)
    assert outcome.id is not None
    return outcome.id


def projector(store: Store, **kwargs: Any) -> Projector:
    return Projector(store, {"src": kwargs.pop("max_open_days", None)}, holder="test", **kwargs)


async def position(store: Store, position_id: str = "p-1", account: str = "acc-1") -> dict[str, Any]:
    found = await store.get_position(("src", account, position_id))
    assert found is not None
    return dict(found.document)


async def kinds(store: Store, **filters: Any) -> list[str]:
    return sorted(a.kind for a in await store.list_anomalies(AnomalyQuery(**filters)))


async def test_an_open_then_partial_and_full_closes(store: Store) -> None:
    p = projector(store)
    assert (await store.ledger_status()).checkpoint == 0
    first = await send(store, "position.opened", volume=1.0)
    await p.catch_up()
    opened = await position(store)
    assert (opened["state"], opened["side"], opened["symbol"]) == ("open", "buy", "EURUSD")
    assert opened["opened_volume"] == 1.0
    assert opened["event_ids"] == [first]
    partial = await send(store, "position.closed", volume=0.4, at="2026-11-20T11:00:00.000Z")
    await p.catch_up()
    assert ((await position(store))["state"], (await position(store))["open_volume"]) == ("partially_closed", 0.6)
    last = await send(store, "position.closed", volume=0.6, at="2026-11-20T12:00:00.000Z")
    await p.catch_up()
    closed = await position(store)
    assert (closed["state"], closed["closed_volume"], closed["profit"]) == ("closed", 1.0, 20.0)
    assert closed["event_ids"] == [first, partial, last]
    # a state that had positions and has none now stays listed, at 0 (a gauge goes down to 0)
    assert await store.position_counts() == [("src", "closed", 1), ("src", "open", 0), ("src", "partially_closed", 0)]
    status = await store.ledger_status()
    assert (status.checkpoint, status.latest, status.pending_since) == (last, last, None)
    assert await kinds(store) == []


async def test_a_close_before_its_open_is_raised_then_resolved(store: Store) -> None:
    p = projector(store)
    close = await send(store, "position.closed", volume=1.0, at="2026-11-20T11:00:00.000Z")
    await p.catch_up()
    [raised] = await store.list_anomalies(AnomalyQuery())
    assert (raised.kind, raised.event_ids, raised.resolved_at) == ("close_without_open", (close,), None)
    assert raised.open
    assert [p.document["position_id"] for p in await store.list_positions(PositionQuery(anomalous=True))] == ["p-1"]
    await send(store, "position.opened", volume=1.0)
    await p.catch_up()
    [resolved] = await store.list_anomalies(AnomalyQuery())
    assert resolved.id == raised.id and resolved.resolved_at is not None and not resolved.open
    assert (await position(store))["state"] == "closed"
    assert await store.list_positions(PositionQuery(anomalous=True)) == []
    assert await store.list_anomalies(AnomalyQuery(open=True)) == []
    assert [a.id for a in await store.list_anomalies(AnomalyQuery(open=False))] == [raised.id]


async def test_every_other_anomaly_and_acknowledging_one(store: Store) -> None:
    p = projector(store)
    await send(store, "position.opened", "over", volume=1.0)
    await send(store, "position.closed", "over", volume=1.5, at="2026-11-20T11:00:00.000Z")
    await send(store, "position.opened", "again", volume=1.0)
    await send(store, "position.closed", "again", volume=1.0, at="2026-11-20T11:00:00.000Z")
    await send(store, "position.opened", "again", volume=2.0, at="2026-11-21T10:00:00.000Z")
    await send(store, "position.opened", "odd", volume=1.0)
    await send(store, "position.closed", "odd", volume=1.0, at="2026-11-20T11:00:00.000Z", symbol="GBPUSD")
    await p.catch_up()
    assert await kinds(store, position_id="over") == ["overclosed"]
    assert await kinds(store, position_id="again") == ["reopened"]
    assert await kinds(store, position_id="odd") == ["side_or_symbol_mismatch"]
    [mismatch] = await store.list_anomalies(AnomalyQuery(kind="side_or_symbol_mismatch"))
    acked = await store.acknowledge_anomaly(mismatch.id, "the broker renamed the symbol", 1_800_000_000.0)
    assert acked is not None and acked.acked_at == 1_800_000_000.0 and acked.note == "the broker renamed the symbol"
    assert not acked.open and acked.resolved_at is None  # acknowledged: still listed, marked as such
    assert [a.kind for a in await store.list_anomalies(AnomalyQuery(open=True))] == ["reopened", "overclosed"]
    assert await store.acknowledge_anomaly(10**9, "no such", 1.0) is None
    assert {p.document["position_id"] for p in await store.list_positions(PositionQuery(anomalous=True))} == {
        "over", "again"}
    assert {p.document["position_id"] for p in await store.list_positions(PositionQuery(anomalous=False))} == {"odd"}


async def test_a_conflict_stays_open_until_acknowledged(store: Store) -> None:
    p = projector(store)
    await send(store, "position.opened", volume=1.0)
    await send(store, "position.opened", volume=2.0)  # the same occurrence, other content: a conflict
    await p.catch_up()
    [conflict] = await store.list_anomalies(AnomalyQuery())
    assert conflict.kind == "conflict" and len(conflict.event_ids) == 1
    assert (await position(store))["opened_volume"] == 1.0  # the second version is not counted
    await send(store, "position.closed", volume=1.0, at="2026-11-20T11:00:00.000Z")
    await p.catch_up()
    [still] = await store.list_anomalies(AnomalyQuery())
    assert still.open and (await position(store))["state"] == "closed"
    await store.acknowledge_anomaly(still.id, "checked with the sender", time.time())
    await p.catch_up()
    [acked] = await store.list_anomalies(AnomalyQuery())
    assert not acked.open and acked.note == "checked with the sender"


async def test_stale_open_past_the_sources_max_open_days(store: Store) -> None:
    now = [1_795_996_800.0]  # 2026-11-30
    p = projector(store, max_open_days=3, clock=lambda: now[0])
    await send(store, "position.opened", "old", volume=1.0, at="2026-11-20T10:00:00.000Z")
    await send(store, "position.opened", "new", volume=1.0, at="2026-11-29T10:00:00.000Z")
    await p.catch_up()
    assert await kinds(store) == ["stale_open"]
    assert await p.stale() == 0  # raised already: not folded again
    now[0] += 86_400 * 3
    assert await p.stale() == 1  # "new" is now older than 3 days
    assert await kinds(store, open=True) == ["stale_open", "stale_open"]
    await send(store, "position.closed", "old", volume=1.0, at="2026-12-01T10:00:00.000Z")
    await p.catch_up()
    assert await kinds(store, position_id="old", open=True) == []
    assert await kinds(store, position_id="old", open=False) == ["stale_open"]


async def test_a_write_lands_only_on_the_checkpoint_it_was_planned_from(store: Store) -> None:
    await send(store, "position.opened")
    await projector(store).catch_up()
    before = await store.ledger_status()
    assert await store.ledger_write(LedgerWrite(after=before.checkpoint - 1, checkpoint=99, at=time.time())) is None
    assert (await store.ledger_status()).checkpoint == before.checkpoint


async def test_rebuild_gives_the_same_ledger_and_keeps_acknowledgements(store: Store) -> None:
    p = projector(store)
    await send(store, "position.closed", "a", volume=1.0)
    await send(store, "position.opened", "b", volume=1.0)
    await send(store, "position.closed", "b", volume=0.25, at="2026-11-20T11:00:00.000Z")
    await send(store, "position.opened", "c", volume=1.0)
    await send(store, "position.closed", "c", volume=2.0, at="2026-11-20T11:00:00.000Z", symbol="GBPUSD")
    await p.catch_up()
    [over] = await store.list_anomalies(AnomalyQuery(kind="overclosed"))
    await store.acknowledge_anomaly(over.id, "known", 1_800_000_000.0)
    positions = [(x.id, dict(x.document)) for x in await store.list_positions(PositionQuery())]
    anomalies = await store.list_anomalies(AnomalyQuery())
    counts = await store.position_counts()

    await store.ledger_reset()
    assert await store.list_positions(PositionQuery()) == [] and (await store.ledger_status()).checkpoint == 0
    seen = []
    await p.catch_up(progress=lambda status: seen.append(status.checkpoint))
    assert seen and seen[-1] == (await store.ledger_status()).latest
    assert [dict(x.document) for x in await store.list_positions(PositionQuery())] == [d for _, d in positions]
    assert await store.list_anomalies(AnomalyQuery()) == anomalies  # the same rows, the acknowledgement kept
    assert [c for c in await store.position_counts() if c[2]] == [c for c in counts if c[2]]


async def test_rebuild_keeps_positions_whose_events_were_pruned(store: Store) -> None:
    p = projector(store)
    await send(store, "position.opened", "kept", volume=1.0)
    await p.catch_up()
    assert await store.prune_all(time.time() + 1) == 1  # retention took the event; the ledger keeps it
    await store.ledger_reset()
    await p.catch_up()
    assert (await position(store, "kept"))["state"] == "open"
    assert not (await store.ledger_status()).orphans
    await send(store, "position.closed", "kept", volume=1.0, at="2026-11-20T11:00:00.000Z")
    await p.catch_up()
    assert (await position(store, "kept"))["state"] == "closed"


async def test_listing_filters_and_pages(store: Store) -> None:
    for n in range(5):
        await send(store, "position.opened", f"p{n}", account="acc-2" if n % 2 else "acc-1")
    await send(store, "position.closed", "p0", at="2026-11-20T11:00:00.000Z")
    await projector(store).catch_up()
    everything = await store.list_positions(PositionQuery())
    assert [x.document["position_id"] for x in everything] == ["p4", "p3", "p2", "p1", "p0"]
    first = await store.list_positions(PositionQuery(limit=2))
    rest = await store.list_positions(PositionQuery(after=first[-1].id, limit=10))
    assert first + rest == everything
    assert [x.document["position_id"] for x in await store.list_positions(PositionQuery(account="acc-2"))] == [
        "p3", "p1"]
    assert [x.document["position_id"] for x in await store.list_positions(PositionQuery(state="closed"))] == ["p0"]
    assert await store.list_positions(PositionQuery(symbol="GBPUSD")) == []
    assert len(await store.list_positions(PositionQuery(source="src", symbol="EURUSD"))) == 5
    assert await store.position_counts() == [("src", "closed", 1), ("src", "open", 4)]


async def test_one_projector_at_a_time_and_a_dead_ones_lease_ends(backend: Any) -> None:
    first, second = await backend.open(), await backend.open()
    assert await first.hold_job(LEDGER_JOB, "a", 0.5)
    assert not await second.hold_job(LEDGER_JOB, "b", 0.5)
    await asyncio.sleep(0.6)  # "a" died without releasing: its lease runs out
    assert await second.hold_job(LEDGER_JOB, "b", 0.5)


async def test_the_running_projector_follows_commits_within_a_second(store: Store) -> None:
    p = projector(store)
    job = asyncio.create_task(p.run())
    try:
        await send(store, "position.opened", volume=1.0)
        committed = time.monotonic()
        while await store.get_position(("src", "acc-1", "p-1")) is None:
            assert time.monotonic() - committed < 1.0, "not projected within a second"
            await asyncio.sleep(0.01)
    finally:
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    assert await store.hold_job(LEDGER_JOB, "another", 5)  # released at its stop
