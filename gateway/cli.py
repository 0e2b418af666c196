"""`gateway` command line: run, check-config, send, events, deliveries, replay, tail, prune, backup, restore,
migrate-store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from gateway import __version__
from gateway.config import MAX_WORKERS, Config, ConfigError, load_config
from gateway.defaults import default_config
from gateway.errors import StoreUnavailable
from gateway.model import STORED_STATUSES
from gateway.plugins import Plugin
from gateway.store import DeliveryRecord, Store, StoredEvent, open_store, url_scheme

T = TypeVar("T")
ADDRESS_FILE = "gateway.url"
URL_HELP = "The gateway's base URL, e.g. http://127.0.0.1:8080 (default: the address `gateway run` recorded, else "

CONFIG_HELP = "Config file (default: ./gateway.toml if present, else the embedded default)."
config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    envvar="GATEWAY_CONFIG", help=CONFIG_HELP,
)


def _announce(text: str) -> None:
    click.echo(text, err=True)


def _exit_config_error(exc: ConfigError) -> None:
    for line in exc.errors:
        click.echo(f"config error: {line}", err=True)
    sys.exit(2)


def find_config(path: Path | None, *, create_default: bool = False) -> Config:
    """`path`, else ./gateway.toml, else the embedded default. Raises ConfigError, or
    FileNotFoundError when there is none."""
    if path is not None:
        return load_config(path)
    if Path("gateway.toml").is_file():
        return load_config(Path("gateway.toml"))
    return default_config(Path.cwd(), announce=_announce, create=create_default)


def resolve_config(path: Path | None, *, create_default: bool = False) -> Config:
    """Load the config the way every command does; exit 2 listing every error. Only `run`
    (`create_default`) may generate the embedded default's secrets: any other command run where
    there is no config says what it looked for, and where, and exits 2."""
    try:
        return find_config(path, create_default=create_default)
    except FileNotFoundError as exc:
        click.echo(f"no config found: no --config FILE or GATEWAY_CONFIG, no gateway.toml in {Path.cwd()}, and no "
                   f"embedded default set up here ({exc.filename} does not exist; `gateway run` creates it). "
                   "Run this command where the gateway runs, or give --config FILE.", err=True)
        sys.exit(2)
    except ConfigError as exc:
        _exit_config_error(exc)
        raise  # unreachable


def _reachable_url(host: str, port: int) -> str:
    """The base URL a client on this machine reaches `host:port` on: a wildcard listen address
    (0.0.0.0, ::) is reached on 127.0.0.1."""
    host = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def address_file(config: Config) -> Path:
    """Where `run` records the base URL it listens on, beside the store (in the state directory)."""
    return config.store.path.parent / ADDRESS_FILE


def local_url(config: Config) -> str:
    """The gateway's own base URL as a client on this machine reaches it: the one a running
    `gateway run` recorded (it may have been given --host/--port), else the config's."""
    try:
        recorded = address_file(config).read_text().strip()
    except OSError:
        recorded = ""
    return recorded or _reachable_url(config.server.host, config.server.port)


def base_url(_ctx: click.Context | None, _param: click.Parameter | None, value: str | None) -> str | None:
    """Check a --url: the gateway's base URL, http(s)://host[:port] (a path prefix is allowed
    behind a proxy); a webhook or API path is refused, so `send` and `tail` take the same thing."""
    if value is None:
        return None
    import httpx

    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(f"{value!r} is not a URL: {exc}", param_hint="--url") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise click.BadParameter(f"must be the gateway's base URL, e.g. http://127.0.0.1:8080, got {value!r}",
                                 param_hint="--url")
    if "/hooks/" in url.path or "/api/" in url.path or url.query:
        raise click.BadParameter(f"takes the gateway's base URL (e.g. {url.scheme}://{url.netloc.decode()}), "
                                 f"not a path in it: got {value!r}", param_hint="--url")
    return value.rstrip("/")


def _record_address(config: Config, address: tuple[Any, ...]) -> Callable[[], None]:
    """Write the base URL of the listening `address` to address_file(config) for `send` and
    `tail`; return what removes it again. A state folder that cannot be written only costs a
    warning."""
    log = logging.getLogger("gateway")
    path = address_file(config)
    url = _reachable_url(*address[:2])
    try:
        path.write_text(url + "\n")
    except OSError as exc:
        log.warning("cannot record the address in %s (%s): `gateway send` and `tail` need --url", path, exc)
        return lambda: None
    log.info("listening on %s (recorded in %s); the dashboard is at %s/", url, path, url)

    def remove() -> None:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == url:  # not another instance's
                path.unlink()

    return remove


