"""The event store contract, the rest: routes, claims and leases, outcomes, replay and retry,
delivery listings and stats, wake-ups, rejections, retention, size, writability and backup.
Every backend runs these tests through the `backend` fixture (tests/store/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.model import Event
from gateway.store import Claim, DeliveryResult, Rejection, Store
from tests.conftest import wait_for_async
from tests.store.conftest import RECEIVED_AT, event, one, receipt

pytestmark = pytest.mark.anyio

LATER = RECEIVED_AT + 3600  # "now" for claims: everything received is due
LEASE = 30.0


async def routed(store: Store, *entities: str, plugins: tuple[str, ...] = ("p",), source: str = "src") -> list[int]:
    """One request per entity, each event (its own type: an entity may come again) routed to
    `plugins`; returns the event ids."""
    ids = []
    for n, entity in enumerate(entities):
        outcomes = await store.ingest(receipt(f"req-{source}-{entity}-{n}", source=source),
                                      [event(entity, f"type.{n}")], [list(plugins)])
        ids.append(outcomes[0].id)
    return ids


def done(claim: Claim, status: str = "delivered", **extra: Any) -> DeliveryResult:
    return DeliveryResult(claim.delivery_id, claim.claim_id, status, **extra)  # type: ignore[arg-type]


# --- routes -----------------------------------------------------------------------------------


async def test_routes_write_deliveries_with_the_events(store: Store) -> None:
    outcomes = await store.ingest(receipt("r"), [event("1"), event("2"), event("3")], [["p", "q"], [], ["q"]])
    rows = await store.list_deliveries(limit=10)
    assert sorted((d.plugin, d.event_id) for d in rows) == sorted(
        [("p", outcomes[0].id), ("q", outcomes[0].id), ("q", outcomes[2].id)])
    assert {d.status for d in rows} == {"pending"}
    assert {d.attempts for d in rows} == {0}
    # a duplicate is not routed again
    await store.ingest(receipt("again"), [event("1")], [["p", "q"]])
    assert len(await store.list_deliveries(limit=10)) == 3


async def test_claims_carry_ready_events(store: Store) -> None:
    body = b'{"type":"position.opened","position":{"id":"9"}}'
    [outcome] = await store.ingest(receipt("r", body=body), [event("9", account="acc", symbol="EURUSD")], [["p"]])
    [claim] = await store.claim_due("p", LATER, 10, LEASE)
    assert claim.plugin == "p"
    assert claim.attempt == 1
    assert claim.lease_until == LATER + LEASE
    assert claim.event == Event(
        id=outcome.id, source="src", scheme="metacopier", event_type="position.opened", entity_id="9",
        dedup_key="src:position.opened:9", status="stored", conflicts_with=None, account="acc", symbol="EURUSD",
        received_at=RECEIVED_AT, payload={"type": "position.opened", "position": {"id": "9"}}, body=body, attempt=1,
    )
    assert claim.event.to_json()["received_at"] == "2025-11-20T10:15:02.123Z"


# --- claims: order, one per entity, leases ----------------------------------------------------


async def test_claims_are_oldest_first_one_per_entity(store: Store) -> None:
    ids = await routed(store, "a", "b", "a", "c", "b")
    first = await store.claim_due("p", LATER, 10, LEASE)
    assert [c.event.id for c in first] == [ids[0], ids[1], ids[3]]  # the head of each entity's line
    assert await store.claim_due("p", LATER, 10, LEASE) == []  # claimed: not handed out again
    assert await store.claim_due("other", LATER, 10, LEASE) == []  # plugins have their own lines

    assert await store.finish_deliveries([done(first[0])]) == []
    [next_a] = await store.claim_due("p", LATER, 10, LEASE)  # "a" moves up; "b" is still claimed
    assert next_a.event.id == ids[2]
    await store.finish_deliveries([done(first[1]), done(first[2]), done(next_a)])
    [last] = await store.claim_due("p", LATER, 10, LEASE)
    assert last.event.id == ids[4]


async def test_claim_limit_and_due_time(store: Store) -> None:
    ids = await routed(store, "a", "b", "c")
    assert await store.claim_due("p", RECEIVED_AT - 1, 10, LEASE) == []  # not due before receipt
    assert [c.event.id for c in await store.claim_due("p", LATER, 2, LEASE)] == ids[:2]
    assert [c.event.id for c in await store.claim_due("p", LATER, 2, LEASE)] == ids[2:]


async def test_an_expired_lease_is_claimed_again_and_the_old_outcome_refused(store: Store) -> None:
    await routed(store, "a", "a")
    [old] = await store.claim_due("p", LATER, 10, 5)
    assert await store.claim_due("p", LATER + 4, 10, 5) == []  # the lease holds; "a"'s line waits
    [new] = await store.claim_due("p", LATER + 6, 10, 5)  # the holder died: taken over
    assert new.delivery_id == old.delivery_id
    assert new.claim_id != old.claim_id
    assert new.attempt == old.attempt == 1

    assert await store.finish_deliveries([done(old, "dead", error="late")]) == [old.delivery_id]
    [row] = await store.list_deliveries(delivery_id=old.delivery_id)
    assert (row.status, row.last_error) == ("pending", None)  # the late outcome changed nothing
    assert await store.renew([old], LEASE) == []  # nor can the old holder keep it

    assert await store.finish_deliveries([done(new)]) == []
    [row] = await store.list_deliveries(delivery_id=new.delivery_id)
    assert (row.status, row.attempts) == ("delivered", 1)


async def test_renewed_leases_hold(store: Store) -> None:
    await routed(store, "a")
    now = time.time()
    [claim] = await store.claim_due("p", now, 10, 1)
    [renewed] = await store.renew([claim], 100)
    assert renewed.claim_id == claim.claim_id
    assert renewed.lease_until >= now + 99
    assert await store.claim_due("p", now + 50, 10, 1) == []  # without the renewal it would be due
    assert len(await store.claim_due("p", now + 101, 10, 1)) == 1


async def test_released_claims_are_due_again_with_their_attempts(store: Store) -> None:
    await routed(store, "a", "b")
    claims = await store.claim_due("p", LATER, 10, LEASE)
    await store.release(claims)
    again = await store.claim_due("p", LATER, 10, LEASE)
    assert [c.delivery_id for c in again] == [c.delivery_id for c in claims]
    assert {c.attempt for c in again} == {1}


# --- outcomes ---------------------------------------------------------------------------------


async def test_retry_waits_for_its_time_and_holds_the_line(store: Store) -> None:
    ids = await routed(store, "a", "a")
    [claim] = await store.claim_due("p", LATER, 10, LEASE)
    await store.finish_deliveries([done(claim, "pending", next_attempt_at=LATER + 60, error="boom")])
    [row] = await store.list_deliveries(delivery_id=claim.delivery_id)
    assert (row.status, row.attempts, row.last_error, row.next_attempt_at) == ("pending", 1, "boom", LATER + 60)
    assert await store.claim_due("p", LATER + 59, 10, LEASE) == []  # and the second "a" waits behind it
    [retry] = await store.claim_due("p", LATER + 60, 10, LEASE)
    assert (retry.event.id, retry.attempt) == (ids[0], 2)


async def test_dead_letters_let_the_line_move_and_count_in_stats(store: Store) -> None:
    ids = await routed(store, "a", "a", "b")
    assert (await store.delivery_stats("p")).pending == 3
    assert (await store.delivery_stats("p")).oldest_pending_at == RECEIVED_AT
    first = await store.claim_due("p", LATER, 10, LEASE)
    await store.finish_deliveries([done(first[0], "dead", error="gave up"), done(first[1])])
    stats = await store.delivery_stats("p")
    assert (stats.pending, stats.dead) == (1, 1)
    assert [c.event.id for c in await store.claim_due("p", LATER, 10, LEASE)] == [ids[1]]
    assert await store.delivery_stats("nobody") == type(stats)(pending=0, oldest_pending_at=None, dead=0)


async def test_delivery_listing_filters(store: Store) -> None:
    ids = await routed(store, "a", "b", plugins=("p", "q"))
    [claim_a, _] = await store.claim_due("p", LATER, 10, LEASE)
    await store.finish_deliveries([done(claim_a, "dead", error="no")])
    listed = await store.list_deliveries(limit=10)
    assert [d.id for d in listed] == sorted((d.id for d in listed), reverse=True)  # newest first
    assert {(d.plugin, d.event_id) for d in await store.list_deliveries(plugin="q")} == {("q", i) for i in ids}
    [dead] = await store.list_deliveries(status="dead")
    assert (dead.plugin, dead.event_id, dead.last_error, dead.source, dead.entity_id) == ("p", ids[0], "no", "src", "a")
    assert dead.to_json()["next_attempt_at"] is None
    assert {d.plugin for d in await store.list_deliveries(event_id=ids[1])} == {"p", "q"}
    assert len(await store.list_deliveries(limit=1)) == 1


# --- replay, retry and wake-ups ---------------------------------------------------------------


async def test_commit_listeners_hear_of_routes_replays_and_retries(store: Store) -> None:
    heard: list[frozenset[str]] = []
    store.add_commit_listener(heard.append)
    ids = await routed(store, "a", plugins=("p", "q"))
    await store.ingest(receipt("unrouted"), [event("u")])
    assert heard == [frozenset({"p", "q"})]

    [claim] = await store.claim_due("p", LATER, 10, LEASE)
    await store.finish_deliveries([done(claim, "dead", error="x")])
    assert await store.replay("p", dead=True) == 1
    assert heard[-1] == frozenset({"p"})
    assert await store.replay("p", dead=True) == 0
    assert await store.replay("r", event_id=ids[0]) == 1  # a plugin that never had it
    assert heard[-1] == frozenset({"r"})
    assert await store.retry_delivery(claim.delivery_id)
    assert heard[-1] == frozenset({"p"})
    count = len(heard)
    assert not await store.retry_delivery(10**9)
    assert await store.replay("p", event_id=10**9) == 0
    assert len(heard) == count  # nothing changed: nobody woken


async def test_a_failing_listener_never_leaves_a_writer_unanswered(store: Store) -> None:
    def broken(_: object) -> None:
        raise RuntimeError("a listener's bug")

    store.add_commit_listener(broken)
    store.add_event_listener(broken)
    results = await asyncio.wait_for(asyncio.gather(*(routed(store, f"e{n}") for n in range(20))), 10)
    assert len({ids[0] for ids in results}) == 20  # every request answered, each its own event
    await store.check_writable()  # and the writer goes on


async def test_commits_by_another_process_wake_listeners_within_50_ms(backend: Any, store: Store) -> None:
    """Another store on the same location (a second worker, a second gateway, the CLI) commits:
    this one's runners and streams hear of it within 50 ms (p99), with no commit of its own."""
    other = await backend.open()
    woken: list[tuple[float, frozenset[str] | None]] = []
    newest: list[tuple[float, int]] = []
    store.add_commit_listener(lambda plugins: woken.append((time.monotonic(), plugins)))
    store.add_event_listener(lambda n: newest.append((time.monotonic(), n)))
    delays = []
    for n in range(100):
        [event_id] = await routed(other, f"e{n}")
        committed = time.monotonic()
        heard = await wait_for_async(lambda: next((at for at, seen in newest if seen >= event_id), None),  # noqa: B023
                                     timeout=5, what=f"event {event_id} heard of")
        delays.append(heard - committed)
    # Which plugins: any (None; SQLite only learns that something was committed), or at least the
    # one the commits made due (PostgreSQL's notification names them).
    assert woken and all(plugins is None or "p" in plugins for _, plugins in woken)
    delays.sort()
    assert delays[98] <= 0.05, f"p99 {delays[98] * 1000:.0f} ms; median {delays[50] * 1000:.0f} ms"
    mine = len(newest)
    await routed(store, "own")  # its own commits are heard as its own, not twice
    await store.check_writable()
    assert len(newest) == mine + 1


