"""PostgreSQL event store (`[store] url = "postgresql://..."`), on asyncpg and its pool.

- **Writes that answer a request** (ingest, and the forensics of rejections) go through one
  writer task per instance, which groups what is queued into one transaction
  (`_ingest.store_events`: the id counters locked first, so ids commit in order and dedup is
  exact across instances; one statement per table per group). `synchronous_commit` stays on.
- **Everything else** (claims, outcomes, replays, job leases, reads) runs as its own short
  transaction on the pool, concurrently: a claim is `FOR UPDATE SKIP LOCKED` (`_outbox.py`).
- **Notifications**: each committed group sends one `pg_notify` naming the newest event id and
  the plugins it made due; every instance listens on a dedicated connection (reconnecting),
  and the fan-out's one-second poll is the backstop: a lost notification delays, never loses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from gateway.errors import StoreUnavailable
from gateway.model import Outcome, ParsedEvent, load_payload
from gateway.store import StoreObserver, overview, prune_in_batches
from gateway.store.committer import MAX_GROUP_EVENTS, Committed, Ingest
from gateway.store.ledger_records import (
    AnomalyQuery,
    LedgerStatus,
    LedgerWrite,
    LoadedPosition,
    PositionKey,
    PositionQuery,
    StoredAnomaly,
    StoredPosition,
)
from gateway.store.postgres import _identity, _ledger, _outbox
from gateway.store.postgres._ingest import LOCK_COUNTERS, US, store_events, store_events_at_once
from gateway.store.postgres._params import text, where
from gateway.store.postgres._schema import MIGRATIONS, Conn, migrate, version
from gateway.store.records import (
    Claim,
    CommitListener,
    DeliveryRecord,
    DeliveryResult,
    DeliveryStats,
    EventDetail,
    EventListener,
    EventQuery,
    Receipt,
    Reidentify,
    Rejection,
    StoredEvent,
)

if TYPE_CHECKING:
    from gateway.config import StoreConfig

log = logging.getLogger("gateway.store")

CHANNEL = "gateway_commits"
MAX_PENDING_REJECTIONS = 2000
UNKNOWN_BUCKET = "?"
LISTEN_RETRY = 1.0
MEASURE_SECONDS = 5.0
BACKSTOP_SECONDS = 1.0  # how often the listener also polls for commits no notification announced
OPTIMISTIC_TRIES = 3  # lost races (another instance wrote between lookup and write) before locking first
# Errors one request's data may cause (bad data, a constraint, a trigger): retry the group's
# requests one by one, so that one bad request does not fail its neighbours.
_ISOLATABLE = ("22", "23", "P0")

_SELECT_EVENTS = """
    SELECT e.id, e.source, e.scheme, e.event_type, e.entity_id, e.dedup_key, e.status,
           e.account, e.symbol, e.received_at, r.request_id, r.attempt, r.remote_addr,
           coalesce(e.payload, r.body), e.quarantine_reason, e.conflicts_with
    FROM events e JOIN receipts r ON r.id = e.receipt_id