def build_plugins(config: Config) -> dict[str, Plugin]:
    from gateway.plugins.loader import load_plugins

    try:
        return load_plugins(config)
    except ConfigError as exc:
        _exit_config_error(exc)
        raise  # unreachable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gateway")
def main() -> None:
    """Webhook gateway for trading platforms: verify, deduplicate and store webhooks."""


@main.command()
@config_option
@click.option("--host", help="Address to listen on (default: [server] host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port to listen on, 0 to 65535 as in [server] port (default: [server] port, 8080).")
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS),
              help="Worker processes sharing the listening socket, under a supervisor that restarts them and "
                   "replaces them one at a time on SIGHUP (default: [server] workers, 1).")
@click.option("--fd", type=click.IntRange(0), help="Listen on this inherited socket (file descriptor) instead of "
              "--host/--port. A socket systemd passes (LISTEN_FDS) is used without it.")
@click.option("--log-format", type=click.Choice(["auto", "json", "text"]), default="auto", show_default=True,
              help="auto: JSON lines unless stderr is a terminal.")
def run(config_path: Path | None, host: str | None, port: int | None, workers: int | None, fd: int | None,
        log_format: str) -> None:
    """Serve webhooks at POST /hooks/{source}."""
    from gateway import logs
    from gateway.worker import serve

    config = resolve_config(config_path, create_default=True)
    plugins = build_plugins(config)
    if host is not None and not host.strip():
        raise click.BadParameter("must be an address, e.g. 127.0.0.1 or 0.0.0.0", param_hint="--host")
    host = host or config.server.host
    port = config.server.port if port is None else port
    logs.configure(log_format)
    log = logging.getLogger("gateway")
    try:
        sock = inherited_socket(fd)
    except OSError as exc:
        raise click.BadParameter(f"not a listening TCP socket: {exc}", param_hint="--fd") from None
    if sock is not None:
        host, port = sock.getsockname()[:2]
        log.info("listening on the inherited socket %s:%d (fd %d)", host, port, sock.fileno())
    log.info("config %s; store %s", config.origin, config.store.path)
    for warning in config.warnings:
        log.warning(warning)
    for name, source in config.sources.items():
        log.info("source %s (%s): POST %s/hooks/%s", name, source.scheme, _reachable_url(host, port), name)
    for plugin in config.plugins:
        log.info("plugin %s (%s): sources %s, events %s", plugin.name, plugin.use, ",".join(plugin.sources),
                 ",".join(plugin.events))
    count = workers or config.server.workers
    try:
        if count == 1:
            signal.signal(signal.SIGHUP, lambda _sig, _frame: log.warning(
                "SIGHUP: a single process does not reload; with [server] workers >= 2 a SIGHUP replaces the "
                "workers one at a time on the config on disk. Restart to apply an edit."))
            serve(config, plugins, host=host, port=port, sock=sock,
                  on_listening=lambda address: _record_address(config, address))
            return
        from gateway.auth import load_or_create_key

        load_or_create_key(config.store.path.parent)  # once, before the workers read it
    except ConfigError as exc:  # the token signing key is unusable
        _exit_config_error(exc)
    sys.exit(_supervise(config, config_path, sock, host, port, count, fixed=workers is not None,
                        log_format=log_format))


def _supervise(config: Config, config_path: Path | None, sock: socket.socket | None, host: str, port: int,
               count: int, *, fixed: bool, log_format: str) -> int:
    from gateway.supervisor import STARTUP_FAILURE, Supervisor, bind, prepare_run_dir
    from gateway.worker import WorkerSpec

    if sock is None:
        try:
            sock = bind(host, port)
        except OSError as exc:
            logging.getLogger("gateway").error("cannot listen on %s:%d: %s", host, port, exc)
            return STARTUP_FAILURE
    spec = WorkerSpec(config_path=config_path, host=host, port=port, log_format=log_format, workers=count,
                      run_dir=prepare_run_dir())
    supervisor = Supervisor(spec, sock, config, fixed_workers=fixed, check=lambda: checked_config(config_path),
                            on_listening=lambda address: _record_address(config, address))
    return supervisor.run()


SD_LISTEN_FDS_START = 3  # the first socket systemd passes (sd_listen_fds(3))