async def test_replay_and_retry_make_deliveries_due_again(store: Store) -> None:
    [event_id] = await routed(store, "a")
    [claim] = await store.claim_due("p", LATER, 10, LEASE)
    await store.finish_deliveries([done(claim)])
    assert await store.replay("p", event_id=event_id) == 1
    [again] = await store.claim_due("p", time.time(), 10, LEASE)
    assert (again.delivery_id, again.attempt) == (claim.delivery_id, 1)  # the same row, attempts reset
    await store.finish_deliveries([done(again, "pending", next_attempt_at=time.time() + 3600, error="e")])
    assert await store.retry_delivery(claim.delivery_id)  # due now, not in an hour
    [retried] = await store.claim_due("p", time.time(), 10, LEASE)
    assert retried.attempt == 1
    with pytest.raises(ValueError, match="event id or dead"):
        await store.replay("p")
    assert len(await store.list_deliveries(limit=10)) == 1  # never a second copy


# --- rejections -------------------------------------------------------------------------------


def rejection(n: int, source: str = "src", code: str = "bad_signature", known: bool = True) -> Rejection:
    return Rejection(RECEIVED_AT + n, f"rej-{n}", source, code, f"detail {n}", "203.0.113.9",
                     ("content-type", "x-signature"), 10 + n, None, known_source=known)


