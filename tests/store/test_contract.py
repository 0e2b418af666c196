"""The event store contract, events: ingest, dedup, batches, reads, lifecycle. Every backend
runs these tests through the `backend` fixture (tests/store/conftest.py); the outbox,
rejections and upkeep are in test_contract_outbox.py."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from gateway.errors import StoreUnavailable
from gateway.model import Outcome, ParsedEvent, dedup_key
from gateway.store import DeliveryResult, EventQuery, Store, StoredEvent
from tests.store.conftest import RECEIVED_AT, event, one, receipt

pytestmark = pytest.mark.anyio

# --- storing one event ------------------------------------------------------------------------


async def test_ingest_one_event_and_read_it_back(store: Store) -> None:
    outcome = await one(store, receipt(), event(account="acc-1", symbol="EURUSD"))
    assert outcome.status == "stored"
    assert outcome.dedup_key == "src:position.opened:88412231"
    assert isinstance(outcome.id, int)
    assert outcome.id > 0

    assert await store.list_events() == [
        StoredEvent(
            id=outcome.id, source="src", scheme="metacopier", event_type="position.opened",
            entity_id="88412231", dedup_key="src:position.opened:88412231", status="stored",
            conflicts_with=None, account="acc-1", symbol="EURUSD", received_at=RECEIVED_AT, request_id="req-1",
            attempt=2,
            remote_addr="203.0.113.7",
            payload={"type": "position.opened", "position": {"id": "88412231"}},  # the receipt body
            quarantine_reason=None,
        )
    ]


async def test_payload_comes_from_the_event_when_set(store: Store) -> None:
    body = b'{"payload":[{"eventType":"open_position","payload":{"id":1}}],"count":1}'
    member = b'{"eventType":"open_position","payload":{"id":1}}'
    await one(store, receipt(scheme="tradrapi", body=body), event("1", "open_position", payload=member))
    [stored] = await store.list_events()
    assert stored.payload == {"eventType": "open_position", "payload": {"id": 1}}


async def test_quarantined_event_with_an_unreadable_body(store: Store) -> None:
    body = b"\xff\xfe not json at all"
    ev = event("sha256-abc", "", quarantine_reason="body is not JSON")
    outcome = await one(store, receipt(body=body), ev)
    assert outcome.status == "quarantined"
    assert outcome.dedup_key == "src:-:sha256-abc"

    [stored] = await store.list_events()
    assert stored.status == "quarantined"
    assert stored.event_type == ""
    assert stored.payload is None
    assert stored.quarantine_reason == "body is not JSON"
    assert stored.to_json()["event_type"] is None
    assert stored.to_json()["quarantine_reason"] == "body is not JSON"


async def test_received_at_round_trips_to_the_microsecond(store: Store) -> None:
    now = time.time()
    await one(store, receipt("exact"), event("1"))
    await one(store, receipt("now", received_at=now), event("2"))
    newest, oldest = await store.list_events()
    assert oldest.received_at == RECEIVED_AT
    assert abs(newest.received_at - now) < 1e-6


async def test_to_json_is_the_public_shape(store: Store) -> None:
    outcome = await one(store, receipt(), event(account="acc-1", symbol="EURUSD"))
    [stored] = await store.list_events()
    data = stored.to_json()
    assert data == {
        "id": outcome.id,
        "source": "src",
        "scheme": "metacopier",
        "event_type": "position.opened",
        "entity_id": "88412231",
        "dedup_key": "src:position.opened:88412231",
        "status": "stored",
        "conflicts_with": None,
        "account": "acc-1",
        "symbol": "EURUSD",
        "received_at": "2025-11-20T10:15:02.123Z",
        "request_id": "req-1",
        "attempt": 2,
        "remote_addr": "203.0.113.7",
        "quarantine_reason": None,
        "payload": {"type": "position.opened", "position": {"id": "88412231"}},
        "normalized": {  # its trading meaning, with what the sender left out
            "kind": "position.opened", "source": "src", "event_id": outcome.id, "account": None,
            "position_id": "88412231", "order_id": None, "symbol": None, "side": None, "volume": None, "price": None,
            "sl": None, "tp": None, "profit": None, "currency": None, "amount": None, "operation": None,
            "occurred_at": None, "problems": ["volume: missing", "side: missing (position.orderType or orderType)"]},
    }
    parsed = datetime.fromisoformat(data["received_at"].replace("Z", "+00:00"))
    assert parsed.tzinfo == UTC
    assert abs(parsed.timestamp() - RECEIVED_AT) < 0.001
    orjson.dumps(data)  # serialisable as is


# --- deduplication ----------------------------------------------------------------------------


async def test_same_key_again_is_a_duplicate_of_the_original(store: Store) -> None:
    first = await one(store, receipt("req-1"), event())
    again = await one(store, receipt("req-2", body=b'{"retry":true}', attempt=3), event())
    assert again == Outcome(first.id, "duplicate", first.dedup_key)
    [stored] = await store.list_events()
    assert stored.request_id == "req-1"
    assert stored.attempt == 2
    assert stored.payload == {"type": "position.opened", "position": {"id": "88412231"}}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("src", "position.opened", "1"), ("src", "position.closed", "1")),
        (("src", "position.opened", "1"), ("other", "position.opened", "1")),
        (("src", "position.opened", "1"), ("src", "position.opened", "2")),
        (("src", "a:b", "c"), ("src", "a", "b:c")),  # ':' is escaped, keys never collide
        (("src", "a%3Ab", "c"), ("src", "a:b", "c")),
        pytest.param(("src", "", "1"), ("src", "-", "1"), id="quarantined-vs-dash-type"),
    ],
)
async def test_different_key_is_a_new_event(
    store: Store, first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    outcomes = []
    for i, (source, event_type, entity_id) in enumerate((first, second)):
        reason = None if event_type else "no type"
        outcomes.append(await one(store, receipt(f"req-{i}", source=source),
                                  event(entity_id, event_type, quarantine_reason=reason)))
    assert [o.status for o in outcomes] == [
        "quarantined" if not first[1] else "stored",
        "quarantined" if not second[1] else "stored",
    ]
    assert outcomes[0].id != outcomes[1].id
    assert outcomes[0].dedup_key == dedup_key(first[0], first[1], (first[2],))
    assert outcomes[1].dedup_key == dedup_key(second[0], second[1], (second[2],))
    assert len(await store.list_events()) == 2


async def test_dedup_survives_a_restart(backend: Any) -> None:
    store = await backend.open()
    first = await one(store, receipt("req-1"), event())
    await store.close()

    reopened = await backend.open()
    assert reopened is not store
    assert await one(reopened, receipt("req-2"), event()) == Outcome(first.id, "duplicate", first.dedup_key)
    fresh = await one(reopened, receipt("req-3"), event("other"))
    assert fresh.status == "stored"
    assert fresh.id > first.id
    assert [e.id for e in await reopened.list_events()] == [fresh.id, first.id]


# --- conflicts: one identity, other content -----------------------------------------------------

OPENED_AT = "2026-11-20T10:15:01Z"
KEY = f"src:position.opened:88412231@{OPENED_AT}"


def version(fingerprint: bytes, entity: str = "88412231", **extra: Any) -> ParsedEvent:
    """An occurrence named by (position id, open time), with the digest of its content."""
    return event(entity, identity=(entity, OPENED_AT), fingerprint=fingerprint, **extra)


async def test_a_conflicting_version_is_stored_beside_the_first(store: Store) -> None:
    first = await one(store, receipt("req-1"), version(b"volume 0.5"))
    assert first == Outcome(first.id, "stored", KEY, None)

    second = await one(store, receipt("req-2"), version(b"volume 5.0"))
    assert second == Outcome(second.id, "conflict", KEY, first.id)
    assert second.id > first.id
    # A retry of either version is a duplicate of that version, not another conflict.
    assert await one(store, receipt("req-3"), version(b"volume 5.0")) == Outcome(second.id, "duplicate", KEY)
    assert await one(store, receipt("req-4"), version(b"volume 0.5")) == Outcome(first.id, "duplicate", KEY)
    # A third version points at the first stored version too, never at another conflict.
    third = await one(store, receipt("req-5"), version(b"volume 9.9"))
    assert third == Outcome(third.id, "conflict", KEY, first.id)

    listed = await store.list_events()
    assert [(e.id, e.status, e.conflicts_with, e.request_id) for e in listed] == [
        (third.id, "conflict", first.id, "req-5"), (second.id, "conflict", first.id, "req-2"),
        (first.id, "stored", None, "req-1")]
    assert {e.dedup_key for e in listed} == {KEY}
    assert [e.id for e in await store.list_events(status="conflict")] == [third.id, second.id]
    assert listed[1].to_json()["conflicts_with"] == first.id
    assert listed[2].to_json()["conflicts_with"] is None
    detail = await store.get_event(second.id)
    assert detail is not None
    assert (detail.event.status, detail.event.conflicts_with) == ("conflict", first.id)
    assert await store.event_stats(None, None) == [
        ("src", "position.opened", "conflict", 2), ("src", "position.opened", "stored", 1)]


async def test_conflicts_within_one_batch_and_across_calls(store: Store) -> None:
    earlier = await one(store, receipt("req-0"), version(b"A", "1"))
    batch = [
        version(b"B", "1"),  # conflicts with the earlier request's version
        version(b"A", "1"),  # a retry of the earlier version
        version(b"B", "1"),  # a retry of the conflict just above, in the same batch
        version(b"A", "2"),  # a new identity...
        version(b"C", "2"),  # ...and its conflicting version, both new in this batch
        version(b"A", "2"),
        version(b"C", "2"),
    ]
    outcomes = await store.ingest(receipt("req-batch", scheme="tradrapi"), batch)
    assert [(o.status, o.conflicts_with) for o in outcomes] == [
        ("conflict", earlier.id), ("duplicate", None), ("duplicate", None),
        ("stored", None), ("conflict", outcomes[3].id), ("duplicate", None), ("duplicate", None)]
    assert [o.id for o in outcomes[1:3]] == [earlier.id, outcomes[0].id]
    assert [o.id for o in outcomes[5:]] == [outcomes[3].id, outcomes[4].id]
    assert len({outcomes[0].id, outcomes[3].id, outcomes[4].id, earlier.id}) == 4

    stored = {e.id: e for e in await store.list_events()}
    assert {i: (e.status, e.conflicts_with) for i, e in stored.items()} == {
        earlier.id: ("stored", None), outcomes[0].id: ("conflict", earlier.id),
        outcomes[3].id: ("stored", None), outcomes[4].id: ("conflict", outcomes[3].id)}

    # The next call sees both versions of each identity.
    again = await store.ingest(receipt("req-again"), [version(b"C", "2"), version(b"B", "1"), version(b"D", "1")])
    assert [(o.id, o.status, o.conflicts_with) for o in again] == [
        (outcomes[4].id, "duplicate", None), (outcomes[0].id, "duplicate", None),
        (again[2].id, "conflict", earlier.id)]


async def test_two_versions_racing_give_one_stored_and_one_conflict(store: Store) -> None:
    for n in range(5):  # whatever the grouping of the two requests
        results = await asyncio.gather(one(store, receipt(f"req-{n}-a"), version(b"A", f"race-{n}")),
                                       one(store, receipt(f"req-{n}-b"), version(b"B", f"race-{n}")))
        winner, loser = sorted(results, key=lambda o: o.id)
        assert (winner.status, winner.conflicts_with) == ("stored", None)
        assert (loser.status, loser.conflicts_with) == ("conflict", winner.id)


async def test_conflicts_are_found_after_a_restart(backend: Any) -> None:
    store = await backend.open()
    first = await one(store, receipt("req-1"), version(b"A"))
    await store.close()
    reopened = await backend.open()
    assert await one(reopened, receipt("req-2"), version(b"A")) == Outcome(first.id, "duplicate", KEY)
    conflict = await one(reopened, receipt("req-3"), version(b"B"))
    assert (conflict.status, conflict.conflicts_with) == ("conflict", first.id)


async def test_claimed_events_carry_their_conflict(store: Store) -> None:
    first = await store.ingest(receipt("req-1"), [version(b"A")], [["p"]])
    second = await store.ingest(receipt("req-2"), [version(b"B")], [["p"]])
    [head] = await store.claim_due("p", RECEIVED_AT + 3600, 10, 30)  # one entity: one line
    assert (head.event.id, head.event.status, head.event.conflicts_with) == (first[0].id, "stored", None)
    assert await store.finish_deliveries([DeliveryResult(head.delivery_id, head.claim_id, "delivered")]) == []
    [claim] = await store.claim_due("p", RECEIVED_AT + 3600, 10, 30)
    assert (claim.event.id, claim.event.status, claim.event.conflicts_with) == (second[0].id, "conflict", first[0].id)
    assert claim.event.dedup_key == KEY
    assert claim.event.to_json()["conflicts_with"] == first[0].id


# --- ids are never reused ---------------------------------------------------------------------


async def test_ids_are_never_reused_after_a_prune_of_everything(store: Store, backend: Any) -> None:
    later = RECEIVED_AT + 3600
    old = [(await store.ingest(receipt(f"req-{n}"), [event(str(n))], [["p"]]))[0].id for n in range(3)]
    claims = await store.claim_due("p", later, 10, 30)
    assert len(claims) == 3
    await store.finish_deliveries([DeliveryResult(c.delivery_id, c.claim_id, "delivered") for c in claims])
    old_deliveries = {c.delivery_id for c in claims}
    old_receipts = backend.receipt_ids()
    assert len(old_receipts) == 3

    assert await store.prune_all(later) == 3
    assert await store.list_events() == []
    assert await store.list_deliveries() == []
    assert backend.receipt_ids() == []

    [new] = await store.ingest(receipt("req-new"), [event("0")], [["p"]])  # the same entity as before
    assert new.status == "stored"
    assert new.id > max(old)
    [delivery] = await store.list_deliveries()
    assert delivery.id > max(old_deliveries)
    [receipt_id] = backend.receipt_ids()
    assert receipt_id > max(old_receipts)
    assert await store.latest_event_id() == new.id


async def test_ids_are_never_reused_after_a_prune_and_a_restart(backend: Any) -> None:
    store = await backend.open()
    old = [o.id for o in await store.ingest(receipt("req-old"), [event("1"), event("2"), event("3")])]
    assert await store.prune_all(RECEIVED_AT + 1) == 3
    await store.close()
    reopened = await backend.open()
    [new] = await reopened.ingest(receipt("req-new"), [event("1")], [["p"]])
    assert new.id > max(old)


# --- batches ----------------------------------------------------------------------------------


async def test_batch_statuses_come_back_in_order(store: Store) -> None:
    earlier = await one(store, receipt("req-0"), event("1"))
    batch = [
        event("2", payload=b'{"n":2}'),
        event("1", payload=b'{"n":1}'),           # stored by an earlier request
        event("3", payload=b'{"n":3}'),
        event("3", payload=b'{"n":"3 again"}'),  # same key, no fingerprint: the key alone decides
        event("sha256-x", "", payload=b"{broken", quarantine_reason="member is not JSON"),
        event("4", "position.closed", payload=b'{"n":4}'),
    ]
    outcomes = await store.ingest(receipt("req-batch", scheme="tradrapi", body=b"[the whole batch]"), batch)

    assert [o.status for o in outcomes] == ["stored", "duplicate", "stored", "duplicate", "quarantined", "stored"]
    assert outcomes[1].id == earlier.id
    assert outcomes[3].id == outcomes[2].id
    assert [o.dedup_key for o in outcomes] == [dedup_key("src", e.event_type, (e.entity_id,)) for e in batch]
    new_ids = [outcomes[i].id for i in (0, 2, 4, 5)]
    assert len(set(new_ids)) == 4
    assert earlier.id not in new_ids

    stored = {e.id: e for e in await store.list_events()}
    assert set(stored) == {earlier.id, *new_ids}
    assert stored[outcomes[2].id].payload == {"n": 3}  # the first copy wins
    assert stored[outcomes[4].id].payload is None
    assert {stored[i].request_id for i in new_ids} == {"req-batch"}
    assert stored[earlier.id].request_id == "req-0"


async def test_a_request_of_only_duplicates_stores_nothing(store: Store, backend: Any) -> None:
    await store.ingest(receipt("req-1"), [event("1"), event("2")])
    outcomes = await store.ingest(receipt("req-2"), [event("2"), event("1")])
    assert [o.status for o in outcomes] == ["duplicate", "duplicate"]
    assert backend.count_receipts() == 1


async def test_empty_request(store: Store) -> None:
    assert await store.ingest(receipt(), []) == []
    assert await store.list_events() == []


async def test_a_failed_batch_stores_none_of_its_events(store: Store, backend: Any) -> None:
    earlier = await one(store, receipt("req-0"), event("0"))
    backend.fail_inserts_of("boom")
    batch = [event("1"), event("0"), event("2"), event("boom")]

    with pytest.raises(StoreUnavailable) as info:
        await store.ingest(receipt("req-batch"), batch)
    assert info.value.status == 503
    assert [e.id for e in await store.list_events()] == [earlier.id]
    assert backend.count_receipts() == 1

    # The store keeps working, and the retried batch goes through once the fault is gone.
    assert (await one(store, receipt("req-other"), event("other"))).status == "stored"
    backend.heal()
    outcomes = await store.ingest(receipt("req-retry"), batch)
    assert [o.status for o in outcomes] == ["stored", "duplicate", "stored", "stored"]
    assert len(await store.list_events()) == 5


async def test_one_failing_request_does_not_fail_its_group(store: Store, backend: Any) -> None:
    """Requests committed in the same group as a failing one are retried on their own."""
    backend.fail_inserts_of("poison")
    entities = [f"ok-{i}" for i in range(30)]
    entities.insert(15, "poison")
    results = await asyncio.gather(
        *(one(store, receipt(f"req-{e}"), event(e)) for e in entities), return_exceptions=True
    )
    failed = [e for e, r in zip(entities, results, strict=True) if isinstance(r, BaseException)]
    assert failed == ["poison"]
    assert isinstance(results[15], StoreUnavailable)
    assert sorted(e.entity_id for e in await store.list_events(limit=100)) == sorted(entities[:15] + entities[16:])


# --- group commit -----------------------------------------------------------------------------


async def test_concurrent_requests_share_commits(store: Store) -> None:
    commits_before = getattr(store, "commits", 0)
    completed: list[int] = []

    async def send(i: int) -> Outcome:
        outcome = await one(store, receipt(f"req-{i}"), event(str(i)))
        completed.append(outcome.id)
        return outcome

    outcomes = await asyncio.gather(*(send(i) for i in range(200)))

    assert {o.status for o in outcomes} == {"stored"}
    ids = [o.id for o in outcomes]
    assert len(set(ids)) == 200
    assert completed == sorted(completed)  # answered in commit order, ids increasing
    assert ids == sorted(ids)  # queued in call order, committed in that order
    if hasattr(store, "commits"):
        commits = store.commits - commits_before
        print(f"200 concurrent ingests took {commits} commit(s)")
        assert 1 <= commits < 200

    later = await one(store, receipt("req-later"), event("later"))
    assert later.id > max(ids)
    listed = await store.list_events(limit=1000)
    assert [e.id for e in listed] == sorted([*ids, later.id], reverse=True)


# --- read-only stores -------------------------------------------------------------------------


async def test_readonly_store_needs_an_existing_store(backend: Any) -> None:
    with pytest.raises(FileNotFoundError):
        await backend.new(readonly=True).open()


async def test_readonly_store_refuses_a_database_without_the_schema(backend: Any) -> None:
    backend.create_without_schema()
    with pytest.raises(FileNotFoundError):
        await backend.new(readonly=True).open()


async def test_readonly_store_refuses_an_empty_file(backend: Any) -> None:
    backend.config.path.write_bytes(b"")
    with pytest.raises(FileNotFoundError):
        await backend.new(readonly=True).open()


async def test_readonly_store_refuses_a_file_that_is_not_a_database(backend: Any) -> None:
    backend.config.path.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(FileNotFoundError):
        await backend.new(readonly=True).open()  # teardown closes the leaked reader


async def test_readonly_store_reads_while_a_writer_is_open(store: Store, backend: Any) -> None:
    first = await one(store, receipt("req-1"), event("1"))
    reader = await backend.open(readonly=True)
    assert [e.id for e in await reader.list_events()] == [first.id]

    second = await one(store, receipt("req-2"), event("2"))
    assert [e.id for e in await reader.list_events()] == [second.id, first.id]

    with pytest.raises(StoreUnavailable):
        await reader.ingest(receipt("req-3"), [event("3")])


async def test_readonly_store_reads_after_the_writer_closed(backend: Any) -> None:
    writer = await backend.open()
    first = await one(writer, receipt("req-1"), event("1"))
    await writer.close()
    reader = await backend.open(readonly=True)
    assert [e.id for e in await reader.list_events()] == [first.id]


# --- filters ----------------------------------------------------------------------------------


async def test_list_events_filters_and_order(store: Store) -> None:
    ids = {}
    for name, source, event_type, entity, reason in [
        ("a-open", "src-a", "position.opened", "1", None),
        ("b-open", "src-b", "position.opened", "2", None),
        ("a-close", "src-a", "position.closed", "1", None),
        ("a-hist", "src-a", "history.updated", "h", None),
        ("a-quar", "src-a", "", "q", "no type"),
        ("b-close", "src-b", "position.closed", "2", None),
    ]:
        outcome = await one(store, receipt(name, source=source), event(entity, event_type, quarantine_reason=reason))
        ids[name] = outcome.id

    async def listed(**filters: Any) -> list[str]:
        by_id = {v: k for k, v in ids.items()}
        return [by_id[e.id] for e in await store.list_events(**filters)]

    assert await listed() == ["b-close", "a-quar", "a-hist", "a-close", "b-open", "a-open"]
    assert await listed(source="src-a") == ["a-quar", "a-hist", "a-close", "a-open"]
    assert await listed(event_type="position.*") == ["b-close", "a-close", "b-open", "a-open"]
    assert await listed(event_type="position.closed") == ["b-close", "a-close"]
    assert await listed(event_type="*.updated") == ["a-hist"]
    assert await listed(event_type="Position.*") == []
    assert await listed(status="quarantined") == ["a-quar"]
    assert await listed(status="stored", source="src-b") == ["b-close", "b-open"]
    assert await listed(source="src-a", event_type="position.*") == ["a-close", "a-open"]
    assert await listed(limit=2) == ["b-close", "a-quar"]
    assert await listed(source="src-a", limit=1) == ["a-quar"]
    assert await listed(source="nobody") == []


# --- what is kept of the request --------------------------------------------------------------


async def test_receipt_is_kept_exactly(store: Store, backend: Any) -> None:
    headers = [("content-type", "application/json"), ("x-multi", "1"), ("x-multi", "2"), ("x-latin", "caf\xe9")]
    body = b"\x00\xff\xfe{not utf-8}\r\n\x80"
    await one(store, receipt("req-raw", body=body, headers=headers, remote_addr="2001:db8::1", attempt=5),
              event("raw", quarantine_reason="body is not JSON"))

    stored_headers, stored_body = backend.raw_receipt("req-raw")
    assert stored_headers == [list(h) for h in headers]
    assert stored_body == body
    [stored] = await store.list_events()
    assert stored.remote_addr == "2001:db8::1"
    assert stored.attempt == 5
    assert stored.payload is None


async def test_unknown_remote_and_attempt_round_trip(store: Store) -> None:
    await one(store, receipt(remote_addr=None, attempt=None, headers=()), event())
    [stored] = await store.list_events()
    assert stored.remote_addr is None
    assert stored.attempt is None


# --- lifecycle --------------------------------------------------------------------------------


async def test_ingest_before_open_is_unavailable(backend: Any) -> None:
    with pytest.raises(StoreUnavailable):
        await backend.new().ingest(receipt(), [event()])


async def test_ingest_after_close_is_unavailable(store: Store) -> None:
    await one(store, receipt("req-1"), event("1"))
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ingest(receipt("req-2"), [event("2")])


async def test_close_commits_what_is_queued(backend: Any) -> None:
    store = await backend.open()
    pending = [asyncio.create_task(one(store, receipt(f"req-{i}"), event(str(i)))) for i in range(5)]
    await asyncio.sleep(0)  # every request is queued
    await store.close()
    assert {(await p).status for p in pending} == {"stored"}
    reopened = await backend.open(readonly=True)
    assert len(await reopened.list_events()) == 5


async def test_ingest_racing_close_does_not_hang(store: Store) -> None:
    closing_task = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # close() has queued its stop marker and waits for the writer
    try:
        async with asyncio.timeout(2):
            with pytest.raises(StoreUnavailable):
                await store.ingest(receipt(), [event()])
    finally:
        await closing_task


# --- every read of events ---------------------------------------------------------------------


async def test_list_events_every_filter(store: Store) -> None:
    ids: dict[str, int] = {}
    for name, source, scheme, entity, account, symbol, at in [
        ("mc-1", "a", "metacopier", "1", "acc-1", "EURUSD", RECEIVED_AT),
        ("ps-2", "b", "pipsync", "2", "acc-2", "GBPUSD", RECEIVED_AT + 10),
        ("mc-3", "a", "metacopier", "3", "acc-1", "GBPUSD", RECEIVED_AT + 20),
        ("tr-4", "c", "tradrapi", "4", None, None, RECEIVED_AT + 30),
    ]:
        ids[name] = (await one(store, receipt(name, source=source, scheme=scheme, received_at=at),
                               event(entity, account=account, symbol=symbol))).id
    names = {v: k for k, v in ids.items()}

    async def listed(**filters: Any) -> list[str]:
        return [names[e.id] for e in await store.list_events(**filters)]

    assert await listed(scheme="metacopier") == ["mc-3", "mc-1"]
    assert await listed(account="acc-1") == ["mc-3", "mc-1"]
    assert await listed(symbol="GBPUSD") == ["mc-3", "ps-2"]
    assert await listed(since=RECEIVED_AT + 10) == ["tr-4", "mc-3", "ps-2"]
    assert await listed(until=RECEIVED_AT + 20) == ["ps-2", "mc-1"]  # until is exclusive
    assert await listed(since=RECEIVED_AT + 10, until=RECEIVED_AT + 30) == ["mc-3", "ps-2"]
    assert await listed(newest_first=False) == ["mc-1", "ps-2", "mc-3", "tr-4"]
    assert await listed(query=EventQuery(source="a", newest_first=False)) == ["mc-1", "mc-3"]


async def test_keyset_pages_never_skip_or_repeat_while_events_arrive(store: Store) -> None:
    for i in range(5):
        await one(store, receipt(f"r{i}"), event(str(i)))
    first = await store.list_events(limit=2)
    await one(store, receipt("late"), event("late"))  # arrives between two pages
    rest = await store.list_events(after=first[-1].id, limit=10)
    assert [e.entity_id for e in first + rest] == ["4", "3", "2", "1", "0"]

    forward = await store.list_events(newest_first=False, limit=3)
    more = await store.list_events(newest_first=False, after=forward[-1].id, limit=10)
    assert [e.entity_id for e in forward + more] == ["0", "1", "2", "3", "4", "late"]


async def test_get_event_has_the_raw_request(store: Store) -> None:
    headers = [("content-type", "application/json"), ("x-attempt", "2")]
    body = b'{"type":"position.opened","position":{"id":"7"}}'
    outcome = await one(store, receipt("req-get", body=body, headers=headers), event("7"))
    detail = await store.get_event(outcome.id)
    assert detail is not None
    assert detail.body == body
    assert detail.headers == headers
    assert detail.event == (await store.list_events())[0]
    assert await store.get_event(outcome.id + 1000) is None


async def test_event_stats_count_by_source_type_and_status(store: Store) -> None:
    await one(store, receipt("1", source="a"), event("1"))
    await one(store, receipt("2", source="a"), event("2"))
    await one(store, receipt("3", source="a"), event("3", "", quarantine_reason="no type"))
    await one(store, receipt("4", source="b", received_at=RECEIVED_AT + 100), event("4", "position.closed"))
    assert await store.event_stats(None, None) == [
        ("a", "", "quarantined", 1), ("a", "position.opened", "stored", 2), ("b", "position.closed", "stored", 1)]
    assert await store.event_stats(RECEIVED_AT + 50, None) == [("b", "position.closed", "stored", 1)]
    assert await store.event_stats(None, RECEIVED_AT + 50) == [
        ("a", "", "quarantined", 1), ("a", "position.opened", "stored", 2)]


async def test_latest_event_id_and_event_listeners(store: Store) -> None:
    assert await store.latest_event_id() == 0
    heard: list[int] = []
    store.add_event_listener(heard.append)
    first = await one(store, receipt("1"), event("1"))
    outcomes = await store.ingest(receipt("2"), [event("2"), event("3")])
    await one(store, receipt("dup"), event("1"))  # a duplicate stores nothing: no call
    assert heard == [first.id, outcomes[1].id]
    assert await store.latest_event_id() == outcomes[1].id


# --- recomputing identities (an upgraded store) -----------------------------------------------

def _named_by_body(source: str, scheme: str, data: bytes, member: bool) -> ParsedEvent | None:
    """A stand-in scheme reader: names each event by its body's `id` and its `at`, ordered by `id`."""
    if scheme == "gone":
        return None
    doc = orjson.loads(data)
    return ParsedEvent(event_type="t", entity_id=f"position:{doc['id']}", identity=(doc["id"], doc["at"]),
                       fingerprint=orjson.dumps(doc["v"]))