def inherited_socket(fd: int | None) -> socket.socket | None:
    """The listening socket given to this process: `--fd`, else the first one systemd's socket
    activation passes (LISTEN_PID is this process, LISTEN_FDS >= 1), else None. The LISTEN_*
    variables are removed, so no child takes them for its own. Raises OSError when the file
    descriptor is not a listening TCP socket."""
    if fd is None and os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS", "0") != "0":
        fd = SD_LISTEN_FDS_START
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if fd is None:
        return None
    sock = socket.socket(fileno=fd)  # family and type read from the descriptor
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) or \
            not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise OSError(f"file descriptor {fd} is not a listening TCP socket")
    return sock



@main.command("check-config")
@config_option
def check_config(config_path: Path | None) -> None:
    """Validate the config; exit non-zero listing every error."""
    config = resolve_config(config_path)
    plugins = build_plugins(config)
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    problems = unwritable_data(config, plugins)
    for problem in problems:
        click.echo(f"config error: {config.origin}: {problem}", err=True)
    if problems:
        click.echo(f"(relative data paths resolve against the state directory {config.state_dir}: set "
                   "[server] state_dir, or StateDirectory= in a systemd unit, to a writable folder)", err=True)
        sys.exit(2)
    names = ", ".join(f"{n} ({s.scheme})" for n, s in config.sources.items())
    listed = ", ".join(f"{p.name} ({p.use})" for p in config.plugins) or "none"
    click.echo(f"{config.origin}: OK: {len(config.sources)} source(s): {names}; plugins: {listed}; "
               f"store {config.store.path}")


def checked_config(path: Path | None) -> Config:
    """The config on disk, checked as `check-config` checks it (the supervisor's check before
    a reload). Raises ConfigError listing every problem."""
    from gateway.plugins.loader import load_plugins

    try:
        config = find_config(path)
    except FileNotFoundError as exc:
        raise ConfigError([f"{exc.filename} does not exist"]) from None
    problems = unwritable_data(config, load_plugins(config))
    if problems:
        raise ConfigError([f"{config.origin}: {problem}" for problem in problems])
    return config


def unwritable_data(config: Config, plugins: dict[str, Plugin]) -> list[str]:
    """Every data path the gateway will write that this process cannot: the store (and the API
    signing key beside it), the jsonl plugins' files, the exec plugins' working folders."""
    from gateway.config.paths import cannot_write
    from gateway.plugins.exec import ExecPlugin
    from gateway.plugins.jsonl import JsonlPlugin

    checks: list[tuple[str, str | None]] = [
        ("store.path" if url_scheme(config.store.url) == "sqlite" else "store (its local files)",
         cannot_write(config.store.path) if url_scheme(config.store.url) == "sqlite"
         else cannot_write(config.store.path.parent, folder=True)),
    ]
    for index, entry in enumerate(config.plugins):
        plugin = plugins.get(entry.name)
        if isinstance(plugin, JsonlPlugin):
            checks.append((f"plugins[{index}] ({entry.name}).options.path", cannot_write(plugin.path)))
        elif isinstance(plugin, ExecPlugin) and plugin.cwd is not None:
            checks.append((f"plugins[{index}] ({entry.name}).options.cwd", cannot_write(plugin.cwd, folder=True)))
    return [f"{key}: {problem}" for key, problem in checks if problem]


@main.command()
@click.argument("source")
@click.option("--event", "event_type", help="Event type of the sample body (default: the scheme's first).")
@click.option("--file", "body_file", type=click.File("rb"), help="Send this body instead of a sample.")
@click.option("--save", type=click.Path(dir_okay=False, path_type=Path), help="Also write the body sent here.")
@click.option("--position", help="The sample's position id: open one, then close it, fully or partly.")
@click.option("--volume", type=click.FloatRange(min=0, min_open=True), help="The sample's volume in lots.")
@click.option("--url", callback=base_url,
              help=URL_HELP + "this config's [server]); the body goes to URL/hooks/SOURCE.")
