"""The `[store]` table: its typed form and its parsing, kept together."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from gateway.config.checker import Checker

Synchronous = Literal["FULL", "NORMAL"]


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path = Path("var/gateway.db")
    synchronous: Synchronous = "FULL"
    busy_timeout_ms: int = 5000
    rejections_per_source: int = 1000
    retention_days: int = 0  # 0: keep forever (dedup is only as long as events are kept)


def parse_store(c: Checker, data: Mapping[str, Any], base_dir: Path) -> StoreConfig:
    st = c.table(data, "store", {"path", "synchronous", "busy_timeout_ms", "rejections_per_source",
                                 "retention_days"})
    store_path = Path(c.get(st, "store.path", "path", str, "var/gateway.db"))
    sync = c.get(st, "store.synchronous", "synchronous", str, "FULL").upper()
    if sync not in get_args(Synchronous):
        c.error("store.synchronous", f"must be FULL or NORMAL, got {sync!r}")
    busy = c.get(st, "store.busy_timeout_ms", "busy_timeout_ms", int, 5000)
    if not 0 <= busy <= 600_000:
        c.error("store.busy_timeout_ms", f"must be between 0 and 600000, got {busy}")
    kept = c.get(st, "store.rejections_per_source", "rejections_per_source", int, 1000)
    if not 0 <= kept <= 1_000_000:
        c.error("store.rejections_per_source", f"must be between 0 and 1000000, got {kept}")
    store = StoreConfig(
        path=store_path if store_path.is_absolute() else base_dir / store_path,
        synchronous=sync,
        busy_timeout_ms=busy,
        rejections_per_source=kept,
        retention_days=c.get(st, "store.retention_days", "retention_days", int, 0),
    )
    if not 0 <= store.retention_days <= 100 * 365:
        c.error("store.retention_days", f"must be between 0 (keep forever) and 36500, got {store.retention_days}")
    return store