async def test_reidentify_names_old_events_again_in_id_order(backend: Any) -> None:
    store = await backend.open()
    bodies = [{"id": "1", "at": "a", "v": 1}, {"id": "1", "at": "b", "v": 2}, {"id": "2", "at": "a", "v": 3},
              {"id": "2", "at": "a", "v": 4}]  # the last shares an identity with the third: a conflict
    ids = []
    for n, doc in enumerate(bodies):  # written under old rules: named by a per-request entity
        ids.append((await one(store, receipt(f"r{n}", body=orjson.dumps(doc)), event(f"old-{n}", "t"))).id)
    gone = (await one(store, receipt("g", scheme="gone", body=b"{}"), event("old-gone", "t"))).id
    await store.close()
    backend.forget_identities()

    store = await backend.open()
    assert await store.reidentify(_named_by_body) == 5
    by_id = {e.id: e for e in await store.list_events()}
    assert [by_id[i].dedup_key for i in ids] == ["src:t:1@a", "src:t:1@b", "src:t:2@a", "src:t:2@a"]
    assert [by_id[i].entity_id for i in ids] == ["position:1", "position:1", "position:2", "position:2"]
    assert [(by_id[i].status, by_id[i].conflicts_with) for i in ids] == [
        ("stored", None), ("stored", None), ("stored", None), ("conflict", ids[2])]
    assert (by_id[gone].dedup_key, by_id[gone].status) == ("src:t:old-gone", "stored")  # no reader: kept as is
    assert await store.reidentify(_named_by_body) == 0  # once

    # retries now deduplicate against the new identities, each against its own version
    again = ParsedEvent(event_type="t", entity_id="position:2", identity=("2", "a"), fingerprint=orjson.dumps(4))
    assert (await one(store, receipt("retry"), again)).status == "duplicate"
    assert (await one(store, receipt("retry"), again)).id == ids[3]
    fresh = ParsedEvent(event_type="t", entity_id="position:1", identity=("1", "c"), fingerprint=b"x")
    assert (await one(store, receipt("new"), fresh)).id > gone
