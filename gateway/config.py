"""The gateway's configuration: one TOML file, parsed once into frozen, typed objects.

Every problem is reported with the file, the key and what is wrong; loading collects all
of them before failing so a user fixes the file in one pass.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from gateway._secret import Secret

Scheme = Literal["metacopier", "pipsync", "tradrapi"]
Auth = Literal["hmac", "bearer", "none"]
Synchronous = Literal["FULL", "NORMAL"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES: tuple[str, ...] = get_args(Scheme)
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_TOLERANCE = 300
DEFAULT_MAX_BODY = 1024 * 1024


def ip_allowed(networks: tuple[IPNetwork, ...], address: str | None) -> bool:
    """True when `address` is in one of `networks`; an empty list allows any address."""
    if not networks:
        return True
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 on a dual-stack socket
    return any(ip in net for net in networks)


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One sender endpoint, `POST /hooks/{name}`."""

    name: str
    scheme: Scheme
    secrets: tuple[Secret, ...] = ()
    tolerance_seconds: int = DEFAULT_TOLERANCE
    auth: Auth = "hmac"  # metacopier only
    require_timestamp: bool = True  # metacopier only
    allow_ips: tuple[IPNetwork, ...] = ()
    dedup_fields: tuple[str, ...] | None = None
    # Paths left out when a repeat's content is compared with the stored version (None: the
    # scheme's default), for fields a sender changes on every retry.
    dedup_ignore_fields: tuple[str, ...] | None = None
    # Authenticated requests per second (token bucket); 0 is no limit. `rate_burst` requests may
    # arrive at once after a quiet spell.
    rate_limit: float = 0.0
    rate_burst: int = 0

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
    # Options can hold secrets (the http plugin's): never shown in repr or logs.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def matches(self, source: str, event_type: str, quarantined: bool) -> bool:
        """Does this plugin want the event? Quarantined events go only to plugins that ask."""
        if quarantined and not self.quarantined:
            return False
        if not any(fnmatch.fnmatchcase(source, glob) for glob in self.sources):
            return False
        return quarantined or any(fnmatch.fnmatchcase(event_type, glob) for glob in self.events)


SCOPES = ("events:read", "deliveries:write")


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
    clients: Mapping[str, ClientConfig] = field(default_factory=dict)


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
    max_body_bytes: int = DEFAULT_MAX_BODY
    shutdown_timeout_seconds: float = 30.0
    # Abuse limits (gateway/limits.py, gateway/_http.py); see config.example.toml for the why.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_in_flight: int = 256
    max_connections: int = 2048
    max_header_bytes: int = 16384
    client_timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path = Path("var/gateway.db")
    synchronous: Synchronous = "FULL"
    busy_timeout_ms: int = 5000
    rejections_per_source: int = 1000
    retention_days: int = 0  # 0: keep forever (dedup is only as long as events are kept)


