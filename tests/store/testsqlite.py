"""A store backend registered from outside gateway/: `testsqlite:///path`.

It is the SQLite store under another URL scheme, without the file backup capability, so the
contract suite shows both that a registered backend runs it untouched and that it skips by
capability.
"""

from __future__ import annotations

from gateway.config import StoreConfig
from gateway.store import register_backend
from gateway.store.sqlite import SQLiteStore, sqlite_path

SCHEME = "testsqlite"


class NoBackupStore(SQLiteStore):
    file_backup = False


def factory(config: StoreConfig, *, readonly: bool = False) -> NoBackupStore:
    return NoBackupStore(
        sqlite_path(config.url.replace(f"{SCHEME}://", "sqlite://", 1)),
        synchronous=config.synchronous, busy_timeout_ms=config.busy_timeout_ms, readonly=readonly,
        rejections_per_source=config.rejections_per_source,
    )


register_backend(SCHEME, f"{__name__}:factory")
