"""The position ledger's projector: folds each new event into the stored ledger (issue 17).

Of the processes on one store (workers, other hosts), the one holding the `ledger` job's
lease projects; another takes over within `LEASE_SECONDS` once it dies. It wakes on every
commit (the store's event listeners), reads the events after its checkpoint in id order,
normalizes them, folds every position they touch again from all its entries
(`gateway.ledger.fold`), and writes entries, positions, anomalies and the new checkpoint in
one transaction that only lands if the checkpoint did not move meanwhile. Ids become visible in
commit order on every backend, so nothing is passed over. Ingest never waits for it, and its
failures never reach ingest: it logs, backs off and tries again.

`plan` is the pure part: what one step writes, from what is stored and what is new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from gateway.ledger import Entry, Position, fold, key, position_json
from gateway.model import EventRecord, iso_utc
from gateway.normalized import normalize
from gateway.store import EventQuery, Store
from gateway.store.ledger_records import (
    EntryRow,
    LedgerStatus,
    LedgerWrite,
    LoadedPosition,
    NewAnomaly,
    PositionKey,
    PositionQuery,
    PositionRow,
    StoredAnomaly,
)

log = logging.getLogger("gateway.ledger")

LEDGER_JOB = "ledger"
LEASE_SECONDS = 15.0  # a dead holder's lease ends after this; the holder renews every RENEW_SECONDS
RENEW_SECONDS = 5.0
POLL_SECONDS = 1.0  # the backstop: commits wake the projector at once
BATCH = 2000  # events per step
STALE_EVERY = 60.0  # seconds between looks for positions open longer than max_open_days
RETRY_SECONDS = 2.0
STEP_PAUSE = 0.05  # after a step, under load: a step's cost is mostly per step, not per event
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class NewEntry:
    key: PositionKey
    entry: Entry


def entries_of(events: Iterable[EventRecord]) -> list[NewEntry]:
    """The ledger entries of `events`: those that normalize to a position event with its ids."""
    found = []
    for event in events:
        record = normalize(event)
        position = None if record is None else key(record)
        if record is not None and position is not None:
            found.append(NewEntry(position, Entry(record, conflict=event.status == "conflict")))
    return found


def plan(
    loaded: Mapping[PositionKey, LoadedPosition],
    new: Sequence[NewEntry],
    *,
    after: int,
    checkpoint: int,
    now: float,
    max_open_days: Mapping[str, float | None],
    orphans_done: bool = False,
) -> LedgerWrite:
    """One step: `new` entries added to their positions, and every position in `loaded` folded
    again (`loaded` holds every key of `new`). Anomalies the fold no longer finds are resolved;
    new ones raised; one whose events changed is updated, or raised again if it was acknowledged
    (the operator saw other events)."""
    adding: dict[PositionKey, list[Entry]] = {}
    for item in new:
        adding.setdefault(item.key, []).append(item.entry)
    entries = [EntryRow(item.key, item.entry.record.event_id or 0, item.entry.conflict,
                        item.entry.record.dumps()) for item in new]
    rows: list[PositionRow] = []
    raised: list[NewAnomaly] = []
    resolved: list[int] = []
    changed: list[tuple[int, tuple[int, ...], str]] = []
    counts: dict[tuple[str, str], int] = {}
    for position_key, stored in loaded.items():
        fresh = adding.get(position_key, [])
        ids = {e.record.event_id for e in fresh}
        everything = [e for e in stored.entries if e.record.event_id not in ids] + fresh
        if not everything:
            continue
        try:
            position = fold(everything, now=now, max_open_days=max_open_days.get(position_key[0]))
        except Exception:  # a bug in the rules must not stop the ledger: this position waits, the rest go on
            log.exception("ledger: cannot fold %s position %s (account %s); its entries are kept",
                          position_key[0], position_key[2], position_key[1] or "-")
            continue
        rows.append(PositionRow(position_key, position.state, position.symbol, position.opened_at,
                                orjson.dumps(position_json(position))))
        if stored.state != position.state:
            source = position_key[0]
            if stored.state is not None:
                counts[(source, stored.state)] = counts.get((source, stored.state), 0) - 1
            counts[(source, position.state)] = counts.get((source, position.state), 0) + 1
        _compare(position_key, position, stored.anomalies, raised, resolved, changed)
    return LedgerWrite(after=after, checkpoint=checkpoint, at=now, entries=entries, positions=rows, raised=raised,
                       resolved=resolved, changed=changed, counts=counts, orphans_done=orphans_done)


def _compare(position_key: PositionKey, position: Position, current: Sequence[StoredAnomaly],
             raised: list[NewAnomaly], resolved: list[int], changed: list[tuple[int, tuple[int, ...], str]]) -> None:
    kept: dict[str, StoredAnomaly] = {}
    for anomaly in sorted(current, key=lambda a: a.id):
        if anomaly.kind in kept:  # never two unresolved of one kind; should it happen, keep the first
            resolved.append(anomaly.id)
        else:
            kept[anomaly.kind] = anomaly
    found = {a.kind: a for a in position.anomalies}
    for kind, anomaly in kept.items():
        if kind not in found:
            resolved.append(anomaly.id)
    for kind, now_found in found.items():
        before = kept.get(kind)
        if before is None:
            raised.append(NewAnomaly(position_key, kind, now_found.event_ids, now_found.detail))
        elif before.event_ids != now_found.event_ids or before.detail != now_found.detail:
            if before.acked_at is not None:
                resolved.append(before.id)
                raised.append(NewAnomaly(position_key, kind, now_found.event_ids, now_found.detail))
            else:
                changed.append((before.id, now_found.event_ids, now_found.detail))


class Projector:
    """Keeps the stored ledger current. `run()` is the background job; `catch_up()` projects
    everything there is, for `gateway ledger rebuild`."""

    def __init__(
        self,
        store: Store,
        max_open_days: Mapping[str, float | None],
        holder: str,
        clock: Callable[[], float] = time.time,
        batch: int = BATCH,
    ) -> None:
        self.store = store
        self.max_open_days = dict(max_open_days)
        self.holder = holder
        self.clock = clock
        self.batch = batch
        self._woken = asyncio.Event()
        self._stale_checked = 0.0

    def wake(self, _newest: int | None = None) -> None:
        self._woken.set()

    async def step(self) -> int:
        """Project the next batch (or fold a batch of orphans after a reset); returns how many
        events or positions it handled (0: caught up)."""
        status = await self.store.ledger_status()
        if status.orphans:
            keys = await self.store.ledger_orphans(self.batch)
            loaded = await self.store.ledger_load(keys)
            await self._write(plan(loaded, [], after=status.checkpoint, checkpoint=status.checkpoint,
                                   now=self.clock(), max_open_days=self.max_open_days,
                                   orphans_done=len(keys) < self.batch))
            return max(1, len(keys))
        events = await self.store.list_events(EventQuery(newest_first=False, after=status.checkpoint,
                                                         limit=self.batch))
        if not events:
            return 0
        new = entries_of(events)
        loaded = await self.store.ledger_load(list(dict.fromkeys(item.key for item in new)))
        await self._write(plan(loaded, new, after=status.checkpoint, checkpoint=events[-1].id, now=self.clock(),
                               max_open_days=self.max_open_days))
        return len(events)

    async def _write(self, write: LedgerWrite) -> None:
        raised = await self.store.ledger_write(write)
        if raised is None:
            log.info("ledger: the checkpoint moved under this step (a rebuild, or another projector): again")
            return
        for anomaly_id, anomaly in zip(raised, write.raised, strict=True):
            log.warning("ledger: anomaly %d %s on %s position %s (account %s): %s", anomaly_id, anomaly.kind,
                        anomaly.key[0], anomaly.key[2], anomaly.key[1] or "-", anomaly.detail)

    async def stale(self) -> int:
        """Fold again the open positions older than their source's `max_open_days` that have
        no `stale_open` yet; returns how many."""
        done = 0
        for source, days in self.max_open_days.items():
            if not days:
                continue
            before = iso_utc(self.clock() - days * DAY)
            for state in ("open", "partially_closed"):
                after = None
                while True:
                    page = await self.store.list_positions(PositionQuery(
                        source=source, state=state, opened_before=before, after=after, limit=self.batch))
                    if not page:
                        break
                    after = page[-1].id
                    keys = [(p.document["source"], p.document["account"], p.document["position_id"]) for p in page
                            if not any(a["kind"] == "stale_open" for a in p.document.get("anomalies", ()))]
                    if keys:
                        status = await self.store.ledger_status()
                        await self._write(plan(await self.store.ledger_load(keys), [], after=status.checkpoint,
                                               checkpoint=status.checkpoint, now=self.clock(),
                                               max_open_days=self.max_open_days))
                        done += len(keys)
        return done

    async def catch_up(self, progress: Callable[[LedgerStatus], None] | None = None,
                       renew: Callable[[], Awaitable[object]] | None = None) -> None:
        """Project until nothing is left. `renew` is awaited between steps (the lease)."""
        while await self.step():
            if progress is not None:
                progress(await self.store.ledger_status())
            if renew is not None:
                await renew()

    async def run(self) -> None:
        """The background job: hold the lease, project whenever woken or every POLL_SECONDS."""
        self.store.add_event_listener(self.wake)
        renewed = -RENEW_SECONDS
        held = False
        try:
            while True:
                behind = 0
                try:
                    if time.monotonic() - renewed >= RENEW_SECONDS:
                        held = await self.store.hold_job(LEDGER_JOB, self.holder, LEASE_SECONDS)
                        renewed = time.monotonic()
                    if held:
                        self._woken.clear()
                        while (behind := await self.step()) and time.monotonic() - renewed < RENEW_SECONDS:
                            pass
                        if time.monotonic() - self._stale_checked >= STALE_EVERY:
                            self._stale_checked = time.monotonic()
                            await self.stale()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the store is down, or a bug: ingest goes on regardless
                    log.warning("ledger: projection failed, will try again: %s", exc, exc_info=True)
                    await asyncio.sleep(RETRY_SECONDS)
                if not behind:  # else the lease is due for renewal first, with events still to project
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._woken.wait(), POLL_SECONDS)
                        await asyncio.sleep(STEP_PAUSE)  # let more commits gather: fewer, larger steps
        finally:
            if held:
                with contextlib.suppress(Exception):
                    await self.store.release_job(LEDGER_JOB, self.holder)