@dataclass(frozen=True, slots=True)
class Config:
    sources: Mapping[str, SourceConfig]
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    plugins: tuple[PluginConfig, ...] = ()
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    origin: str = "<defaults>"
    base_dir: Path = Path(".")
    # Where the file holds secrets in plain text (key paths, never values), and what is wrong
    # about that: `gateway run` logs the warnings at start, `check-config` prints them.
    literal_secrets: tuple[str, ...] = field(default=(), compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def all_secrets(self) -> tuple[Secret, ...]:
        """Every source and API client secret (plugin options are the plugins' own)."""
        return (*(s for src in self.sources.values() for s in src.secrets),
                *(client.secret for client in self.api.clients.values()))


class ConfigError(Exception):
    """The configuration is invalid; `errors` holds one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Checker:
    """Reads values out of the parsed TOML, recording each problem with its key path."""

    def __init__(self, origin: str, environ: Mapping[str, str]) -> None:
        self.origin = origin
        self.environ = environ
        self.errors: list[str] = []
        self.literal_secrets: list[str] = []  # key paths of secrets written in the file itself

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.origin}: {key}: {message}")

    def table(self, data: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
        value = data.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(value, Mapping):
            self.error(key, f"must be a table, got {type(value).__name__}")
            return {}
        self.unknown(value, key, allowed)
        return value

    def unknown(self, data: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
        for name in data:
            if name not in allowed:
                hint = ", ".join(sorted(allowed))
                self.error(f"{prefix}.{name}" if prefix else name, f"unknown key (known: {hint})")

    def get(self, data: Mapping[str, Any], key: str, name: str, kind: type, default: Any,
            echo: bool = True) -> Any:
        """`data[name]` if it is a `kind`; `echo=False` for keys that may hold secrets (the
        error then names the type found, not the value)."""
        if name not in data:
            return default
        value = data[name]
        # bool is an int subclass in Python; TOML keeps them apart and so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            shown = f" {value!r}" if echo else ""
            self.error(key, f"must be {kind.__name__}, got {type(value).__name__}{shown}")
            return default
        return value

    def secret(self, key: str, raw: Any) -> Secret | None:
        if not isinstance(raw, str) or not raw:
            self.error(key, "must be a non-empty string")
            return None
        if raw.startswith("env:"):
            var = raw[4:]
            value = self.environ.get(var)
            if not value:
                self.error(key, f"environment variable {var} is not set or empty")
                return None
            return Secret(value)
        self.literal_secrets.append(key)
        return Secret(raw)


# Minimum/maximum secret lengths the vendors themselves enforce.
_SECRET_LENGTH = {
    ("metacopier", "hmac"): (32, None, "MetaCopier requires HMAC secrets of at least 32 characters"),
    ("metacopier", "bearer"): (16, None, "use a bearer token of at least 16 characters"),
    ("pipsync", "hmac"): (8, None, "use the webhook secret PipSync shows"),
    ("tradrapi", "hmac"): (20, 140, "TradrAPI keys are 20 to 140 characters"),
}


def _networks(c: _Checker, key: str, items: list[Any]) -> list[IPNetwork]:
    """Addresses and CIDRs of an allowlist; each bad entry is an error naming its index."""
    nets: list[IPNetwork] = []
    for i, item in enumerate(items):
        try:
            nets.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            c.error(f"{key}[{i}]", f"{item!r} is not an IP address or CIDR")
    return nets


def _source(c: _Checker, raw: Any, index: int) -> SourceConfig | None:
    key = f"sources[{index}]"
    if not isinstance(raw, Mapping):
        c.error(key, "must be a table ([[sources]])")
        return None
    allowed = {
        "name", "scheme", "secret", "secrets", "tolerance_seconds", "auth",
        "require_timestamp", "allow_ips", "dedup_fields", "dedup_ignore_fields", "rate_limit", "rate_burst",
    }
    c.unknown(raw, key, allowed)
    before = len(c.errors)

    name = c.get(raw, f"{key}.name", "name", str, None)
    if name is None:
        c.error(f"{key}.name", "is required (the endpoint is POST /hooks/{name})")
    elif not SOURCE_NAME.fullmatch(name):
        c.error(f"{key}.name", f"{name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    key = f"sources[{index}] ({name})" if name else key

    scheme = c.get(raw, f"{key}.scheme", "scheme", str, None)
    if scheme not in SCHEMES:
        c.error(f"{key}.scheme", f"must be one of {', '.join(SCHEMES)}, got {scheme!r}")

    auth = c.get(raw, f"{key}.auth", "auth", str, "hmac")
    if "auth" in raw and scheme != "metacopier":
        c.error(f"{key}.auth", "applies to metacopier sources only")
    elif auth not in get_args(Auth):
        c.error(f"{key}.auth", f"must be one of hmac, bearer, none, got {auth!r}")
    require_ts = c.get(raw, f"{key}.require_timestamp", "require_timestamp", bool, True)
    if "require_timestamp" in raw and scheme != "metacopier":
        c.error(f"{key}.require_timestamp", "applies to metacopier sources only")

    if "secret" in raw and "secrets" in raw:
        c.error(f"{key}.secrets", "give either secret or secrets, not both")
    raw_secrets = raw.get("secrets", [raw["secret"]] if "secret" in raw else [])
    secrets: list[Secret] = []
    if not isinstance(raw_secrets, list):
        c.error(f"{key}.secrets", "must be a list of strings")
        raw_secrets = []
    for i, item in enumerate(raw_secrets):
        secret = c.secret(f"{key}.secrets[{i}]", item)
        if secret is None:
            continue
        bounds = _SECRET_LENGTH.get((scheme, auth if scheme == "metacopier" else "hmac"))
        if bounds:
            low, high, why = bounds
            size = len(secret.reveal())
            if size < low or (high is not None and size > high):
                c.error(f"{key}.secrets[{i}]", f"is {size} characters; {why}")
        secrets.append(secret)
    if auth == "none":
        if secrets:
            c.error(f"{key}.secrets", "auth = \"none\" takes no secrets")
    elif not raw_secrets and scheme in SCHEMES:
        c.error(f"{key}.secrets", "at least one secret is required")

    tolerance = c.get(raw, f"{key}.tolerance_seconds", "tolerance_seconds", int, DEFAULT_TOLERANCE)
    if not 1 <= tolerance <= 7 * 86400:
        c.error(f"{key}.tolerance_seconds", f"must be between 1 and 604800, got {tolerance}")

    raw_ips = c.get(raw, f"{key}.allow_ips", "allow_ips", list, [])
    nets = _networks(c, f"{key}.allow_ips", raw_ips)
    if auth == "none" and not raw_ips:
        c.error(f"{key}.auth", 'auth = "none" is refused unless allow_ips limits who may send')

    fields = c.get(raw, f"{key}.dedup_fields", "dedup_fields", list, None)
    if fields is not None and not (fields and all(isinstance(f, str) and f.strip(".") for f in fields)):
        c.error(f"{key}.dedup_fields", 'must be a non-empty list of paths like "position.id"')
        fields = None
    ignore = c.get(raw, f"{key}.dedup_ignore_fields", "dedup_ignore_fields", list, None)
    if ignore is not None and not all(isinstance(f, str) and f.strip(".") for f in ignore):
        c.error(f"{key}.dedup_ignore_fields", 'must be a list of paths like "timestamp" (may be empty)')
        ignore = None

    rate = _number(c, raw, key, "rate_limit", 0.0, 0, 1_000_000)
    burst = c.get(raw, f"{key}.rate_burst", "rate_burst", int, max(1, math.ceil(rate * 10)))
    if "rate_burst" in raw and rate == 0:
        c.error(f"{key}.rate_burst", "needs rate_limit (requests per second) above 0")
    elif not 1 <= burst <= 1_000_000:
        c.error(f"{key}.rate_burst", f"must be between 1 and 1000000, got {burst}")

    if len(c.errors) > before:
        return None
    return SourceConfig(
        name=name,
        scheme=scheme,
        secrets=tuple(secrets),
        tolerance_seconds=tolerance,
        auth=auth,
        require_timestamp=require_ts,
        allow_ips=tuple(nets),
        dedup_fields=tuple(fields) if fields is not None else None,
        dedup_ignore_fields=tuple(ignore) if ignore is not None else None,
        rate_limit=rate,
        rate_burst=burst if rate else 0,
    )


PLUGIN_NAME = SOURCE_NAME


def _globs(c: _Checker, raw: Mapping[str, Any], key: str, name: str) -> tuple[str, ...]:
    value = c.get(raw, f"{key}.{name}", name, list, ["*"])
    if not value or not all(isinstance(v, str) and v for v in value):
        c.error(f"{key}.{name}", 'must be a non-empty list of glob strings, e.g. ["*"]')
        return ("*",)
    return tuple(value)


def _number(c: _Checker, raw: Mapping[str, Any], key: str, name: str, default: float,
            low: float, high: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        c.error(f"{key}.{name}", f"must be a number, got {type(value).__name__} {value!r}")
        return default
    if not low <= value <= high:
        c.error(f"{key}.{name}", f"must be between {low:g} and {high:g}, got {value}")
    return float(value)


# Plugin options are the plugin's own business, so which of them are secrets is a guess by
# name (secret, token, password, Authorization, api_key, ...) plus credentials inside URLs.
_SECRET_NAME = re.compile(r"secret|token|passw|key|auth|credential|cookie|signature", re.IGNORECASE)
_URL_SECRET = re.compile(r"://[^/@\s]*:[^/@\s]*@|[?&][^=&#]*(?:secret|token|passw|key|auth|sig)[^=&#]*=[^&#]",
                         re.IGNORECASE)


def _literal_option_secrets(value: Any, key: str, name: str = "") -> list[str]:
    """Key paths of plugin options that look like secrets written in the file (not env:NAME)."""
    if isinstance(value, Mapping):
        return [k for sub, item in value.items() for k in _literal_option_secrets(item, f"{key}.{sub}", str(sub))]
    if isinstance(value, list):
        return [k for i, item in enumerate(value) for k in _literal_option_secrets(item, f"{key}[{i}]", name)]
    if not isinstance(value, str) or not value or value.startswith("env:"):
        return []
    return [key] if _SECRET_NAME.search(name) or _URL_SECRET.search(value) else []


def _plugin(c: _Checker, raw: Any, index: int) -> PluginConfig | None:
    key = f"plugins[{index}]"
    if not isinstance(raw, Mapping):
        c.error(key, "must be a table ([[plugins]])")
        return None
    allowed = {
        "name", "use", "sources", "events", "quarantined", "max_attempts", "timeout_seconds",
        "concurrency", "retry_backoff_seconds", "retry_backoff_max_seconds", "options",
    }
    c.unknown(raw, key, allowed)
    before = len(c.errors)
    name = c.get(raw, f"{key}.name", "name", str, None)
    if name is None or not PLUGIN_NAME.fullmatch(name):
        c.error(f"{key}.name", "is required: 1-64 letters, digits, '_', '.' or '-'")
    key = f"plugins[{index}] ({name})" if name else key
    use = c.get(raw, f"{key}.use", "use", str, None)
    if not use:
        c.error(f"{key}.use", 'is required: a built-in (jsonl, http, exec), "package.module:factory" '
                              "or an entry point name in the group gateway.plugins")
    max_attempts = c.get(raw, f"{key}.max_attempts", "max_attempts", int, 10)
    if not 1 <= max_attempts <= 1000:
        c.error(f"{key}.max_attempts", f"must be between 1 and 1000, got {max_attempts}")
    concurrency = c.get(raw, f"{key}.concurrency", "concurrency", int, 4)
    if not 1 <= concurrency <= 256:
        c.error(f"{key}.concurrency", f"must be between 1 and 256, got {concurrency}")
    options = c.get(raw, f"{key}.options", "options", dict, {}, echo=False)
    c.literal_secrets.extend(_literal_option_secrets(options, f"{key}.options"))
    plugin = PluginConfig(
        name=name or "",
        use=use or "",
        sources=_globs(c, raw, key, "sources"),
        events=_globs(c, raw, key, "events"),
        quarantined=c.get(raw, f"{key}.quarantined", "quarantined", bool, False),
        max_attempts=max_attempts,
        timeout_seconds=_number(c, raw, key, "timeout_seconds", 30.0, 0.01, 3600),
        concurrency=concurrency,
        retry_backoff_seconds=_number(c, raw, key, "retry_backoff_seconds", 1.0, 0.001, 3600),
        retry_backoff_max_seconds=_number(c, raw, key, "retry_backoff_max_seconds", 300.0, 0.001, 86400),
        options=MappingProxyType(dict(options)),
    )
    return None if len(c.errors) > before else plugin


def _metrics(c: _Checker, data: Mapping[str, Any]) -> MetricsConfig:
    raw = c.table(data, "metrics", {"listen", "allow_ips"})
    listen = None
    spec = c.get(raw, "metrics.listen", "listen", str, None)
    if spec is not None:
        host, sep, port = spec.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            c.error("metrics.listen", f'must be "host:port", e.g. "127.0.0.1:9464", got {spec!r}')
        else:
            listen = (host.strip("[]"), int(port))
    nets = _networks(c, "metrics.allow_ips", c.get(raw, "metrics.allow_ips", "allow_ips", list, []))
    return MetricsConfig(listen=listen, allow_ips=tuple(nets))


def _limits(c: _Checker, srv: Mapping[str, Any]) -> dict[str, Any]:
    """The [server] abuse limits, as ServerConfig keyword arguments."""
    proxies = _networks(c, "server.trusted_proxies", c.get(srv, "server.trusted_proxies", "trusted_proxies", list, []))
    limits: dict[str, Any] = {"trusted_proxies": tuple(proxies)}
    for name, default, low, high in (("max_in_flight", 256, 1, 100_000), ("max_connections", 2048, 1, 1_000_000),
                                     ("max_header_bytes", 16384, 1024, 1024 * 1024)):
        value = c.get(srv, f"server.{name}", name, int, default)
        if not low <= value <= high:
            c.error(f"server.{name}", f"must be between {low} and {high}, got {value}")
        limits[name] = value
    limits["client_timeout_seconds"] = _number(c, srv, "server", "client_timeout_seconds", 30.0, 1, 3600)
    return limits


def _api(c: _Checker, data: Mapping[str, Any]) -> ApiConfig:
    raw = c.table(data, "api", {"public", "token_ttl_seconds"})
    ttl = c.get(raw, "api.token_ttl_seconds", "token_ttl_seconds", int, 3600)
    if not 60 <= ttl <= 7 * 86400:
        c.error("api.token_ttl_seconds", f"must be between 60 and 604800, got {ttl}")
    clients: dict[str, ClientConfig] = {}
    raw_clients = data.get("clients", [])
    if not isinstance(raw_clients, list):
        c.error("clients", "must be an array of tables ([[clients]])")
        raw_clients = []
    for i, entry in enumerate(raw_clients):
        key = f"clients[{i}]"
        if not isinstance(entry, Mapping):
            c.error(key, "must be a table ([[clients]])")
            continue
        c.unknown(entry, key, {"id", "secret", "scopes"})
        client_id = c.get(entry, f"{key}.id", "id", str, None)
        if client_id is None or not SOURCE_NAME.fullmatch(client_id):
            c.error(f"{key}.id", "is required: 1-64 letters, digits, '_', '.' or '-'")
            continue
        key = f"clients[{i}] ({client_id})"
        secret = c.secret(f"{key}.secret", entry.get("secret"))
        if secret is not None and len(secret.reveal()) < 16:
            c.error(f"{key}.secret", "must be at least 16 characters")
        scopes = c.get(entry, f"{key}.scopes", "scopes", list, ["events:read"])
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            c.error(f"{key}.scopes", f"must be a non-empty list of {', '.join(SCOPES)}; got {scopes!r}")
        if client_id in clients:
            c.error(f"{key}.id", f"{client_id!r} is used by another client")
        if secret is not None:
            clients[client_id] = ClientConfig(id=client_id, secret=secret, scopes=tuple(scopes))
    return ApiConfig(
        public=c.get(raw, "api.public", "public", bool, False),
        token_ttl_seconds=ttl,
        clients=MappingProxyType(clients),
    )


def parse_config(
    data: Mapping[str, Any],
    *,
    origin: str,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate parsed TOML into a `Config`, or raise `ConfigError` listing every problem."""
    c = _Checker(origin, os.environ if environ is None else environ)
    c.unknown(data, "", {"server", "store", "sources", "plugins", "api", "clients", "metrics"})

    srv = c.table(data, "server", {"host", "port", "max_body_bytes", "shutdown_timeout_seconds", "trusted_proxies",
                                   "max_in_flight", "max_connections", "max_header_bytes", "client_timeout_seconds"})
    port = c.get(srv, "server.port", "port", int, 8080)
    if not 0 <= port <= 65535:
        c.error("server.port", f"must be between 0 and 65535, got {port}")
    max_body = c.get(srv, "server.max_body_bytes", "max_body_bytes", int, DEFAULT_MAX_BODY)
    if not 1024 <= max_body <= 64 * 1024 * 1024:
        c.error("server.max_body_bytes", f"must be between 1024 and 67108864, got {max_body}")
    server = ServerConfig(host=c.get(srv, "server.host", "host", str, "127.0.0.1"), port=port,
                          max_body_bytes=max_body,
                          shutdown_timeout_seconds=_number(c, srv, "server", "shutdown_timeout_seconds", 30.0, 1, 3600),
                          **_limits(c, srv))

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

    sources: dict[str, SourceConfig] = {}
    raw_sources = data.get("sources", [])
    if not isinstance(raw_sources, list) or not raw_sources:
        c.error("sources", "at least one [[sources]] table is required")
        raw_sources = []
    for i, raw in enumerate(raw_sources):
        source = _source(c, raw, i)
        if source is None:
            continue
        if source.name in sources:
            c.error(f"sources[{i}].name", f"{source.name!r} is used by another source")
        sources[source.name] = source

    plugins: list[PluginConfig] = []
    raw_plugins = data.get("plugins", [])
    if not isinstance(raw_plugins, list):
        c.error("plugins", "must be an array of tables ([[plugins]])")
        raw_plugins = []
    for i, raw in enumerate(raw_plugins):
        plugin = _plugin(c, raw, i)
        if plugin is None:
            continue
        if any(p.name == plugin.name for p in plugins):
            c.error(f"plugins[{i}].name", f"{plugin.name!r} is used by another plugin")
        plugins.append(plugin)

    api = _api(c, data)
    metrics = _metrics(c, data)
    if c.errors:
        raise ConfigError(c.errors)
    return Config(sources=MappingProxyType(sources), server=server, store=store, plugins=tuple(plugins),
                  api=api, metrics=metrics, origin=origin, base_dir=base_dir,
                  literal_secrets=tuple(c.literal_secrets))


def permission_warning(path: Path, mode: int, literal_secrets: tuple[str, ...]) -> str | None:
    """A warning when a file holding secrets in plain text is readable by group or others."""
    if not literal_secrets or not mode & 0o044:
        return None
    who = " and ".join(w for w, bit in (("its group", 0o040), ("other users", 0o004)) if mode & bit)
    more = len(literal_secrets) - 3
    keys = ", ".join(literal_secrets[:3]) + (f" and {more} more" if more > 0 else "")
    return (f"{path} holds secrets in plain text ({keys}) and is readable by {who} (mode {mode & 0o777:04o}): "
            f"run chmod 600 {path}, or read the secrets from the environment with env:NAME")


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file; relative paths resolve against its folder."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode  # of the file actually read
            data = tomllib.loads(fh.read().decode("utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # neither message quotes the text (the line may hold a secret): they give line and column
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    config = parse_config(data, origin=str(path), base_dir=path.resolve().parent, environ=environ)
    warning = permission_warning(path, mode, config.literal_secrets)
    return replace(config, warnings=(warning,)) if warning else config
