"""The store contract, what the console reads: events by entity, deliveries counted and filtered
by the store, and the overview's buckets, latency and clock skew (gateway/store/overview.py).
Every backend runs these through the `backend` fixture (tests/store/conftest.py)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from gateway.store import Rejection, Store
from tests.store.conftest import RECEIVED_AT, event, receipt
from tests.store.test_contract_outbox import LATER, LEASE, done, routed

pytestmark = pytest.mark.anyio


async def test_events_by_their_entity(store: Store) -> None:
    await store.ingest(receipt("a"), [event("position:1"), event("position:2", "position.closed")])
    await store.ingest(receipt("b"), [event("position:1", "position.closed")])
    found = await store.list_events(entity="position:1")
    assert [(e.entity_id, e.event_type) for e in found] == [("position:1", "position.closed"),
                                                            ("position:1", "position.opened")]
    assert await store.list_events(entity="position:") == []  # exact, not a prefix


async def test_deliveries_are_counted_and_filtered_by_the_store(store: Store) -> None:
    await routed(store, "e1", "e2", "e3", plugins=("p", "q"))
    await routed(store, "e4", plugins=("p",), source="other")
    claims = await store.claim_due("p", LATER, 10, LEASE)
    await store.finish_deliveries([done(claims[0]), done(claims[1], "dead", error="no")])
    assert await store.delivery_counts() == [("p", "dead", 1), ("p", "delivered", 1), ("p", "pending", 2),
                                             ("q", "pending", 3)]
    assert [d.source for d in await store.list_deliveries(plugin="p", source="other")] == ["other"]
    assert [d.event_type for d in await store.list_deliveries(plugin="q", event_type="type.1")] == ["type.1"]


async def test_the_overview_buckets_events_and_rejections(store: Store) -> None:
    start = RECEIVED_AT - 0.5
    for n, (at, status_event) in enumerate([(0, event("a")), (10, event("b")), (70, event("c")),
                                            (130, event("d", "", quarantine_reason="not JSON"))]):
        await store.ingest(receipt(f"r{n}", received_at=start + at), [status_event])
    store.record_rejection(Rejection(start + 65, "x", "src", "bad_signature", "d", None, (), None, None))
    store.record_rejection(Rejection(start + 66, "y", "src", "bad_signature", "d", None, (), None, None))
    await store.flush()
    data = await store.overview(start, start + 180, 60)
    assert sorted(data.events) == [("src", "quarantined", 2, 1), ("src", "stored", 0, 2), ("src", "stored", 1, 1)]
    assert data.rejections == [("src", "bad_signature", 1, 2)]
    assert (await store.overview(start + 60, start + 120, 60)).events == [("src", "stored", 0, 1)]


async def test_the_overview_reads_latency_and_clock_skew_per_receipt(store: Store) -> None:
    skews = [-2.0, 0.5, 1.0, 3.0, 0.25]
    for n, skew in enumerate(skews):  # received 0.25 s before they reach the store (the monotonic clock)
        await store.ingest(dataclasses.replace(receipt(f"s{n}"), sent_at=RECEIVED_AT + skew,
                                               arrived=time.monotonic() - 0.25), [event(f"s{n}")])
    await store.ingest(receipt("unsigned"), [event("u")])  # a sender that signs no time, no latency known
    data = await store.overview(RECEIVED_AT - 1, RECEIVED_AT + 1, 60)
    median, largest = data.skew["src"]
    assert median == pytest.approx(0.5, abs=1e-6) and largest == pytest.approx(3.0, abs=1e-6)
    assert 0.25 <= data.latency_p99["src"] < 30
    assert (await store.overview(RECEIVED_AT + 10, RECEIVED_AT + 20, 60)).skew == {}