async def test_rejections_are_kept_and_listed(store: Store) -> None:
    store.record_rejection(rejection(1))
    store.record_rejection(rejection(2, code="stale_timestamp"))
    store.record_rejection(rejection(3, source="nosuch", code="unknown_source", known=False))
    await store.flush()
    listed = await store.list_rejections()
    assert [r.request_id for r in listed] == ["rej-3", "rej-2", "rej-1"]
    assert listed[2] == Rejection(RECEIVED_AT + 1, "rej-1", "src", "bad_signature", "detail 1", "203.0.113.9",
                                  ("content-type", "x-signature"), 11, None, known_source=True, id=listed[2].id)
    assert listed[0].known_source is False
    assert [r.request_id for r in await store.list_rejections(source="src")] == ["rej-2", "rej-1"]
    assert [r.request_id for r in await store.list_rejections(code="stale_timestamp")] == ["rej-2"]
    assert [r.request_id for r in await store.list_rejections(limit=1)] == ["rej-3"]


async def test_rejections_are_capped_per_source(backend: Any) -> None:
    backend.config = type(backend.config)(path=backend.config.path, url=backend.config.url,
                                          rejections_per_source=3)
    store = await backend.open()
    for n in range(6):
        store.record_rejection(rejection(n))
        store.record_rejection(rejection(100 + n, source=f"unknown-{n}", known=False))  # one shared bucket
    store.record_rejection(rejection(50, source="other"))
    await store.flush()
    assert [r.request_id for r in await store.list_rejections(source="src")] == ["rej-5", "rej-4", "rej-3"]
    assert [r.request_id for r in await store.list_rejections(source="other")] == ["rej-50"]
    unknown = [r.request_id for r in await store.list_rejections(limit=100) if not r.known_source]
    assert unknown == ["rej-105", "rej-104", "rej-103"]