@config_option
def send(
    source: str, event_type: str | None, body_file: Any, save: Path | None, position: str | None,
    volume: float | None, url: str | None, config_path: Path | None,
) -> None:
    """Sign a body exactly as SOURCE's sender would and POST it to the gateway.

    \b
    A position opened and closed in two parts:
      gateway send metacopier --event position.opened --position 42 --volume 1
      gateway send metacopier --event position.closed --position 42 --volume 0.4
      gateway send metacopier --event position.closed --position 42 --volume 0.6"""
    import httpx

    from gateway.schemes import get_scheme

    config = resolve_config(config_path)
    src = config.sources.get(source)
    if src is None:
        raise click.BadParameter(f"no source {source!r}; configured: {', '.join(config.sources)}")
    scheme = get_scheme(src.scheme)
    if event_type is not None and event_type not in scheme.event_types:
        raise click.BadParameter(f"{event_type!r} is not a {src.scheme} event type; it has: "
                                 f"{', '.join(scheme.event_types)}", param_hint="--event")
    url = url or local_url(config)
    if body_file and (position or volume):
        raise click.BadParameter("--position and --volume shape the sample body; --file sends yours as it is")
    shaped = {k: v for k, v in (("position", position), ("volume", volume)) if v is not None}
    try:
        body = body_file.read() if body_file else scheme.sample(event_type or scheme.event_types[0], **shaped)
    except TypeError:
        raise click.BadParameter(f"the {src.scheme} scheme's samples take no --position or --volume") from None
    if save:
        save.write_bytes(body)
    headers = scheme.sign(body, src, time.time())
    url = f"{url}/hooks/{source}"
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        click.echo(f"cannot reach {url}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{response.status_code} {response.reason_phrase}")
    try:
        click.echo(orjson.dumps(response.json(), option=orjson.OPT_INDENT_2).decode())
    except ValueError:
        click.echo(response.text)
    sys.exit(0 if response.is_success else 1)


@contextlib.asynccontextmanager
async def opened_store(config: Config, *, readonly: bool = True) -> AsyncIterator[Store]:
    """The config's store, open; FileNotFoundError if there is none yet (the CLI never
    creates one: a writable open first checks through a read-only one)."""
    if not readonly:
        async with opened_store(config):
            pass
    store = open_store(config.store, readonly=readonly)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def on_store(config: Config, command: Callable[[Store], Awaitable[T]], *, readonly: bool = True) -> T:
    """Run `command` on the opened store; exit 1 if there is no store yet."""

    async def run() -> T:
        async with opened_store(config, readonly=readonly) as store:
            return await command(store)

    try:
        return asyncio.run(run())
    except FileNotFoundError:
        click.echo(f"no event store at {config.store.location} yet: start the gateway first", err=True)
        sys.exit(1)
    except StoreUnavailable as exc:
        click.echo(exc.detail, err=True)
        sys.exit(1)


