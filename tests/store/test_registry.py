"""Backends by URL scheme: `[store] url`, its shorthand `path`, the registry, injected metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gateway.config import ConfigError, StoreConfig, parse_config
from gateway.metrics import Metrics
from gateway.store import BACKENDS, Rejection, open_store
from gateway.store.sqlite import SQLiteStore
from tests.store import testsqlite
from tests.store.conftest import RECEIVED_AT, SQLiteBackend

SOURCES = {"sources": [{"name": "m", "scheme": "metacopier", "secret": "x" * 40}]}


def store_config(tmp_path: Path, **store: object) -> StoreConfig:
    return parse_config({**SOURCES, "store": store}, origin="test.toml", base_dir=tmp_path).store


def store_errors(tmp_path: Path, **store: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        store_config(tmp_path, **store)
    return info.value.errors


def test_url_and_path_resolve_alike(tmp_path: Path) -> None:
    by_path = store_config(tmp_path, path="data/events.db")
    by_url = store_config(tmp_path, url="sqlite:///data/events.db")
    assert by_path == by_url
    assert by_url.path == tmp_path / "data" / "events.db"  # relative to the config file's folder
    assert by_url.url == f"sqlite:///{tmp_path}/data/events.db"
    absolute = store_config(tmp_path, url=f"sqlite:///{tmp_path}/abs.db")
    assert absolute.path == tmp_path / "abs.db"
    assert store_config(tmp_path).path == tmp_path / "var" / "gateway.db"
    assert StoreConfig(path=Path("/x/y.db")).url == "sqlite:////x/y.db"


def test_url_errors_are_precise(tmp_path: Path) -> None:
    assert store_errors(tmp_path, url="sqlite:///a.db", path="a.db") == [
        "test.toml: store.url: give either url or path (the shorthand for sqlite:///path), not both"]
    [unknown] = store_errors(tmp_path, url="mysql://db/events")
    assert "store.url: unknown store 'mysql'" in unknown and "sqlite://" in unknown
    [bad] = store_errors(tmp_path, url="sqlite://a.db")
    assert "sqlite:///relative/path or sqlite:////absolute/path" in bad


def test_a_registered_backend_is_chosen_by_its_scheme(tmp_path: Path) -> None:
    assert BACKENDS[testsqlite.SCHEME] == "tests.store.testsqlite:factory"
    config = store_config(tmp_path, url=f"{testsqlite.SCHEME}:///{tmp_path}/t.db")
    assert config.url == f"{testsqlite.SCHEME}:///{tmp_path}/t.db"
    store = open_store(config)
    assert isinstance(store, testsqlite.NoBackupStore)
    assert store.path == tmp_path / "t.db"
    assert type(open_store(StoreConfig(path=tmp_path / "s.db"))) is SQLiteStore
    with pytest.raises(ValueError, match="no store backend for 'nope'"):
        open_store(StoreConfig(url="nope://x"))


@pytest.mark.anyio
async def test_dropped_rejections_are_exported(tmp_path: Path) -> None:
    metrics = Metrics()
    store = open_store(StoreConfig(path=tmp_path / "m.db"))
    store.observe(metrics)
    await store.open()
    try:
        # The writer is busy with something else first (its thread takes work at once otherwise).
        async with SQLiteBackend(tmp_path).writer_busy(store):
            for n in range(2100):  # more than the writer's buffer holds
                store.record_rejection(Rejection(RECEIVED_AT, f"r{n}", f"s{n % 5}", "bad_signature", "x", None, (),
                                                 None, None))
        await store.flush()
    finally:
        await store.close()
    assert store.rejections_dropped == 100
    assert b"gateway_rejections_dropped_total 100.0" in generate_latest(metrics.registry)
