"""A store backend registered from outside gateway/: `testsqlite:///path`.

It is the SQLite store under another URL scheme, without the file backup capability, so the
contract suite shows both that a registered backend runs it untouched and that it skips by
capability.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import StoreConfig
from gateway.store import register_backend
from gateway.store.sqlite import SQLiteStore, sqlite_path

SCHEME = "testsqlite"


class NoBackupStore(SQLiteStore):
    file_backup = False

    async def backup(self, target: Path) -> None:  # the contract: NotImplementedError, saying what to do
        raise NotImplementedError(f"the {SCHEME} store cannot back up to a file: use its own backup tools")


def factory(config: StoreConfig, *, readonly: bool = False) -> NoBackupStore:
    return NoBackupStore(
        sqlite_path(config.url.replace(f"{SCHEME}://", "sqlite://", 1)),
        synchronous=config.synchronous, busy_timeout_ms=config.busy_timeout_ms, readonly=readonly,
        rejections_per_source=config.rejections_per_source,
    )


register_backend(SCHEME, f"{__name__}:factory")