class Observer:
    def __init__(self) -> None:
        self.groups: list[int] = []
        self.dropped = 0

    def group_committed(self, events: int) -> None:
        self.groups.append(events)

    def rejection_dropped(self) -> None:
        self.dropped += 1


async def test_a_rejection_flood_is_dropped_and_counted(backend: Any, store: Store) -> None:
    observer = Observer()
    store.observe(observer)
    async with backend.writer_busy(store):  # the flood comes faster than the writer drains
        for n in range(2500):
            store.record_rejection(rejection(n, source=f"src-{n % 10}"))  # under the per-source cap
    assert store.rejections_dropped > 0
    assert observer.dropped == store.rejections_dropped
    await store.flush()
    kept = len(await store.list_rejections(limit=10_000))
    assert kept + store.rejections_dropped == 2500


async def test_the_observer_hears_of_each_commit_that_stored_events(store: Store) -> None:
    observer = Observer()
    store.observe(observer)
    await store.ingest(receipt("r1"), [event("1"), event("2")])
    await store.ingest(receipt("r2"), [event("1")])  # only a duplicate: nothing written
    await store.check_writable()
    assert observer.groups == [2]


# --- retention, size, writability, backup -----------------------------------------------------


async def test_one_process_at_a_time_holds_a_background_job(backend: Any, store: Store) -> None:
    other = await backend.open()  # another process on the same store
    assert await store.hold_job("retention", "a", 60)
    assert not await other.hold_job("retention", "b", 60)
    assert await store.hold_job("retention", "a", 60)  # renewed by its holder
    await other.release_job("retention", "b")  # not b's to give up: nothing changes
    assert not await other.hold_job("retention", "b", 60)
    assert await other.hold_job("another-job", "b", 60)  # each job has its own lease
    await store.release_job("retention", "a")
    assert await other.hold_job("retention", "b", 60)
    assert not await store.hold_job("retention", "a", 60)


