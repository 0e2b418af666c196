"""The event store contract, and the registry of backends that implement it.

A backend is picked by the scheme of `[store] url` (`sqlite:///var/gateway.db`) from
`BACKENDS`, a registry of import strings loaded lazily, as uvicorn picks its protocols. A
backend from outside gateway/ registers itself with `register_backend()`. Every backend runs
the same contract tests (tests/store/test_contract.py); what a backend cannot do is a
capability flag (`file_backup`), and the tests skip by it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from gateway.model import ParsedEvent
from gateway.model import iso_utc as iso_utc  # the store's JSON views format times with it
from gateway.store.records import (
    Claim,
    CommitListener,
    DeliveryRecord,
    DeliveryResult,
    DeliveryStats,
    DeliveryStatus,
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
    from gateway.model import Outcome
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
    from gateway.store.overview import OverviewData

__all__ = [
    "BACKENDS", "Claim", "CommitListener", "DeliveryRecord", "DeliveryResult", "DeliveryStats", "DeliveryStatus",
    "EventDetail", "EventListener", "EventQuery", "Receipt", "Reidentify", "Rejection", "Store", "StoreFactory",
    "StoreObserver", "StoredEvent", "iso_utc", "open_store", "prune_in_batches", "register_backend", "url_scheme",
]


class StoreObserver(Protocol):
    """What a store reports as it works (the gateway's `Metrics` implements it)."""

    def group_committed(self, events: int) -> None:
        """A group commit wrote `events` new events (called only when it wrote some)."""

    def rejection_dropped(self) -> None:
        """A rejection's forensics were dropped: the buffer waiting for the writer was full."""

    def notification_heard(self, lag: float) -> None:
        """Another instance's commit was heard of `lag` s after it was sent (PostgreSQL)."""

    def pool_measured(self, busy: int, idle: int) -> None:
        """The store's connections: in use and idle (PostgreSQL's pool)."""


class Store(Protocol):
    """What the gateway needs from an event store.

    Times are Unix seconds (floats) throughout. Writes return once they are durable.
    """

    file_backup: bool
    """Capability: `backup()` writes a consistent copy of the store to a file."""

    @property
    def rejections_dropped(self) -> int:
        """Rejections dropped since open because the buffer waiting for the writer was full."""
        ...

    async def open(self) -> None:
        """Connect, create or migrate the schema, start the writer. A read-only store raises
        FileNotFoundError when there is no event store to read."""

    async def close(self) -> None:
        """Commit what is queued, then release everything."""

    def observe(self, observer: StoreObserver) -> None:
        """Report commits and dropped rejections to `observer` from now on."""

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call `listener` after each commit that made deliveries due: new events routed to
        plugins, a replay, a retry. This is how plugin runners wake up. Commits by other
        processes on the same store (workers, a second gateway, the CLI) call it with None
        within `FOREIGN_POLL_SECONDS` or so."""

    def add_event_listener(self, listener: EventListener) -> None:
        """Call `listener` with the newest event id after each commit that stored events,
        this process's or (as above) another's."""

    # --- events -----------------------------------------------------------------------------

    async def ingest(
        self,
        receipt: Receipt,
        events: Sequence[ParsedEvent],
        routes: Sequence[Sequence[str]] | None = None,
    ) -> list[Outcome]:
        """Store the request's new events atomically; return once they are durable.

        `routes[i]` names the plugins that get `events[i]`: their delivery rows are written
        in the same transaction. An event whose identity (`dedup_key` of source, event type and
        `ParsedEvent.named_by`) is stored with the same fingerprint comes back as `duplicate`
        with the id of that version and is not routed again; stored with other fingerprints
        only, it is stored and routed as a `conflict`, `conflicts_with` the first version's id.
        Exact under concurrent writers (unique on identity and fingerprint). Ids only grow,
        across pruning and restarts. Raises `StoreUnavailable`.
        """
        ...

    async def list_events(self, query: EventQuery | None = None, **filters: Any) -> list[StoredEvent]:
        """Stored events matching `query` (or an EventQuery built from `filters`).
        Keyset-paginated on id: a page never skips or repeats while new events arrive."""
        ...

    async def get_event(self, event_id: int) -> EventDetail | None:
        """One event with its raw request body and the headers kept."""
        ...

    async def overview(self, since: float, until: float, bucket: float) -> OverviewData:
        """The console's overview of [since, until): events per source, status and `bucket`-second
        bucket, rejections per source and code, and per source the receipts' latency p99 and the
        senders' clock skew (`gateway.store.overview`)."""
        ...

    async def event_stats(self, since: float | None, until: float | None) -> list[tuple[str, str, str, int]]:
        """(source, event type, status, count) of events received in [since, until), sorted."""
        ...

    async def latest_event_id(self) -> int:
        """The highest event id stored (0 when empty)."""
        ...

    # --- the outbox -------------------------------------------------------------------------

    async def claim_due(self, plugin: str, now: float, limit: int, lease_seconds: float) -> list[Claim]:
        """Claim up to `limit` pending deliveries of `plugin` due by `now`, oldest first, each
        under a lease until `now + lease_seconds`, and hand them over with their ready events.

        At most one delivery per (plugin, source, entity id) is claimed or waiting at the head
        of its line: a delivery is due only when no earlier one of its entity is pending
        (claimed or not) and it is not itself claimed under a lease that still holds. An
        expired lease is claimed again, under a new claim id.
        """
        ...

    async def renew(self, claims: Sequence[Claim], lease_seconds: float) -> list[Claim]:
        """Extend the leases of `claims` to now + `lease_seconds`, while their deliveries run.
        Returns the claims still held, with their new `lease_until`; a claim taken over by
        someone else after its lease expired is left out."""
        ...

    async def release(self, claims: Sequence[Claim]) -> None:
        """Give claims back unfinished (a shutdown): due again at once, attempts unchanged."""

    async def finish_deliveries(self, results: Sequence[DeliveryResult]) -> list[int]:
        """Record how attempts ended (one transaction), each under its claim id. Returns the
        delivery ids refused: their claim was taken over, so the outcome is not recorded."""
        ...

    async def replay(self, plugin: str, *, event_id: int | None = None, dead: bool = False) -> int:
        """Make deliveries pending again, due now: one event's (creating its row if the plugin
        never had it) or every dead one. Returns how many rows changed. Never copies an event.
        Wakes the plugin's runner through the commit listeners. ValueError without either."""
        ...

    async def retry_delivery(self, delivery_id: int) -> bool:
        """Make one delivery pending again, due now, attempts reset. False if there is no such
        delivery. Wakes its plugin's runner through the commit listeners."""
        ...

    async def delivery_stats(self, plugin: str) -> DeliveryStats:
        """Backlog, oldest pending receive time and dead letters of one plugin."""
        ...

    async def list_deliveries(
        self, *, plugin: str | None = None, status: str | None = None, event_id: int | None = None,
        limit: int = 100, delivery_id: int | None = None, source: str | None = None, event_type: str | None = None,
    ) -> list[DeliveryRecord]:
        """Delivery rows, newest first."""
        ...

    async def delivery_counts(self) -> list[tuple[str, str, int]]:
        """(plugin, status, deliveries), sorted: counted in the store, whatever their number."""
        ...

    # --- rejections -------------------------------------------------------------------------

    def record_rejection(self, rejection: Rejection) -> None:
        """Keep a rejected request's forensics, without waiting: written with the next group,
        pruned to the newest `rejections_per_source` per source (unknown names share one
        bucket). Under a flood, records beyond a bounded buffer are dropped, never queued:
        counted in `rejections_dropped` and reported to the observer."""

    async def list_rejections(
        self, *, source: str | None = None, code: str | None = None, limit: int = 100
    ) -> list[Rejection]:
        """Recorded rejections, newest first."""
        ...

    # --- the position ledger (gateway.projector keeps it) -------------------------------------

    async def ledger_status(self) -> LedgerStatus:
        """Where the projection stands: its checkpoint, the newest event, and since when the
        oldest event not projected yet waits."""
        ...

    async def ledger_load(self, keys: Sequence[PositionKey]) -> dict[PositionKey, LoadedPosition]:
        """The entries, stored state and unresolved anomalies of each position in `keys` (an
        empty `LoadedPosition` for one never seen)."""
        ...

    async def ledger_orphans(self, limit: int) -> list[PositionKey]:
        """Up to `limit` positions that have entries but no row: after a reset, those whose
        events were all pruned."""
        ...

    async def ledger_write(self, write: LedgerWrite) -> list[int] | None:
        """Write one projection step in one transaction, only if the checkpoint is still
        `write.after`: returns the ids of the anomalies raised, in order, or None (nothing
        written: the checkpoint moved). Entries are keyed by event id, positions by their key."""
        ...

    async def ledger_reset(self) -> None:
        """Make the projection start again from the first event (`gateway ledger rebuild`):
        positions go, entries of events still stored go, anomalies stay (the projection resolves
        or keeps them, acknowledgements included), and the orphans flag is set."""

    async def list_positions(self, query: PositionQuery) -> list[StoredPosition]:
        """Positions matching `query`, newest first (by when they were first seen)."""
        ...

    async def get_position(self, key: PositionKey) -> StoredPosition | None:
        """One position, or None."""
        ...

    async def list_anomalies(self, query: AnomalyQuery) -> list[StoredAnomaly]:
        """Anomalies matching `query`, newest first; acknowledged and resolved ones included
        unless `query.open` says otherwise."""
        ...

    async def acknowledge_anomaly(self, anomaly_id: int, note: str, at: float) -> StoredAnomaly | None:
        """Mark an anomaly acknowledged at `at` with `note` (again: the newer note wins).
        None when there is no such anomaly."""
        ...

    async def anomaly_counts(self) -> list[tuple[str, str, int]]:
        """(source, kind, anomalies ever raised), sorted: only grows (acknowledged and resolved
        ones count, and a reset keeps them)."""
        ...

    async def position_counts(self) -> list[tuple[str, str, int]]:
        """(source, state, positions), sorted. A state that had positions and has none now is
        listed with 0 until a reset."""
        ...

    # --- upkeep -----------------------------------------------------------------------------

    async def prune(self, before: float, batch: int = 500) -> int:
        """Delete one batch of events received before `before` whose deliveries are all
        finished, with their finished deliveries, orphaned receipts and old rejections.
        Returns how many events went (0: nothing left to prune)."""
        ...

    async def prune_all(self, before: float, pause: float = 0.0) -> int:
        """Prune in batches, `pause` seconds apart, until nothing is left; returns how many
        events went. Small batches keep ingest from waiting long for the writer."""
        ...

    async def hold_job(self, name: str, holder: str, seconds: float) -> bool:
        """Take, or renew, the lease on the background job `name` for `seconds`: True if
        `holder` has it now. Every process on the store asks before running the job (retention),
        so one runs it at a time; a lease nobody renews ends by itself."""
        ...

    async def release_job(self, name: str, holder: str) -> None:
        """Give the lease up, if `holder` has it, so that another process may take it at once."""

    async def reidentify(self, identify: Reidentify) -> int:
        """Recompute the identity, entity and fingerprint of every event stored before the
        rules that name occurrences changed, from the bytes kept of it, in id order: a later
        event whose identity is taken by other content becomes a `conflict` of the first.
        Returns how many events changed (0 on a store that is up to date). The gateway runs it
        at start, before it takes requests."""
        ...

    def size_bytes(self) -> int:
        """The store's size on disk, as far as it knows; cheap (read at each metrics scrape)."""
        ...

    async def signing_key(self, make: Callable[[], bytes]) -> bytes | None:
        """The key every instance on this store signs API tokens, cursors and sessions with:
        the stored one, or `make()`'s, stored first by whichever instance asks first. None: this
        store has no place for it, and the key file beside it (`gateway.auth`) serves."""

    async def check_writable(self) -> None:
        """Write and commit one small row through the writer; raises StoreUnavailable."""

    async def flush(self) -> None:
        """Return once every write queued before the call (rejections included) is committed."""

    async def backup(self, target: Path) -> None:
        """Write a consistent copy of the store to the file `target` while it keeps serving;
        FileExistsError if `target` exists. Only where `file_backup` is true; elsewhere
        NotImplementedError."""


async def prune_in_batches(store: Store, before: float, pause: float = 0.0) -> int:
    """`Store.prune_all` from `Store.prune`, for any backend."""
    total = 0
    while pruned := await store.prune(before):
        total += pruned
        await asyncio.sleep(pause)
    return total


class StoreFactory(Protocol):
    """What a backend's import string names: builds a store, not opened yet."""

    def __call__(self, config: StoreConfig, *, readonly: bool = False) -> Store: ...


BACKENDS: dict[str, str] = {
    "sqlite": "gateway.store.sqlite:from_config",
    "postgresql": "gateway.store.postgres:from_config",
    "postgres": "gateway.store.postgres:from_config",
}
"""URL scheme -> import string of its `StoreFactory`, imported only when used."""


def register_backend(scheme: str, import_string: str) -> None:
    """Make `[store] url = "<scheme>://..."` use the factory at `import_string`
    (`"package.module:factory"`); for backends that live outside gateway/."""
    BACKENDS[scheme] = import_string


def url_scheme(url: str) -> str:
    """`sqlite` of `sqlite:///var/gateway.db`."""
    scheme, sep, _ = url.partition("://")
    return scheme if sep else ""


def open_store(config: StoreConfig, *, readonly: bool = False) -> Store:
    """The store `config.url` names, built by its backend's factory (not opened yet)."""
    from uvicorn.importer import import_from_string

    scheme = url_scheme(config.url)
    if scheme not in BACKENDS:
        raise ValueError(f"no store backend for {scheme!r} URLs; known: {', '.join(sorted(BACKENDS))}")
    factory = cast(StoreFactory, import_from_string(BACKENDS[scheme]))
    return factory(config, readonly=readonly)
