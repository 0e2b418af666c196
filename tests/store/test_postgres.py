"""What only the PostgreSQL store has to prove: several instances on one database.

The contract suite (test_contract*.py) runs on PostgreSQL too; these add the races between
instances that SQLite cannot have: ids that must become visible in id order although two
instances commit at once, and one event sent to two instances at the same moment.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.store.conftest import PostgresBackend, event, one, receipt

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["optimistic", "locking"])
async def pg(request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str,
             monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test on both of the writer's paths: the optimistic write, and the transaction that
    locks first (taken after lost races; here from the first try)."""
    if request.param == "locking":
        from gateway.store import postgres

        monkeypatch.setattr(postgres, "OPTIMISTIC_TRIES", 0)
    backend = PostgresBackend(tmp_path)
    try:
        yield backend
    finally:
        await backend.close_all()


async def test_ids_become_visible_in_id_order_across_instances(pg: PostgresBackend) -> None:
    """Instance A's group is slow inside its transaction (a trigger sleeps on its insert) while
    instance B commits a group of its own. With ids from a plain sequence B would commit id 2
    while id 1 is still invisible, and a reader that moved past 2 would skip 1 for good. Here B
    waits for A's commit, gets the higher id, and a reader scanning by id sees 1 before 2."""
    a, b = await pg.open(), await pg.open()
    reader = await pg.open(readonly=True)
    pg.run("CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
           "$$ BEGIN IF NEW.entity_id = 'slow' THEN PERFORM pg_sleep(0.4); END IF; RETURN NEW; END $$",
           "CREATE TRIGGER slow_insert BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow_insert()")
    slow = asyncio.create_task(one(a, receipt("ra"), event("slow")))
    await asyncio.sleep(0.1)  # A is inside its transaction, holding the id counters
    fast = asyncio.create_task(one(b, receipt("rb"), event("fast")))
    seen: list[int] = []
    after = 0
    async with asyncio.timeout(10):
        while len(seen) < 2:
            for stored in await reader.list_events(after=after, newest_first=False):
                seen.append(stored.id)
                after = stored.id
            await asyncio.sleep(0.005)
    first, second = await slow, await fast
    assert first.id < second.id  # B waited for A: the later commit has the higher id
    assert seen == [first.id, second.id]  # never skipped: the scan by id saw both, in order


async def test_one_event_sent_to_two_instances_at_once_is_stored_once(pg: PostgresBackend) -> None:
    a, b = await pg.open(), await pg.open()
    for n in range(20):
        outcomes = await asyncio.gather(one(a, receipt(f"a{n}"), event(f"e{n}")),
                                        one(b, receipt(f"b{n}"), event(f"e{n}")))
        assert sorted(o.status for o in outcomes) == ["duplicate", "stored"], outcomes
        assert outcomes[0].id == outcomes[1].id
    assert len(await a.list_events(limit=100)) == 20


class Heard:
    """A StoreObserver that keeps what the PostgreSQL store reports."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.pools: list[tuple[int, int]] = []

    def group_committed(self, events: int) -> None: ...

    def rejection_dropped(self) -> None: ...

    def notification_heard(self, lag: float) -> None:
        self.lags.append(lag)

    def pool_measured(self, busy: int, idle: int) -> None:
        self.pools.append((busy, idle))


async def test_notification_lag_and_pool_use_are_reported(pg: PostgresBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.store import postgres
    from tests.conftest import wait_for_async

    monkeypatch.setattr(postgres, "MEASURE_SECONDS", 0.05)
    a, b = await pg.open(), await pg.open()
    heard = Heard()
    a.observe(heard)
    await one(b, receipt("rb"), event("x"))  # another instance's commit
    await wait_for_async(lambda: heard.lags, 5, "the notification")
    assert 0 <= heard.lags[0] < 1
    await one(a, receipt("ra"), event("y"))  # its own: not a notification from another instance
    await wait_for_async(lambda: heard.pools, 5, "a measurement of the pool")
    busy, idle = heard.pools[-1]
    assert busy >= 0 and idle >= 0 and busy + idle >= 1  # the pool holds its connection, in use or not
    assert len(heard.lags) == 1


async def test_the_identity_lookup_probes_the_index_even_with_a_plan_made_on_an_empty_table(
        tmp_path: Path, anyio_backend: str) -> None:
    """A new store: the lookup's plan is made while `events` is empty and has no statistics,
    and a prepared statement keeps it. It must still probe the index per key once the table has
    grown, not scan the whole table (which made each group's lookup cost 0.25 ms per 1,000
    stored events until autovacuum's first ANALYZE)."""
    import asyncpg

    from gateway.store.postgres._ingest import _LOOKUP

    backend = PostgresBackend(tmp_path)
    try:
        await backend.open()
        conn = await asyncpg.connect(backend.url)
        try:
            await conn.execute("SET plan_cache_mode = force_generic_plan")  # the plan asyncpg would keep
            await conn.execute(f"PREPARE lookup(text[]) AS {_LOOKUP}")
            await conn.execute("EXECUTE lookup('{k1}')")  # planned now, on the empty table
            await conn.execute(
                "INSERT INTO receipts (id, request_id, source, received_at, attempt, headers, body)"
                " VALUES (1, 'r', 's', 0, 1, '', '');"
                "INSERT INTO events (id, receipt_id, source, scheme, event_type, entity_id, dedup_key, fingerprint,"
                " status, received_at, payload) SELECT g, 1, 's', 'metacopier', 't', 'e' || g, 'k' || g, '\\x01',"
                " 'stored', 0, '' FROM generate_series(1, 5000) g")
            plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN ANALYZE EXECUTE lookup('{k1,k4999,none}')"))
            found = await conn.fetch("EXECUTE lookup('{k1,k4999,none}')")
        finally:
            await conn.close()
    finally:
        await backend.close_all()
    assert "Seq Scan on events" not in plan and "events_identity" in plan, plan
    assert [row["id"] for row in found] == [1, 4999]
