"""The contract suite's backends: each test of test_contract*.py runs once per backend.

A backend plugs in with a small helper class (see `SQLiteBackend`) that opens stores on one
location and reaches into the database for what the contract cannot observe itself: the raw
receipt row, and a fault injected into inserts. `RegisteredBackend` is a backend registered
from tests/ (tests/store/testsqlite.py) without touching gateway/; PostgreSQL will be one
more class in `BACKENDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import StoreConfig
from gateway.model import Outcome, ParsedEvent
from gateway.store import Receipt, Store, open_store
from gateway.store.committer import Op
from tests.conftest import postgres_schema, postgres_sql
from tests.store import testsqlite

RECEIVED_AT = 1763633702.123456  # 2025-11-20T10:15:02.123456Z


class Stores:
    """Opening stores on one backend's location (`config`), all closed at teardown."""

    config: StoreConfig

    def __init__(self) -> None:
        self.stores: list[Store] = []

    def new(self, *, readonly: bool = False) -> Store:
        """A store on this backend's location, not opened yet; closed at teardown."""
        store = open_store(self.config, readonly=readonly)
        self.stores.append(store)
        return store

    async def open(self, *, readonly: bool = False) -> Store:
        store = self.new(readonly=readonly)
        await store.open()
        return store

    async def close_all(self) -> None:
        for store in reversed(self.stores):
            await store.close()


class SQLiteBackend(Stores):
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        self.config = StoreConfig(path=tmp_path / "x.db")  # url: sqlite:///<that path>

    def _connect(self) -> closing[sqlite3.Connection]:
        return closing(sqlite3.connect(self.config.path, isolation_level=None))

    def create_without_schema(self) -> None:
        """A database that exists but holds no event store."""
        with self._connect() as conn:
            conn.execute("CREATE TABLE unrelated (x)")

    def fail_inserts_of(self, entity_id: str) -> None:
        """From now on, inserting an event with this entity id aborts (a real database error)."""
        with self._connect() as conn:
            conn.execute(
                "CREATE TRIGGER injected_fault BEFORE INSERT ON events"
                f" WHEN NEW.entity_id = '{entity_id}' BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            )

    def forget_identities(self) -> None:
        """Make every stored event look as if written before identities (what migration 7 leaves)."""
        with self._connect() as conn:
            conn.execute("UPDATE events SET fingerprint = NULL")

    @contextlib.asynccontextmanager
    async def writer_busy(self, store: Store) -> AsyncIterator[None]:
        """The store's writer busy with other work for the block (a slow disk, a long group):
        what a flood of writes meets. Its thread would otherwise take each write at once."""
        release = threading.Event()
        held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        store._submit(Op(lambda db: release.wait(10), held))  # type: ignore[attr-defined]
        try:
            yield
        finally:
            release.set()
            await held

    def heal(self) -> None:
        with self._connect() as conn:
            conn.execute("DROP TRIGGER injected_fault")

    def raw_receipt(self, request_id: str) -> tuple[Any, bytes]:
        """The stored headers (decoded JSON) and the body bytes of one request."""
        with self._connect() as conn:
            rows = conn.execute("SELECT headers, body FROM receipts WHERE request_id = ?", (request_id,)).fetchall()
        assert len(rows) == 1, rows
        headers, body = rows[0]
        return orjson.loads(headers), body

    def count_receipts(self) -> int:
        with self._connect() as conn:
            count: int = conn.execute("SELECT count(*) FROM receipts").fetchone()[0]
        return count

    def receipt_ids(self) -> list[int]:
        """The ids of the receipts kept, in order (the contract has no read of receipts)."""
        with self._connect() as conn:
            return [row[0] for row in conn.execute("SELECT id FROM receipts ORDER BY id")]


class RegisteredBackend(SQLiteBackend):
    """The SQLite file under the `testsqlite://` scheme, which tests/store/testsqlite.py registers."""

    name = "testsqlite"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        path = tmp_path / "x.db"
        self.config = StoreConfig(path=path, url=f"{testsqlite.SCHEME}:///{path}")


class PostgresBackend(Stores):
    """A schema of its own on the test server (tests/conftest.py `postgres_url`) for each test,
    named in the URL (`?search_path=`, which asyncpg passes on as a server setting)."""

    name = "postgresql"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        self._schema = postgres_schema()
        self.url = self._schema.__enter__()
        self.config = StoreConfig(path=tmp_path / "x.db", url=self.url)

    async def close_all(self) -> None:
        await super().close_all()
        self._schema.__exit__(None, None, None)

    def run(self, *statements: str) -> list[Any]:
        return postgres_sql(self.url, *statements)

    def create_without_schema(self) -> None:
        self.run("CREATE TABLE unrelated (x int)")

    def fail_inserts_of(self, entity_id: str) -> None:
        self.run(
            "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN IF NEW.entity_id = '{entity_id}' THEN RAISE EXCEPTION 'injected fault'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER injected_fault BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION injected_fault()")

    def heal(self) -> None:
        self.run("DROP TRIGGER injected_fault ON events")

    def forget_identities(self) -> None:
        self.run("UPDATE events SET fingerprint = NULL")

    @contextlib.asynccontextmanager
    async def writer_busy(self, store: Store) -> AsyncIterator[None]:
        """Another connection holds the id counters, which every group of the writer locks first."""
        import asyncpg

        conn = await asyncpg.connect(self.url)
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("SELECT * FROM id_counters FOR UPDATE")
        try:
            yield
        finally:
            await transaction.rollback()
            await conn.close()

    def raw_receipt(self, request_id: str) -> tuple[Any, bytes]:
        rows = self.run(f"SELECT headers, body FROM receipts WHERE request_id = '{request_id}'")
        assert len(rows) == 1, rows
        return orjson.loads(rows[0][0]), bytes(rows[0][1])

    def count_receipts(self) -> int:
        return int(self.run("SELECT count(*) FROM receipts")[0][0])

    def receipt_ids(self) -> list[int]:
        return [row[0] for row in self.run("SELECT id FROM receipts ORDER BY id")]


BACKENDS = [SQLiteBackend, RegisteredBackend, PostgresBackend]


@pytest.fixture(params=BACKENDS, ids=lambda cls: cls.name)
async def backend(request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str) -> AsyncIterator[Any]:
    backend = request.param(tmp_path)
    try:
        yield backend
    finally:
        await backend.close_all()


@pytest.fixture
async def store(backend: Any) -> Store:
    opened: Store = await backend.open()
    return opened


def receipt(
    request_id: str = "req-1",
    *,
    source: str = "src",
    scheme: str = "metacopier",
    body: bytes = b'{"type":"position.opened","position":{"id":"88412231"}}',
    received_at: float = RECEIVED_AT,
    remote_addr: str | None = "203.0.113.7",
    attempt: int | None = 2,
    headers: Sequence[tuple[str, str]] = (("content-type", "application/json"),),
) -> Receipt:
    return Receipt(request_id=request_id, source=source, scheme=scheme, received_at=received_at,
                   remote_addr=remote_addr, attempt=attempt, headers=headers, body=body)


def event(entity_id: str = "88412231", event_type: str = "position.opened", **extra: Any) -> ParsedEvent:
    return ParsedEvent(event_type=event_type, entity_id=entity_id, **extra)


async def one(store: Store, rec: Receipt, ev: ParsedEvent) -> Outcome:
    [outcome] = await store.ingest(rec, [ev])
    return outcome
