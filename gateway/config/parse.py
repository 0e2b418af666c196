"""Parsing the TOML file into a `Config`: every section but the sources and the store, which
have modules of their own, and the file itself (permissions, TOML errors).

Every problem is reported with the file, the key and what is wrong; loading collects all
of them before failing so a user fixes the file in one pass.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.config.checker import Checker
from gateway.config.model import (
    DEFAULT_MAX_BODY,
    MAX_WORKERS,
    PLUGIN_NAME,
    SCOPES,
    SOURCE_NAME,
    ApiConfig,
    ClientConfig,
    Config,
    ConfigError,
    MetricsConfig,
    PluginConfig,
    ServerConfig,
    SourceConfig,
)
from gateway.config.paths import STATE_ENV, resolve_state_dir
from gateway.config.plugin_secrets import literal_option_secrets
from gateway.config.sources import parse_source, shared_secrets
from gateway.config.store import StoreConfig, parse_store


def _globs(c: Checker, raw: Mapping[str, Any], key: str, name: str) -> tuple[str, ...]:
    value = c.get(raw, f"{key}.{name}", name, list, ["*"])
    if not value or not all(isinstance(v, str) and v for v in value):
        c.error(f"{key}.{name}", 'must be a non-empty list of glob strings, e.g. ["*"]')
        return ("*",)
    return tuple(value)


def _plugin(c: Checker, raw: Any, index: int) -> PluginConfig | None:
    key = f"plugins[{index}]"
    if not isinstance(raw, Mapping):
        c.error(key, "must be a table ([[plugins]])")
        return None
    allowed = {
        "name", "use", "sources", "events", "quarantined", "max_attempts", "timeout_seconds",
        "concurrency", "retry_backoff_seconds", "retry_backoff_max_seconds", "options",
        "degraded_after_seconds", "shape", "where",
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
    shape = c.get(raw, f"{key}.shape", "shape", str, "raw")
    if shape not in SHAPES:
        c.error(f"{key}.shape", f"must be one of {', '.join(SHAPES)}, got {shape!r}")
    where = c.get(raw, f"{key}.where", "where", str, None)
    condition = None if where is None else _condition(c, f"{key}.where", where)
    options = c.get(raw, f"{key}.options", "options", dict, {}, echo=False)
    c.literal_secrets.extend(literal_option_secrets(options, f"{key}.options"))
    plugin = PluginConfig(
        name=name or "",
        use=use or "",
        sources=_globs(c, raw, key, "sources"),
        events=_globs(c, raw, key, "events"),
        quarantined=c.get(raw, f"{key}.quarantined", "quarantined", bool, False),
        max_attempts=max_attempts,
        timeout_seconds=c.number(raw, key, "timeout_seconds", 30.0, 0.01, 3600),
        concurrency=concurrency,
        retry_backoff_seconds=c.number(raw, key, "retry_backoff_seconds", 1.0, 0.001, 3600),
        retry_backoff_max_seconds=c.number(raw, key, "retry_backoff_max_seconds", 300.0, 0.001, 86400),
        degraded_after_seconds=c.number(raw, key, "degraded_after_seconds", 300.0, 0.001, 30 * 86400),
        options=MappingProxyType(dict(options)),
        shape=shape,
        where=where,
        condition=condition,
    )
    return None if len(c.errors) > before else plugin


SHAPES = ("raw", "normalized")


def _condition(c: Checker, key: str, where: str) -> Any:
    """`where` compiled; a JMESPath error names the position in the expression, and so does a
    call to a function JMESPath does not have or with the wrong number of arguments (which
    JMESPath itself only finds when the expression runs)."""
    import jmespath
    from jmespath.exceptions import IncompleteExpressionError, JMESPathError, LexerError, ParseError

    if not where.strip():
        c.error(key, "is empty: give a JMESPath expression, or leave where out")
        return None
    try:
        compiled = jmespath.compile(where)
    except (LexerError, ParseError) as exc:
        position = int(exc.lex_position or 0)
        if isinstance(exc, LexerError):
            reason = exc.message
        elif isinstance(exc, IncompleteExpressionError):
            reason = "the expression ends too early"
        else:
            reason = exc.msg
        c.error(key, f"is not a JMESPath expression: {reason}{_pointer(where, position)}")
        return None
    except (JMESPathError, RecursionError) as exc:
        c.error(key, f"is not a JMESPath expression: {str(exc)[:200] or 'nested too deeply'}")
        return None
    problems = _bad_calls(compiled.parsed, where)
    for problem, at in problems:
        c.error(key, problem + _pointer(where, at))
    return None if problems else compiled


def _pointer(where: str, position: int | None) -> str:
    return "" if position is None else f" at position {position}:\n  {where}\n  {' ' * position}^"


def _bad_calls(tree: Any, where: str) -> list[tuple[str, int | None]]:
    """Each call in the parsed `where` to a function missing from JMESPath's built-in table, or
    with a number of arguments its signature refuses, in the order they are written."""
    from difflib import get_close_matches

    from jmespath.functions import Functions

    table: dict[str, Any] = Functions.FUNCTION_TABLE  # built by its metaclass
    sites = _call_sites(where)
    found: dict[tuple[str, int | None], None] = {}
    at: tuple[str, int | None]
    nodes: list[Any] = [tree]
    while nodes:  # a loop, not recursion: the tree may be as deep as the parser allowed
        node = nodes.pop()
        if not isinstance(node, dict):  # a slice's bounds are ints or None
            continue
        nodes.extend(node.get("children", ()))
        if node.get("type") != "function_expression":
            continue
        name, given = node["value"], len(node["children"])
        if name not in table:
            close = get_close_matches(name, table, n=1)
            hint = f" (did you mean {close[0]}()?)" if close else ""
            reason, at = f"calls unknown function {name}(){hint}", (name, None)
        else:
            signature = table[name]["signature"]
            variadic = bool(signature) and bool(signature[-1].get("variadic"))
            wanted = len(signature)
            if given == wanted or (variadic and given > wanted):
                continue
            plural = "" if wanted == 1 else "s"
            least = "at least " if variadic else ""
            reason, at = f"{name}() takes {least}{wanted} argument{plural}, got {given}", (name, given)
        found[reason, sites.get(at, sites.get((name, None)))] = None
    return sorted(found, key=lambda problem: (problem[1] is None, problem[1] or 0))


def _call_sites(where: str) -> dict[tuple[str, int | None], int]:
    """Where each function call starts in `where`, by (name, number of arguments) and by
    (name, None), the first call of that name winning; read from the tokens, because the
    parsed tree keeps no positions."""
    from jmespath.lexer import Lexer

    sites: dict[tuple[str, int | None], int] = {}
    # One frame per open bracket: for a call's "(", [name, start, arguments, between] (between:
    # no token of an argument seen since "(" or the last comma, so `f(a,)` has one, as parsed).
    frames: list[list[Any] | None] = []
    previous: Any = {"type": ""}
    for token in Lexer().tokenize(where):
        kind = token["type"]
        call = frames[-1] if frames else None
        if call is not None and kind == "comma":
            call[3] = True
        elif call is not None and call[3] and kind not in ("rparen", "eof"):
            call[2], call[3] = call[2] + 1, False
        if kind == "lparen" and previous["type"] == "unquoted_identifier":
            frames.append([previous["value"], previous["start"], 0, True])
        elif kind in ("lparen", "lbracket", "filter", "lbrace"):
            frames.append(None)
        elif kind in ("rparen", "rbracket", "rbrace") and frames:
            call = frames.pop()
            if call is not None:
                sites.setdefault((call[0], call[2]), call[1])
                sites.setdefault((call[0], None), call[1])
        previous = token
    return sites


def _metrics(c: Checker, data: Mapping[str, Any]) -> MetricsConfig:
    raw = c.table(data, "metrics", {"listen", "allow_ips"})
    listen = None
    spec = c.get(raw, "metrics.listen", "listen", str, None)
    if spec is not None:
        host, sep, port = spec.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            c.error("metrics.listen", f'must be "host:port", e.g. "127.0.0.1:9464", got {spec!r}')
        else:
            listen = (host.strip("[]"), int(port))
    nets = c.networks("metrics.allow_ips", c.get(raw, "metrics.allow_ips", "allow_ips", list, []))
    return MetricsConfig(listen=listen, allow_ips=tuple(nets))


def _limits(c: Checker, srv: Mapping[str, Any]) -> dict[str, Any]:
    """The [server] abuse limits, as ServerConfig keyword arguments."""
    proxies = c.networks("server.trusted_proxies", c.get(srv, "server.trusted_proxies", "trusted_proxies", list, []))
    limits: dict[str, Any] = {"trusted_proxies": tuple(proxies)}
    for name, default, low, high in (("max_in_flight", 256, 1, 100_000), ("max_connections", 2048, 1, 1_000_000),
                                     ("max_header_bytes", 16384, 1024, 1024 * 1024)):
        value = c.get(srv, f"server.{name}", name, int, default)
        if not low <= value <= high:
            c.error(f"server.{name}", f"must be between {low} and {high}, got {value}")
        limits[name] = value
    # An eighth of the connections by default, so a smaller max_connections never makes it invalid.
    reserved = c.get(srv, "server.reserved_hook_connections", "reserved_hook_connections", int,
                     limits["max_connections"] // 8)
    if not 0 <= reserved < limits["max_connections"]:
        c.error("server.reserved_hook_connections", f"must be from 0 to max_connections - 1, got {reserved}")
    limits["reserved_hook_connections"] = reserved
    limits["client_timeout_seconds"] = c.number(srv, "server", "client_timeout_seconds", 30.0, 1, 3600)
    return limits


def _api(c: Checker, data: Mapping[str, Any]) -> ApiConfig:
    raw = c.table(data, "api", {"public", "token_ttl_seconds", "token_failures_per_minute", "max_streams_per_client",
                                "max_streams"})
    ttl = c.get(raw, "api.token_ttl_seconds", "token_ttl_seconds", int, 3600)
    if not 60 <= ttl <= 7 * 86400:
        c.error("api.token_ttl_seconds", f"must be between 60 and 604800, got {ttl}")
    failures = c.get(raw, "api.token_failures_per_minute", "token_failures_per_minute", int, 10)
    if not 1 <= failures <= 10_000:
        c.error("api.token_failures_per_minute", f"must be between 1 and 10000, got {failures}")
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
    streams: dict[str, int] = {}
    for name, default in (("max_streams_per_client", 16), ("max_streams", 256)):
        streams[name] = c.get(raw, f"api.{name}", name, int, default)
        if not 1 <= streams[name] <= 100_000:
            c.error(f"api.{name}", f"must be between 1 and 100000, got {streams[name]}")
    return ApiConfig(
        public=c.get(raw, "api.public", "public", bool, False),
        token_ttl_seconds=ttl,
        token_failures_per_minute=failures,
        clients=MappingProxyType(clients),
        **streams,
    )


def _store_left_behind(c: Checker, store: StoreConfig, config_dir: Path, state_dir: Path, why: str) -> None:
    """Refuse a state directory without a store when the folder relative paths resolved against
    before (the config file's) has one: starting would silently open a new, empty store and
    lose the dedup history."""
    if state_dir == config_dir or not store.url.startswith("sqlite:") or store.path.exists():
        return
    try:
        before = config_dir / store.path.relative_to(state_dir)
    except ValueError:
        return  # not a relative path: it does not depend on the state directory
    if before.exists():
        c.error("store.path", f"the store is at {before}, but relative paths now resolve against the state "
                              f"directory {state_dir} (from {why}), which has none: move the store (with "
                              f"api-signing.key beside it) there, or set [store] path = \"{before}\"")


def parse_config(
    data: Mapping[str, Any],
    *,
    origin: str,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate parsed TOML into a `Config`, or raise `ConfigError` listing every problem."""
    c = Checker(origin, os.environ if environ is None else environ)
    c.unknown(data, "", {"server", "store", "sources", "plugins", "api", "clients", "metrics"})

    srv = c.table(data, "server", {"host", "port", "workers", "max_body_bytes", "shutdown_timeout_seconds",
                                   "trusted_proxies", "max_in_flight", "max_connections", "max_header_bytes",
                                   "client_timeout_seconds", "reserved_hook_connections", "state_dir"})
    port = c.get(srv, "server.port", "port", int, 8080)
    if not 0 <= port <= 65535:
        c.error("server.port", f"must be between 0 and 65535, got {port}")
    workers = c.get(srv, "server.workers", "workers", int, 1)
    if not 1 <= workers <= MAX_WORKERS:
        c.error("server.workers", f"must be between 1 and {MAX_WORKERS}, got {workers}")
    max_body = c.get(srv, "server.max_body_bytes", "max_body_bytes", int, DEFAULT_MAX_BODY)
    if not 1024 <= max_body <= 64 * 1024 * 1024:
        c.error("server.max_body_bytes", f"must be between 1024 and 67108864, got {max_body}")
    server = ServerConfig(host=c.get(srv, "server.host", "host", str, "127.0.0.1"), port=port,
                          workers=workers, max_body_bytes=max_body,
                          shutdown_timeout_seconds=c.number(srv, "server", "shutdown_timeout_seconds", 30.0, 1, 3600),
                          **_limits(c, srv))

    configured = c.get(srv, "server.state_dir", "state_dir", str, None)
    if configured == "":
        c.error("server.state_dir", "must be a folder, e.g. \"/var/lib/trading-webhook-gateway\"")
    state_dir = resolve_state_dir(base_dir, configured, c.environ)
    store = parse_store(c, data, state_dir)
    _store_left_behind(c, store, base_dir, state_dir, "[server] state_dir" if configured else STATE_ENV)

    sources: dict[str, SourceConfig] = {}
    indexed: list[tuple[int, SourceConfig]] = []
    raw_sources = data.get("sources", [])
    if not isinstance(raw_sources, list) or not raw_sources:
        c.error("sources", "at least one [[sources]] table is required")
        raw_sources = []
    for i, raw in enumerate(raw_sources):
        source = parse_source(c, raw, i)
        if source is None:
            continue
        if source.name in sources:
            c.error(f"sources[{i}].name", f"{source.name!r} is used by another source")
        sources[source.name] = source
        indexed.append((i, source))
    warnings = shared_secrets(c, indexed)

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
                  api=api, metrics=metrics, origin=origin, base_dir=state_dir,
                  literal_secrets=tuple(c.literal_secrets), warnings=tuple(warnings))


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
    return replace(config, warnings=(*config.warnings, warning)) if warning else config
