"""The `[store]` table: its typed form and its parsing, kept together."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from gateway._secret import Secret

if TYPE_CHECKING:
    from gateway.config.checker import Checker

Synchronous = Literal["FULL", "NORMAL"]
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Keys that only a PostgreSQL store takes.
POSTGRES_KEYS = ("password", "pool_size", "statement_timeout_ms", "application_name", "sslmode")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """`[store]`. `url` names the backend by its scheme (`sqlite:///var/gateway.db`); `path` is
    the shorthand for a SQLite file. Either fills in the other: for a SQLite store they name the
    same file; for another backend, `path` is only where local files (the API key) live."""

    path: Path = Path("var/gateway.db")
    synchronous: Synchronous = "FULL"
    busy_timeout_ms: int = 5000
    rejections_per_source: int = 1000
    retention_days: int = 0  # 0: keep forever (dedup is only as long as events are kept)
    url: str = ""
    # PostgreSQL only. The password: `env:NAME` (or a libpq passfile / PGPASSWORD, which the
    # driver reads itself); never in the URL of a config that is shared or logged.
    password: Secret | None = None
    pool_size: int = 10
    statement_timeout_ms: int = 30_000
    application_name: str = "trading-webhook-gateway"
    sslmode: str | None = None  # libpq's sslmode; None: libpq's default (prefer)

    def __post_init__(self) -> None:
        if not self.url:
            object.__setattr__(self, "url", f"sqlite:///{self.path}")

    @property
    def location(self) -> str:
        """Where the store is, for messages: a SQLite store's file, else the URL without credentials."""
        return str(self.path) if self.url.startswith("sqlite:") else re.sub(r"//[^@/]*@", "//", self.url)


def _store_location(c: Checker, st: Mapping[str, Any], base_dir: Path) -> tuple[Path, str]:
    """`[store] url` or its shorthand `path`, as (path, url); a relative SQLite path is relative
    to `base_dir`, the state directory, and the URL carries the resolved path."""
    from gateway.store import BACKENDS, url_scheme  # the registry, loaded when a config is parsed

    default = Path("var/gateway.db")
    url = c.get(st, "store.url", "url", str, "")
    if "url" in st and "path" in st:
        c.error("store.url", "give either url or path (the shorthand for sqlite:///path), not both")
        return base_dir / default, ""
    if not url:
        path = Path(c.get(st, "store.path", "path", str, str(default)))
    elif url_scheme(url) not in BACKENDS:
        c.error("store.url", f"unknown store {url_scheme(url) or url!r}: the url must start with one of "
                             f"{', '.join(s + '://' for s in sorted(BACKENDS))}")
        return base_dir / default, ""
    elif url_scheme(url) != "sqlite":
        return base_dir / default, url
    elif not url.startswith("sqlite:///") or url == "sqlite:///":
        c.error("store.url", f"a SQLite url is sqlite:///relative/path or sqlite:////absolute/path, got {url!r}")
        return base_dir / default, ""
    else:
        path = Path(url.removeprefix("sqlite:///"))
    path = path if path.is_absolute() else base_dir / path
    return path, f"sqlite:///{path}"


def parse_store(c: Checker, data: Mapping[str, Any], base_dir: Path) -> StoreConfig:
    st = c.table(data, "store", {"url", "path", "synchronous", "busy_timeout_ms", "rejections_per_source",
                                 "retention_days", *POSTGRES_KEYS})
    store_path, store_url = _store_location(c, st, base_dir)
    sync = c.get(st, "store.synchronous", "synchronous", str, "FULL").upper()
    if sync not in get_args(Synchronous):
        c.error("store.synchronous", f"must be FULL or NORMAL, got {sync!r}")
    busy = c.get(st, "store.busy_timeout_ms", "busy_timeout_ms", int, 5000)
    if not 0 <= busy <= 600_000:
        c.error("store.busy_timeout_ms", f"must be between 0 and 600000, got {busy}")
    kept = c.get(st, "store.rejections_per_source", "rejections_per_source", int, 1000)
    if not 0 <= kept <= 1_000_000:
        c.error("store.rejections_per_source", f"must be between 0 and 1000000, got {kept}")
    postgres = _postgres(c, st, store_url)
    store = StoreConfig(
        **postgres,
        path=store_path,
        url=store_url,
        synchronous=sync,
        busy_timeout_ms=busy,
        rejections_per_source=kept,
        retention_days=c.get(st, "store.retention_days", "retention_days", int, 0),
    )
    if not 0 <= store.retention_days <= 100 * 365:
        c.error("store.retention_days", f"must be between 0 (keep forever) and 36500, got {store.retention_days}")
    return store


def _postgres(c: Checker, st: Mapping[str, Any], url: str) -> dict[str, Any]:
    """The PostgreSQL settings, as StoreConfig keyword arguments; an error for any of them on
    another backend."""
    given = [key for key in POSTGRES_KEYS if key in st]
    if not url.startswith(("postgresql:", "postgres:")):
        for key in given:
            c.error(f"store.{key}", "is a PostgreSQL setting: give url = \"postgresql://user@host/db\"")
        return {}
    settings: dict[str, Any] = {}
    if "password" in st:
        settings["password"] = c.secret("store.password", st["password"])
    pool = c.get(st, "store.pool_size", "pool_size", int, 10)
    if not 1 <= pool <= 1000:
        c.error("store.pool_size", f"must be between 1 and 1000, got {pool}")
    timeout = c.get(st, "store.statement_timeout_ms", "statement_timeout_ms", int, 30_000)
    if not 100 <= timeout <= 3_600_000:
        c.error("store.statement_timeout_ms", f"must be between 100 and 3600000, got {timeout}")
    name = c.get(st, "store.application_name", "application_name", str, "trading-webhook-gateway")
    if not 0 < len(name) <= 63:
        c.error("store.application_name", "must be 1 to 63 characters")
    sslmode = c.get(st, "store.sslmode", "sslmode", str, "prefer") if "sslmode" in st else None
    if sslmode is not None and sslmode not in SSL_MODES:
        c.error("store.sslmode", f"must be one of {', '.join(SSL_MODES)}, got {sslmode!r}")
    if re.search(r"//[^/@:]*:[^/@]+@", url):  # a password in the URL: a secret written in the file
        c.literal_secrets.append("store.url")
    settings.update(pool_size=pool, statement_timeout_ms=timeout, application_name=name, sslmode=sslmode)
    return settings