"""


def from_config(config: StoreConfig, *, readonly: bool = False) -> PostgresStore:
    """The `StoreFactory` of `postgresql:` (and `postgres:`) URLs."""
    return PostgresStore(
        config.url, readonly=readonly, rejections_per_source=config.rejections_per_source,
        password=None if config.password is None else config.password.reveal(), pool_size=config.pool_size,
        statement_timeout_ms=config.statement_timeout_ms, application_name=config.application_name,
        sslmode=config.sslmode)


def glob_regex(glob: str) -> str:
    """A GLOB pattern (`*`, `?`, `[...]`, as SQLite's GLOB, case-sensitive) as an anchored
    POSIX regular expression for `~`."""
    out, i = ["^"], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and (end := glob.find("]", i + 2)) != -1:
            body = glob[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("^") else body).replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) + "$"


class _Write:
    """A write other than ingest run in the writer's group (the rejections' forensics)."""

    __slots__ = ("future", "run")

    def __init__(self, run: Callable[[Conn], Awaitable[Any]], future: asyncio.Future[Any]) -> None:
        self.run = run
        self.future = future


_STOP = object()


class PostgresStore:
    """The PostgreSQL backend of `gateway.store.Store`."""

    file_backup = False

    def __init__(self, url: str, *, readonly: bool = False, rejections_per_source: int = 1000,
                 password: str | None = None, pool_size: int = 10, statement_timeout_ms: int = 30_000,
                 application_name: str = "trading-webhook-gateway", sslmode: str | None = None) -> None:
        self.url = url
        self.readonly = readonly
        self.rejections_per_source = rejections_per_source
        self.pool_size = pool_size
        # What every connection gets (the pool's, and the one that listens for notifications).
        self._connect: dict[str, Any] = {
            "password": password, "ssl": sslmode,
            "server_settings": {"application_name": application_name,
                                "statement_timeout": str(statement_timeout_ms)}}
        self.instance = secrets.token_hex(8)  # tells our own notifications from other instances'
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[Any] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._measurer: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._announced = 0  # the newest event id the listeners have heard of
        self._listeners: list[CommitListener] = []
        self._event_listeners: list[EventListener] = []
        self._observer: StoreObserver | None = None
        self._rejections: collections.deque[Rejection] = collections.deque()
        self._rejections_queued = False
        self._dropped = 0
        self._size = 0
        self.commits = 0

    # --- life -------------------------------------------------------------------------------

    @property
    def location(self) -> str:
        return re.sub(r"//[^@/]*@", "//", self.url)

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size, **self._connect)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot connect to the store at {self.location}: {exc}") from exc
        try:
            async with self._pool.acquire() as conn:
                if self.readonly:
                    found = await version(conn)
                    if found is None:
                        raise FileNotFoundError(f"{self.location} holds no event store")
                    if found < len(MIGRATIONS):
                        raise StoreUnavailable(f"the store at {self.location} has schema {found}, older than this "
                                               f"gateway's {len(MIGRATIONS)}: start the gateway once to upgrade it")
                else:
                    await migrate(conn)
                self._size = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        if not self.readonly:
            self._queue = asyncio.Queue()
            self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        self._announced = int(await self._pool.fetchval("SELECT value FROM id_counters WHERE name = 'events'"))
        self._listener = asyncio.create_task(self._listen(), name="store-listener")
        self._measurer = asyncio.create_task(self._measure(), name="store-measure")
        with contextlib.suppress(TimeoutError):  # listening before the first commit it must hear of
            await asyncio.wait_for(self._listening.wait(), LISTEN_RETRY * 2)

    async def close(self) -> None:
        if self._writer is not None and self._queue is not None:
            self._queue.put_nowait(_STOP)
            with contextlib.suppress(Exception):
                await self._writer
            self._writer = None
        for task in (self._listener, self._measurer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._listener = self._measurer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    def observe(self, observer: StoreObserver) -> None:
        self._observer = observer

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def add_event_listener(self, listener: EventListener) -> None:
        self._event_listeners.append(listener)

    @property
    def rejections_dropped(self) -> int:
        return self._dropped

    # --- the writer -------------------------------------------------------------------------

    def _submit(self, item: Any) -> asyncio.Future[Any]:
        if self._queue is None or self._writer is None or self._writer.done():
            raise StoreUnavailable("the store writer is not running")
        self._queue.put_nowait(item)
        future: asyncio.Future[Any] = item.future
        return future

    async def ingest(self, receipt: Receipt, events: Sequence[ParsedEvent],
                     routes: Sequence[Sequence[str]] | None = None) -> list[Outcome]:
        future = asyncio.get_running_loop().create_future()
        outcomes: list[Outcome] = await self._submit(Ingest(receipt, events, routes, future))
        return outcomes

    async def _write_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        stop = False
        while not stop:
            first = await queue.get()
            if first is _STOP:
                break
            group = [first]
            size = len(first.events) if isinstance(first, Ingest) else 1
            while size < MAX_GROUP_EVENTS and not queue.empty():
                nxt = queue.get_nowait()
                if nxt is _STOP:
                    stop = True  # commit this group, then end
                    break
                group.append(nxt)
                size += len(nxt.events) if isinstance(nxt, Ingest) else 1
            await self._commit_isolated(group)
        # Anything queued after the stop marker is refused, never left waiting.
        while not queue.empty():
            item = queue.get_nowait()
            if item is not _STOP and not item.future.done():
                item.future.set_exception(StoreUnavailable("the store is closing"))

    async def _commit_isolated(self, group: list[Any]) -> None:
        try:
            committed = await self._commit(group)
        except Exception as exc:
            if len(group) > 1 and _isolatable(exc):
                for item in group:
                    await self._commit_isolated([item])
                return
            log.error("store commit failed for %d item(s): %s", len(group), exc)
            for item in group:
                if not item.future.done():
                    item.future.set_exception(_unavailable(exc))
            return
        self.commits += 1
        for item, result in zip(group, committed.results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
        self._committed(committed)

    async def _commit(self, group: list[Any]) -> Committed:
        """The group's ingests (optimistically, in two round trips; in a transaction that locks
        first after OPTIMISTIC_TRIES lost races), then its other writes, in their own transaction
        behind the counters' lock."""
        ingests = [item for item in group if isinstance(item, Ingest)]
        others = [item for item in group if not isinstance(item, Ingest)]
        committed = Committed()
        outcomes: list[Any] = []
        if ingests:
            async with self._db().acquire() as conn:
                for _ in range(OPTIMISTIC_TRIES):
                    done = await store_events_at_once(conn, ingests, CHANNEL, self._note)
                    if done is not None:
                        committed, outcomes = done
                        break
                else:
                    async with conn.transaction():
                        outcomes = await store_events(conn, ingests, committed, CHANNEL, self._note)
        results: list[Any] = []
        if others:
            async with self._db().acquire() as conn, conn.transaction():
                await conn.fetch(LOCK_COUNTERS)  # in turn behind ingest, as with one writer
                results = [await item.run(conn) for item in others]
        ingested, written = iter(outcomes), iter(results)
        committed.results = [next(ingested) if isinstance(item, Ingest) else next(written) for item in group]
        return committed

    def _note(self, committed: Committed) -> str:
        """A notification's payload: who sent it, when, the newest event id, the plugins made due."""
        return orjson.dumps({"i": self.instance, "t": time.time(), "e": committed.newest_event,
                             "p": sorted(committed.plugins)}).decode()

    async def _notify(self, conn: Conn, newest: int, plugins: Sequence[str] | set[str]) -> None:
        """One notification per committed transaction, delivered at its commit."""
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self._note(Committed(newest_event=newest,
                                                                                   plugins=set(plugins))))

    def _committed(self, committed: Committed) -> None:
        if committed.plugins:
            self._wake(frozenset(committed.plugins))
        if self._observer is not None and committed.stored:
            self._observer.group_committed(committed.stored)
        if committed.newest_event:
            self._announced = max(self._announced, committed.newest_event)
            for event_listener in self._event_listeners:
                event_listener(committed.newest_event)

    def _wake(self, plugins: frozenset[str] | None) -> None:
        for listener in self._listeners:
            try:
                listener(plugins)
            except Exception:
                log.exception("store: a commit listener failed")

    # --- notifications from other instances -------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN on a dedicated connection, reconnecting. The backstop: every BACKSTOP_SECONDS
        it also reads the newest event id, and wakes everyone if an event was committed that no
        notification announced (one lost with a connection, or sent before it listened)."""
        while True:
            try:
                conn = await asyncpg.connect(self.url, **self._connect)
            except (OSError, asyncpg.PostgresError) as exc:
                log.debug("store: cannot listen for notifications yet: %s", exc)
                self._listening.set()  # open() waits no longer: the backstop will catch up
                await asyncio.sleep(LISTEN_RETRY)
                continue
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                self._listening.set()
                while not lost.is_set():
                    newest = int(await conn.fetchval("SELECT value FROM id_counters WHERE name = 'events'"))
                    if newest > self._announced:
                        self._foreign(newest)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), BACKSTOP_SECONDS)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("store: the notification connection failed, reconnecting: %s", exc)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(LISTEN_RETRY)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            note = orjson.loads(str(payload))
        except orjson.JSONDecodeError:
            return
        if note.get("i") == self.instance:
            return  # our own: the listeners heard of it at the commit
        if self._observer is not None and isinstance(note.get("t"), float):
            self._observer.notification_heard(time.time() - note["t"])
        plugins = note.get("p") or []
        if plugins:
            self._wake(frozenset(plugins))
        if note.get("e"):
            self._announced = max(self._announced, int(note["e"]))
            for event_listener in self._event_listeners:
                event_listener(int(note["e"]))

    def _foreign(self, newest: int) -> None:
        """Events up to `newest` were committed unannounced: wake every runner and stream."""
        self._announced = max(self._announced, newest)
        self._wake(None)
        for event_listener in self._event_listeners:
            event_listener(newest)

    # --- other writes, each its own transaction ----------------------------------------------

    async def _tx(self, run: Callable[[Conn], Awaitable[Any]]) -> Any:
        try:
            async with self._db().acquire() as conn, conn.transaction():
                return await run(conn)
        except StoreUnavailable:
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unavailable(exc) from exc

    async def claim_due(self, plugin: str, now: float, limit: int, lease_seconds: float) -> list[Claim]:
        claim_id = secrets.randbits(62)
        claims: list[Claim] = await self._tx(
            lambda c: _outbox.claim(c, plugin, now, limit, now + lease_seconds, claim_id))
        return claims

    async def renew(self, claims: Sequence[Claim], lease_seconds: float) -> list[Claim]:
        if not claims:
            return []
        until = time.time() + lease_seconds
        held = set(await self._tx(lambda c: _outbox.renew(c, claims, until)))
        return [replace(c, lease_until=until) for c in claims if c.delivery_id in held]

    async def release(self, claims: Sequence[Claim]) -> None:
        if claims:
            await self._tx(lambda c: _outbox.release(c, claims))

    async def finish_deliveries(self, results: Sequence[DeliveryResult]) -> list[int]:
        if not results:
            return []
        refused: list[int] = await self._tx(lambda c: _outbox.finish(c, results, time.time()))
        return refused

    async def _wakes(self, plugin: str, run: Callable[[Conn], Awaitable[int]]) -> int:
        async def with_notice(conn: Conn) -> int:
            changed = await run(conn)
            if changed:
                await self._notify(conn, 0, [plugin])
            return changed

        changed: int = await self._tx(with_notice)
        if changed:
            self._wake(frozenset((plugin,)))
        return changed

    async def replay(self, plugin: str, *, event_id: int | None = None, dead: bool = False) -> int:
        if event_id is None and not dead:
            raise ValueError("replay needs an event id or dead=True")
        return await self._wakes(plugin, lambda c: _outbox.replay(c, plugin, event_id, dead, time.time()))

    async def retry_delivery(self, delivery_id: int) -> bool:
        plugin = await self._db().fetchval("SELECT plugin FROM deliveries WHERE id = $1", delivery_id)
        if plugin is None:
            return False
        return bool(await self._wakes(plugin, lambda c: _outbox.retry(c, delivery_id, time.time())))

    async def delivery_stats(self, plugin: str) -> DeliveryStats:
        return await _outbox.stats(self._db(), plugin)

    async def list_deliveries(self, *, plugin: str | None = None, status: str | None = None,
                              event_id: int | None = None, limit: int = 100, delivery_id: int | None = None,
                              source: str | None = None, event_type: str | None = None) -> list[DeliveryRecord]:
        return await _outbox.listing(self._db(), plugin, status, event_id, limit, delivery_id, source, event_type)

    async def delivery_counts(self) -> list[tuple[str, str, int]]:
        return await _outbox.counts(self._db())

    async def hold_job(self, name: str, holder: str, seconds: float) -> bool:
        now = time.time()

        async def run(conn: Conn) -> bool:
            current = await conn.fetchval(
                "INSERT INTO job_leases (name, holder, until) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE"
                " SET holder = excluded.holder, until = excluded.until"
                " WHERE job_leases.until < $4 OR job_leases.holder = excluded.holder RETURNING holder",
                name, holder, round((now + seconds) * US), round(now * US))
            return bool(current == holder)

        held: bool = await self._tx(run)
        return held

    async def release_job(self, name: str, holder: str) -> None:
        await self._tx(lambda c: c.execute("DELETE FROM job_leases WHERE name = $1 AND holder = $2", name, holder))

    async def prune(self, before: float, batch: int = 500) -> int:
        cutoff = round(before * US)

        async def run(conn: Conn) -> int:
            ids = [r[0] for r in await conn.fetch(
                "SELECT id FROM events e WHERE received_at < $1 AND NOT EXISTS (SELECT 1 FROM deliveries d"
                " WHERE d.event_id = e.id AND d.status = 'pending') ORDER BY id LIMIT $2", cutoff, batch)]
            await conn.execute("DELETE FROM rejections WHERE id IN (SELECT id FROM rejections WHERE received_at < $1"
                               " LIMIT $2)", cutoff, batch)
            if not ids:
                return 0
            await conn.execute("DELETE FROM deliveries WHERE event_id = ANY($1::bigint[])", ids)
            receipts = [r[0] for r in await conn.fetch(
                "SELECT DISTINCT receipt_id FROM events WHERE id = ANY($1::bigint[])", ids)]
            await conn.execute("DELETE FROM events WHERE id = ANY($1::bigint[])", ids)
            await conn.execute("DELETE FROM receipts WHERE id = ANY($1::bigint[]) AND NOT EXISTS"
                               " (SELECT 1 FROM events WHERE events.receipt_id = receipts.id)", receipts)
            return len(ids)

        pruned: int = await self._tx(run)
        return pruned

    async def prune_all(self, before: float, pause: float = 0.0) -> int:
        return await prune_in_batches(self, before, pause)

    async def reidentify(self, identify: Reidentify, batch: int = 2000) -> int:
        """As on SQLite (gateway/store/sqlite/_identity.py): events without a fingerprint (moved
        over from a store written before identities) get theirs, in id order, a batch per
        transaction, serialised with ingest."""
        total = 0
        while True:
            future = asyncio.get_running_loop().create_future()
            done: int = await self._submit(_Write(lambda c: _identity.reidentify_batch(c, identify, batch), future))
            if not done:
                return total
            total += done

    def size_bytes(self) -> int:
        return self._size  # measured every MEASURE_SECONDS (the contract's call is synchronous)

    async def _measure(self) -> None:
        """The database's size and the pool's use, every MEASURE_SECONDS."""
        while True:
            await asyncio.sleep(MEASURE_SECONDS)
            pool = self._pool
            if pool is None:
                continue
            if self._observer is not None:
                idle = pool.get_idle_size()
                self._observer.pool_measured(pool.get_size() - idle, idle)
            try:
                self._size = int(await pool.fetchval("SELECT pg_database_size(current_database())"))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.debug("store: cannot measure the database: %s", exc)

    async def signing_key(self, make: Callable[[], bytes]) -> bytes | None:
        async def run(conn: Conn) -> bytes:
            await conn.execute("INSERT INTO shared_keys (name, value) VALUES ('api', $1) ON CONFLICT DO NOTHING",
                               make())
            return bytes(await conn.fetchval("SELECT value FROM shared_keys WHERE name = 'api'"))

        key: bytes = await self._tx(run)
        return key

    async def check_writable(self) -> None:
        async def beat(conn: Conn) -> None:
            await conn.execute("INSERT INTO heartbeat (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE"
                               " SET at = excluded.at", round(time.time() * US))
            self._size = int(await conn.fetchval("SELECT pg_database_size(current_database())"))

        await self._tx(beat)

    async def flush(self) -> None:
        """Wait for everything queued before this call to be committed."""
        future = asyncio.get_running_loop().create_future()
        await self._submit(_Write(_nothing, future))

    async def backup(self, target: Path) -> None:
        raise NotImplementedError(
            f"a PostgreSQL store is backed up by PostgreSQL: pg_dump --format=custom --file={target} "
            f"'{self.location}' (or continuous archiving for point-in-time recovery; deploy/README.md)")

    # --- rejections --------------------------------------------------------------------------

    def record_rejection(self, rejection: Rejection) -> None:
        if self.rejections_per_source == 0 or self._writer is None or self._writer.done():
            return
        if len(self._rejections) >= MAX_PENDING_REJECTIONS:
            self._dropped += 1
            if self._observer is not None:
                self._observer.rejection_dropped()
            return
        self._rejections.append(rejection)
        if not self._rejections_queued:
            self._rejections_queued = True
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_forget)
            self._submit(_Write(self._write_rejections, future))

    async def _write_rejections(self, conn: Conn) -> None:
        self._rejections_queued = False
        batch = list(self._rejections)
        self._rejections.clear()
        if not batch:
            return
        rows = [(round(r.received_at * US), r.request_id, text(r.source) if r.known_source else UNKNOWN_BUCKET,
                 text(r.source[:64]), r.code, text(r.detail[:1000]), r.remote_addr,
                 orjson.dumps(list(r.header_names[:100])).decode(), r.body_size, r.body_sha256) for r in batch]
        await conn.executemany(
            "INSERT INTO rejections (received_at, request_id, bucket, source, code, detail, remote_addr,"
            " header_names, body_size, body_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", rows)
        for bucket in {row[2] for row in rows}:
            await conn.execute(
                "DELETE FROM rejections WHERE bucket = $1 AND id <= (SELECT id FROM rejections WHERE bucket = $1"
                " ORDER BY id DESC LIMIT 1 OFFSET $2)", bucket, self.rejections_per_source)

    async def list_rejections(self, *, source: str | None = None, code: str | None = None,
                              limit: int = 100) -> list[Rejection]:
        clauses, args = where((("source = {}", source), ("code = {}", code)))
        rows = await self._db().fetch(
            "SELECT id, received_at, request_id, source, code, detail, remote_addr, header_names, body_size,"
            f" body_sha256, bucket FROM rejections{clauses} ORDER BY id DESC LIMIT ${len(args) + 1}", *args, limit)
        return [Rejection(id=r[0], received_at=r[1] / US, request_id=r[2], source=r[3], code=r[4], detail=r[5],
                          remote_addr=r[6], header_names=tuple(orjson.loads(r[7])), body_size=r[8],
                          body_sha256=r[9], known_source=r[10] != UNKNOWN_BUCKET) for r in rows]

    # --- the position ledger -----------------------------------------------------------------

    async def ledger_status(self) -> LedgerStatus:
        return await _ledger.status(self._db())

    async def ledger_load(self, keys: Sequence[PositionKey]) -> dict[PositionKey, LoadedPosition]:
        return await _ledger.load(self._db(), list(keys))

    async def ledger_orphans(self, limit: int) -> list[PositionKey]:
        return await _ledger.orphans(self._db(), limit)

    async def ledger_write(self, write: LedgerWrite) -> list[int] | None:
        raised: list[int] | None = await self._tx(lambda conn: _ledger.write(conn, write))
        return raised

    async def ledger_reset(self) -> None:
        await self._tx(_ledger.reset)

    async def list_positions(self, query: PositionQuery) -> list[StoredPosition]:
        return await _ledger.positions(self._db(), query)

    async def get_position(self, key: PositionKey) -> StoredPosition | None:
        return await _ledger.get_position(self._db(), key)

    async def list_anomalies(self, query: AnomalyQuery) -> list[StoredAnomaly]:
        return await _ledger.anomalies(self._db(), query)

    async def acknowledge_anomaly(self, anomaly_id: int, note: str, at: float) -> StoredAnomaly | None:
        acked: StoredAnomaly | None = await self._tx(lambda conn: _ledger.acknowledge(conn, anomaly_id, note, at))
        return acked

    async def anomaly_counts(self) -> list[tuple[str, str, int]]:
        return await _ledger.anomaly_counts(self._db())

    async def position_counts(self) -> list[tuple[str, str, int]]:
        return await _ledger.counts(self._db())

    # --- reads -------------------------------------------------------------------------------

    async def latest_event_id(self) -> int:
        return int(await self._db().fetchval("SELECT coalesce(max(id), 0) FROM events"))

    async def list_events(self, query: EventQuery | None = None, **filters: Any) -> list[StoredEvent]:
        query = query if query is not None else EventQuery(**filters)
        glob = query.event_type
        is_glob = glob is not None and any(c in glob for c in "*?[")
        clauses, args = where((
            ("e.source = {}", query.source),
            ("e.scheme = {}", query.scheme),
            ("e.event_type ~ {}" if is_glob else "e.event_type = {}",
             glob_regex(glob) if is_glob and glob is not None else glob),
            ("e.account = {}", query.account),
            ("e.symbol = {}", query.symbol),
            ("e.entity_id = {}", query.entity),
            ("e.status = {}", query.status),
            ("e.received_at >= {}", None if query.since is None else round(query.since * US)),
            ("e.received_at < {}", None if query.until is None else round(query.until * US)),
            ("e.id < {}" if query.newest_first else "e.id > {}", query.after),
        ))
        sql = (f"{_SELECT_EVENTS}{clauses} ORDER BY e.id {'DESC' if query.newest_first else 'ASC'}"
               f" LIMIT ${len(args) + 1}")
        return [_event(r) for r in await self._db().fetch(sql, *args, query.limit)]

    async def get_event(self, event_id: int) -> EventDetail | None:
        sql = _SELECT_EVENTS.replace("FROM events e", ", r.body, r.headers FROM events e") + " WHERE e.id = $1"
        row = await self._db().fetchrow(sql, event_id)
        if row is None:
            return None
        return EventDetail(event=_event(row), body=bytes(row[16]), headers=[tuple(h) for h in orjson.loads(row[17])])

    async def overview(self, since: float, until: float, bucket: float) -> overview.OverviewData:
        return await overview.read(lambda sql, args: self._db().fetch(sql, *args), lambda n: f"${n}",
                                   since, until, bucket)

    async def event_stats(self, since: float | None, until: float | None) -> list[tuple[str, str, str, int]]:
        low = 0 if since is None else round(since * US)
        high = 2**62 if until is None else round(until * US)
        rows = await self._db().fetch(
            "SELECT source, event_type, status, count(*) FROM events WHERE received_at >= $1 AND received_at < $2"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", low, high)
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]


async def _nothing(conn: Conn) -> None:
    return None


def _forget(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _isolatable(error: BaseException) -> bool:
    if isinstance(error, ValueError | TypeError):
        return True
    return isinstance(error, asyncpg.PostgresError) and str(getattr(error, "sqlstate", "")).startswith(_ISOLATABLE)


def _unavailable(error: BaseException) -> StoreUnavailable:
    if isinstance(error, StoreUnavailable):
        return error
    return StoreUnavailable()


def _event(r: Any) -> StoredEvent:
    body = r[13]
    return StoredEvent(
        id=r[0], source=r[1], scheme=r[2], event_type=r[3], entity_id=r[4], dedup_key=r[5], status=r[6],
        conflicts_with=r[15], account=r[7], symbol=r[8], received_at=r[9] / US, request_id=r[10], attempt=r[11],
        remote_addr=r[12], payload=load_payload(None if body is None else bytes(body)), quarantine_reason=r[14],
    )
