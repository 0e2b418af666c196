"""The configuration as frozen, typed objects: what the rest of the gateway reads."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway._secret import Secret
from gateway.config.store import StoreConfig
from gateway.ipnet import IPNetwork, ip_allowed

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PLUGIN_NAME = SOURCE_NAME
DEFAULT_TOLERANCE = 300
DEFAULT_MAX_BODY = 1024 * 1024
MAX_WORKERS = 64
SCOPES = ("events:read", "deliveries:write")


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One sender endpoint, `POST /hooks/{name}`."""

    name: str
    scheme: str  # a name in gateway.schemes.SCHEMES
    secrets: tuple[Secret, ...] = ()
    tolerance_seconds: int = DEFAULT_TOLERANCE
    allow_ips: tuple[IPNetwork, ...] = ()
    dedup_fields: tuple[str, ...] | None = None
    # Paths left out when a repeat's content is compared with the stored version (None: the
    # scheme's default), for fields a sender changes on every retry.
    dedup_ignore_fields: tuple[str, ...] | None = None
    # Authenticated requests per second (token bucket); 0 is no limit. `rate_burst` requests may
    # arrive at once after a quiet spell.
    rate_limit: float = 0.0
    rate_burst: int = 0
    # The keys only this source's scheme takes (`Scheme.options`), every one of them once loaded.
    options: Mapping[str, Any] = field(default_factory=dict)
    # True: another source may have the same secret (a request captured at one verifies at the other).
    allow_shared_secret: bool = False
    # The ledger raises `stale_open` for a position open longer than this; None: never.
    max_open_days: float | None = None

    def allows(self, address: str | None) -> bool:
        """True when `address` may send to this source (no allowlist allows any)."""
        return ip_allowed(self.allow_ips, address)


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """One `[[plugins]]` entry: which events go to which plugin, and how it is retried."""

    name: str
    use: str
    sources: tuple[str, ...] = ("*",)
    events: tuple[str, ...] = ("*",)
    quarantined: bool = False
    max_attempts: int = 10
    timeout_seconds: float = 30.0
    concurrency: int = 4
    retry_backoff_seconds: float = 1.0
    retry_backoff_max_seconds: float = 300.0
    degraded_after_seconds: float = 300.0  # health `degraded` once the oldest pending is older
    # raw: events as stored; normalized: with `normalized` (gateway/normalized.py) beside them
    shape: str = "raw"
    # A JMESPath expression over the event in its shape: events it is not true for get no delivery
    where: str | None = None
    condition: Any = field(default=None, repr=False, compare=False)  # `where`, compiled at load
    # Options can hold secrets (the http plugin's): never shown in repr or logs.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def matches(self, source: str, event_type: str, quarantined: bool) -> bool:
        """Does this plugin want the event? Quarantined events go only to plugins that ask."""
        if quarantined and not self.quarantined:
            return False
        if not any(fnmatch.fnmatchcase(source, glob) for glob in self.sources):
            return False
        return quarantined or any(fnmatch.fnmatchcase(event_type, glob) for glob in self.events)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """An API client (OAuth2 client credentials) and the scopes it may ask for."""

    id: str
    secret: Secret
    scopes: tuple[str, ...] = ("events:read",)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    public: bool = False  # true: reads need no token (a trusted network only)
    token_ttl_seconds: int = 3600
    # Failed client authentications at /oauth/token a minute, per client id and per address,
    # before that id or address gets 429 until a minute has passed since its oldest failure.
    token_failures_per_minute: int = 10
    clients: Mapping[str, ClientConfig] = field(default_factory=dict)
    # Live streams (SSE and WebSocket) open at once: per client (its id; an anonymous reader's
    # address) and in total, so that readers cannot take the connections webhooks need.
    max_streams_per_client: int = 16
    max_streams: int = 256


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where /metrics is served: on the main port (default), or only on `listen` (host:port);
    `allow_ips` limits who may scrape it on the main port."""

    listen: tuple[str, int] | None = None
    allow_ips: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Processes serving the one listening socket (gateway.supervisor); 1 runs without a supervisor.
    workers: int = 1
    max_body_bytes: int = DEFAULT_MAX_BODY
    shutdown_timeout_seconds: float = 30.0
    # Abuse limits (gateway/limits.py, gateway/_http.py); see config.example.toml for the why.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_in_flight: int = 256
    max_connections: int = 2048
    # Connections only /hooks/ may use: streams and API are refused beyond max_connections - this.
    reserved_hook_connections: int = 256
    max_header_bytes: int = 16384
    client_timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    sources: Mapping[str, SourceConfig]
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    plugins: tuple[PluginConfig, ...] = ()
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    origin: str = "<defaults>"
    # The state directory (gateway.config.paths): relative data paths (the store, plugin files,
    # the exec working folder) resolve against it; plugins get it as `PluginContext.base_dir`.
    base_dir: Path = Path(".")
    # Where the file holds secrets in plain text (key paths, never values), and what is wrong
    # about that: `gateway run` logs the warnings at start, `check-config` prints them.
    literal_secrets: tuple[str, ...] = field(default=(), compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def state_dir(self) -> Path:
        return self.base_dir

    def all_secrets(self) -> tuple[Secret, ...]:
        """Every source and API client secret (plugin options are the plugins' own)."""
        return (*(s for src in self.sources.values() for s in src.secrets),
                *(client.secret for client in self.api.clients.values()))


class ConfigError(Exception):
    """The configuration is invalid; `errors` holds one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