async def test_every_instance_on_a_store_signs_with_one_key(backend: Any, store: Store) -> None:
    """A token from one instance must verify on every other behind the balancer. A store with a
    place for the key keeps the first one made; SQLite has none (None: the key file beside it)."""
    first = await store.signing_key(lambda: b"k" * 32)
    other = await backend.open()  # another instance
    assert await other.signing_key(lambda: b"x" * 32) == first
    assert first in (None, b"k" * 32)
    if backend.name == "postgresql":
        assert first == b"k" * 32


async def test_a_job_lease_nobody_renews_ends(backend: Any, store: Store) -> None:
    assert await store.hold_job("retention", "a", 0.05)
    await asyncio.sleep(0.1)  # its holder died, say
    other = await backend.open()
    assert await other.hold_job("retention", "b", 60)
    assert not await store.hold_job("retention", "a", 60)


async def test_prune_keeps_recent_and_undelivered_events(store: Store) -> None:
    old = await routed(store, "old-done", "old-waiting")
    [recent] = await store.ingest(receipt("recent", received_at=LATER), [event("recent")], [["p"]])
    claims = await store.claim_due("p", LATER, 10, LEASE)
    await store.finish_deliveries([done(c) for c in claims if c.event.entity_id != "old-waiting"])
    store.record_rejection(rejection(0))
    await store.flush()

    assert await store.prune(RECEIVED_AT + 1, batch=1) == 1
    assert await store.prune(RECEIVED_AT + 1, batch=1) == 0  # "old-waiting" waits for its plugin
    assert [e.id for e in await store.list_events()] == [recent.id, old[1]]
    assert {d.event_id for d in await store.list_deliveries(limit=10)} == {recent.id, old[1]}
    assert await store.list_rejections() == []
    [waiting] = [c for c in claims if c.event.entity_id == "old-waiting"]
    await store.finish_deliveries([done(waiting, "dead", error="gave up")])
    assert await store.prune_all(LATER - 1) == 1
    assert [e.id for e in await store.list_events()] == [recent.id]
    assert await store.prune_all(LATER - 1) == 0


async def test_prune_all_goes_through_every_batch(store: Store) -> None:
    await store.ingest(receipt("many"), [event(str(n)) for n in range(1200)])
    assert await store.prune_all(RECEIVED_AT + 1) == 1200  # three batches of 500 at most
    assert await store.list_events() == []


async def test_size_check_writable_and_flush(store: Store) -> None:
    await store.check_writable()
    await store.ingest(receipt(), [event()])
    await store.flush()
    assert store.size_bytes() > 0


async def test_backup_is_a_consistent_copy(store: Store, backend: Any, tmp_path: Path) -> None:
    if not store.file_backup:
        pytest.skip(f"the {backend.name} backend cannot back up to a file")
    outcome = await one(store, receipt(), event())
    target = tmp_path / "copies" / "backup.db"
    await store.backup(target)
    with pytest.raises(FileExistsError):
        await store.backup(target)
    copy = type(backend)(tmp_path / "unused")
    copy.config = type(backend.config)(path=target, url=backend.config.url.replace(str(backend.config.path),
                                                                                      str(target)))
    try:
        reader = await copy.open(readonly=True)
        assert [e.id for e in await reader.list_events()] == [outcome.id]
    finally:
        await copy.close_all()