@main.command()
@config_option
@click.option("--source", help="Only this source.")
@click.option("--type", "event_type", help="Only event types matching this glob, e.g. 'position.*'.")
@click.option("--status", type=click.Choice(STORED_STATUSES), help="Only this status.")
@click.option("--limit", type=click.IntRange(1, 100000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(
    config_path: Path | None, source: str | None, event_type: str | None, status: str | None,
    limit: int, as_json: bool,
) -> None:
    """List stored events, newest first."""
    from gateway.tail import EVENT_HEADER, describe

    config = resolve_config(config_path)

    found: list[StoredEvent] = on_store(
        config, lambda store: store.list_events(source=source, event_type=event_type, status=status, limit=limit)
    )
    if source is not None and source not in config.sources:
        # events of a source removed from the config are still listed; a name nothing knows is a typo
        known = f"configured: {', '.join(config.sources)}"
        if not found:
            raise click.BadParameter(f"unknown source {source!r} ({known})", param_hint="--source")
        click.echo(f"note: source {source!r} is not in the config ({known})", err=True)
    out = sys.stdout.buffer
    if not as_json:
        click.echo(EVENT_HEADER)
    for event in found:
        if as_json:
            out.write(orjson.dumps(event.to_json()) + b"\n")
        else:
            click.echo(describe(event.to_json()))
    out.flush()


def _delivery_line(d: DeliveryRecord) -> str:
    error = (d.last_error or "")[:60]
    return (f"{d.id:>8} {d.event_id:>8}  {d.plugin:<14} {d.status:<9} {d.attempts:>3}  {d.source:<12} "
            f"{d.event_type or '-':<18} {d.entity_id:<20} {error}")


@main.command()
@config_option
@click.option("--plugin", help="Only this plugin.")
@click.option("--status", type=click.Choice(["pending", "delivered", "dead"]), help="Only this status.")
@click.option("--event", "event_id", type=click.IntRange(1), help="Only the deliveries of this event id.")
@click.option("--limit", type=click.IntRange(1, 100000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def deliveries(
    config_path: Path | None, plugin: str | None, status: str | None, event_id: int | None, limit: int,
    as_json: bool,
) -> None:
    """List deliveries to plugins, newest first."""
    config = resolve_config(config_path)

    found: list[DeliveryRecord] = on_store(
        config, lambda store: store.list_deliveries(plugin=plugin, status=status, event_id=event_id, limit=limit)
    )
    if not as_json:
        click.echo(f"{'ID':>8} {'EVENT':>8}  {'PLUGIN':<14} {'STATUS':<9} {'TRY':>3}  {'SOURCE':<12} "
                   f"{'TYPE':<18} {'ENTITY':<20} LAST ERROR")
    for record in found:
        click.echo(orjson.dumps(record.to_json()).decode() if as_json else _delivery_line(record))


@main.command()
@config_option
@click.option("--plugin", required=True, help="The plugin to redeliver to.")
@click.option("--event", "event_id", type=click.IntRange(1),
              help="Redeliver this event id (also to a plugin that never had it).")
@click.option("--dead", is_flag=True, help="Redeliver every dead-lettered delivery of the plugin.")
def replay(config_path: Path | None, plugin: str, event_id: int | None, dead: bool) -> None:
    """Queue deliveries again; the running gateway delivers them at once."""
    if (event_id is None) == (not dead):
        raise click.UsageError("give exactly one of --event ID or --dead")
    config = resolve_config(config_path)
    if plugin not in {p.name for p in config.plugins}:
        names = ", ".join(p.name for p in config.plugins) or "none"
        raise click.BadParameter(f"no plugin {plugin!r}; configured: {names}", param_hint="--plugin")
    changed = on_store(config, lambda store: store.replay(plugin, event_id=event_id, dead=dead), readonly=False)
    if event_id is not None and not changed:
        click.echo(f"no event {event_id} in the store", err=True)
        sys.exit(1)
    click.echo(f"{changed} delivery(ies) to {plugin} queued again")


@main.command()
@config_option
@click.option("--url", callback=base_url, help=URL_HELP + "this config's [server]).")
@click.option("--client", "client_id", help="API client to authenticate as (default: the first with events:read).")
@click.option("--source", help="Only this source.")
@click.option("--type", "event_type", help="Only event types matching this glob.")
@click.option("--since", "since_id", type=click.IntRange(0), help="Start after this event id (default: from now on).")
@click.option("--count", type=click.IntRange(1), help="Exit after this many events.")
def tail(
    config_path: Path | None, url: str | None, client_id: str | None, source: str | None,
    event_type: str | None, since_id: int | None, count: int | None,
) -> None:
    """Follow the live event stream, one line per event; resumes after a dropped connection."""
    from gateway.tail import follow_stream

    config = resolve_config(config_path)
    clients = [c for c in config.api.clients.values() if "events:read" in c.scopes]
    client = next((c for c in clients if client_id in (None, c.id)), None)
    if client is None and not config.api.public:
        raise click.UsageError("no [[clients]] entry with events:read in the config (or --client names none)")
    url = url or local_url(config)
    params = {k: v for k, v in (("source", source), ("type", event_type)) if v is not None}
    try:
        follow_stream(url, client, params, since_id, count, click.echo, lambda note: click.echo(note, err=True))
    except KeyboardInterrupt:
        return
    except (PermissionError, ConnectionError) as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)


@main.command()
@config_option
@click.option("--days", type=click.IntRange(0, 36500),
              help="Prune events older than this (default: [store] retention_days).")
def prune(config_path: Path | None, days: int | None) -> None:
    """Delete events older than the retention period (and their finished deliveries, orphaned
    receipts and old rejections) in small batches. Events a plugin still waits for are kept."""
    config = resolve_config(config_path)
    days = config.store.retention_days if days is None else days
    if not days:
        raise click.UsageError("no retention: give --days N or set [store] retention_days")
    pruned = on_store(config, lambda store: store.prune_all(time.time() - days * 86400), readonly=False)
    click.echo(f"pruned {pruned} event(s) older than {days} day(s)")


@main.command()
@config_option
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
def backup(config_path: Path | None, target: Path) -> None:
    """Write a consistent copy of the store to TARGET while the gateway keeps serving."""
    config = resolve_config(config_path)

    async def copy(store: Store) -> None:
        await store.backup(target)  # NotImplementedError says how, where the database backs itself up

    try:
        on_store(config, copy)
    except (FileExistsError, NotImplementedError) as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(f"backed up {config.store.location} to {target} ({target.stat().st_size} bytes)")


@main.command()
@config_option
@click.argument("backup_file", metavar="BACKUP", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--id-floor", type=click.IntRange(min=0), default=0,
              help="Hand out only ids above this (when the store being replaced is lost: the highest event id "
                   "your plugins or dashboards saw).")
def restore(config_path: Path | None, backup_file: Path, id_floor: int) -> None:
    """Put a `gateway backup` file in place of the store. Stop the gateway first.

    The store it replaces is moved aside, never deleted. Ids keep growing from the highest of
    the backup's, the replaced store's and --id-floor: an id handed out after the backup was
    taken is never handed out again."""
    config = resolve_config(config_path)
    if url_scheme(config.store.url) != "sqlite":
        click.echo(f"the {url_scheme(config.store.url)} store is restored with its own tools", err=True)
        sys.exit(1)
    from gateway.store.sqlite._restore import restore as restore_file

    try:
        done = restore_file(config.store.path, backup_file, id_floor, config.store.synchronous)
    except sqlite3.DatabaseError as exc:
        click.echo(f"{backup_file} is not a gateway store: {exc}", err=True)
        sys.exit(1)
    moved = f"; the store it replaced is now {done.replaced}" if done.replaced else ""
    click.echo(f"restored {backup_file} to {config.store.location}{moved}; next ids above: "
               + ", ".join(f"{table} {seq}" for table, seq in done.ids.items()))


@main.command("migrate-store")
@click.option("--from", "source", required=True, metavar="sqlite:///PATH",
              help="The SQLite store to copy (sqlite:///relative or sqlite:////absolute).")
@click.option("--to", "target", required=True, metavar="postgresql://USER@HOST/DB",
              help="The PostgreSQL database to copy it into; its schema is created if missing.")
@click.option("--password", "password_env", metavar="ENV",
              help="Read the database password from this environment variable (else libpq's passfile or "
                   "PGPASSWORD).")
@click.option("--resume", is_flag=True, help="Continue an interrupted copy into a target that is not empty.")
def migrate_store(source: str, target: str, password_env: str | None, resume: bool) -> None:
    """Copy a SQLite store into PostgreSQL, keeping ids, dedup keys, deliveries and their states.

    Stop the gateway first (events stored meanwhile would not be copied), then point
    [store] url at the target. Refuses a target that already holds events unless --resume is
    given; an interrupted copy resumes where it stopped."""
    import asyncpg

    from gateway.store.sqlite import sqlite_path
    from gateway.store.transfer import TargetNotEmpty, copy_store, count_rows

    if url_scheme(target) not in ("postgresql", "postgres"):
        raise click.BadParameter(f"must be a postgresql:// URL, got {url_scheme(target) or target!r}",
                                 param_hint="--to")
    try:
        path = sqlite_path(source)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None
    connect: dict[str, Any] = {}
    if password_env is not None:
        connect["password"] = os.environ.get(password_env)
        if not connect["password"]:
            raise click.BadParameter(f"environment variable {password_env} is not set or empty",
                                     param_hint="--password")
    try:
        total = sum(count_rows(path).values())
    except (FileNotFoundError, sqlite3.DatabaseError) as exc:
        click.echo(f"cannot read {path}: {exc}", err=True)
        sys.exit(1)
    shown = re.sub(r"//[^@/]*@", "//", target)
    try:
        with click.progressbar(length=total, label=f"copying {path} to {shown}", file=sys.stderr) as bar:
            copied = asyncio.run(copy_store(path, target, resume=resume, connect=connect, progress=bar.update))
    except TargetNotEmpty as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    except (OSError, asyncpg.PostgresError) as exc:
        click.echo(f"the copy stopped: {exc}; run the same command with --resume to continue", err=True)
        sys.exit(1)
    click.echo(f"copied {', '.join(f'{n} {table}' for table, n in copied.items())} to {shown}; now set "
               f'[store] url = "{shown}" (and the password)')


def _add_ledger_commands() -> None:
    from gateway.cli_ledger import anomalies, ledger, positions  # it imports this module's helpers

    for command in (positions, anomalies, ledger):
        main.add_command(command)


_add_ledger_commands()
