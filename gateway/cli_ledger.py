"""The position ledger's commands: `gateway positions`, `gateway anomalies`, `gateway ledger`
(rebuild, reconcile, status). They work on the store directly, as `gateway events` does."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from gateway.cli import config_option, on_store, resolve_config
from gateway.config import Config
from gateway.ledger import ANOMALY_KINDS, position_from_json
from gateway.ledger_api import STATES
from gateway.model import iso_utc
from gateway.projector import LEASE_SECONDS, LEDGER_JOB, Projector
from gateway.reconcile import MEANING, SnapshotError, compare, read_snapshot
from gateway.store import Store
from gateway.store.ledger_records import AnomalyQuery, PositionQuery, StoredAnomaly, StoredPosition

PAGE = 1000
FOLLOW_TIMEOUT = 60.0  # a rebuild followed in a running gateway: give up after this long without progress


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _lines(items: Sequence[Any]) -> None:
    out = sys.stdout.buffer
    for item in items:
        out.write(orjson.dumps(item.to_json()) + b"\n")
    out.flush()


def _volume(value: Any) -> str:
    return "?" if value is None else f"{value:g}"


@click.command()
@config_option
@click.option("--source", help="Only this source.")
@click.option("--state", type=click.Choice(STATES), help="Only this state.")
@click.option("--account", help="Only this account.")
@click.option("--symbol", help="Only this symbol.")
@click.option("--anomalous", is_flag=True, help="Only positions with an open anomaly.")
@click.option("--limit", type=click.IntRange(1, 100000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def positions(config_path: Path | None, source: str | None, state: str | None, account: str | None,
              symbol: str | None, anomalous: bool, limit: int, as_json: bool) -> None:
    """List the position ledger, newest positions first."""
    config = resolve_config(config_path)
    query = PositionQuery(source=source, state=state, account=account, symbol=symbol,
                          anomalous=True if anomalous else None, limit=limit)
    found: list[StoredPosition] = on_store(config, lambda store: store.list_positions(query))
    if as_json:
        _lines(found)
        return
    rows = []
    for p in found:
        d = p.document
        rows.append((d["source"], d["account"] or "-", d["position_id"], d["state"], d["side"], d["symbol"],
                     _volume(d["opened_volume"]), _volume(d["open_volume"]), d["profit"],
                     ",".join(a["kind"] for a in d["anomalies"]) or ""))
    _table(rows, ("SOURCE", "ACCOUNT", "POSITION", "STATE", "SIDE", "SYMBOL", "OPENED", "OPEN", "PROFIT", "ANOMALIES"))


def _anomaly_rows(found: Sequence[StoredAnomaly]) -> list[tuple[Any, ...]]:
    def state(a: StoredAnomaly) -> str:
        if a.acked_at is not None:
            return f"acknowledged {iso_utc(a.acked_at)}"
        return "open" if a.resolved_at is None else f"resolved {iso_utc(a.resolved_at)}"

    return [(a.id, a.kind, a.source, a.account or "-", a.position_id, iso_utc(a.raised_at), state(a),
             a.note or a.detail) for a in found]


@click.group(invoke_without_command=True)
@config_option
@click.option("--open", "only_open", is_flag=True, help="Only anomalies neither resolved nor acknowledged.")
@click.option("--source", help="Only this source.")
@click.option("--kind", type=click.Choice(ANOMALY_KINDS), help="Only this kind.")
@click.option("--limit", type=click.IntRange(1, 100000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def anomalies(ctx: click.Context, config_path: Path | None, only_open: bool, source: str | None, kind: str | None,
              limit: int, as_json: bool) -> None:
    """List the anomalies the ledger raised, newest first (`anomalies ack ID` acknowledges one)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = config_path
        return
    config = resolve_config(config_path)
    query = AnomalyQuery(source=source, kind=kind, open=True if only_open else None, limit=limit)
    found: list[StoredAnomaly] = on_store(config, lambda store: store.list_anomalies(query))
    if as_json:
        _lines(found)
    else:
        _table(_anomaly_rows(found), ("ID", "KIND", "SOURCE", "ACCOUNT", "POSITION", "RAISED", "STATE", "DETAIL"))


@anomalies.command("ack")
@config_option
@click.argument("anomaly_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--note", required=True, help="Why it needs no more attention (kept with it).")
@click.pass_context
def acknowledge(ctx: click.Context, config_path: Path | None, anomaly_id: int, note: str) -> None:
    """Acknowledge anomaly ANOMALY_ID with a note: it stays listed, marked as acknowledged."""
    if not note.strip():
        raise click.BadParameter("must say something", param_hint="--note")
    config = resolve_config(config_path or ctx.obj)
    acked = on_store(config, lambda store: store.acknowledge_anomaly(anomaly_id, note.strip(), time.time()),
                     readonly=False)
    if acked is None:
        click.echo(f"no anomaly {anomaly_id}", err=True)
        sys.exit(1)
    click.echo(f"acknowledged {acked.kind} {acked.id} on {acked.source} position {acked.position_id}")


@click.group()
def ledger() -> None:
    """The position ledger: rebuild it, reconcile it with the platform, see where it stands."""


def _max_open_days(config: Config) -> dict[str, float | None]:
    return {s.name: s.max_open_days for s in config.sources.values()}


@ledger.command()
@config_option
def rebuild(config_path: Path | None) -> None:
    """Rebuild the ledger from the stored events; the result equals the one kept as they came.
    A running gateway goes on serving: it projects the rebuild itself, and this follows it."""
    config = resolve_config(config_path)
    holder = f"cli:{socket.gethostname()}:{os.getpid()}"

    async def run(store: Store) -> tuple[list[tuple[str, str, int]], int]:
        await store.ledger_reset()
        total = (await store.ledger_status()).latest
        with click.progressbar(length=max(total, 1), label="rebuilding the ledger", file=sys.stderr) as bar:
            shown = 0

            def progress(checkpoint: int) -> None:
                nonlocal shown
                bar.update(max(0, checkpoint - shown))
                shown = max(shown, checkpoint)

            if await store.hold_job(LEDGER_JOB, holder, LEASE_SECONDS):
                try:
                    await Projector(store, _max_open_days(config), holder).catch_up(
                        progress=lambda status: progress(status.checkpoint),
                        renew=lambda: store.hold_job(LEDGER_JOB, holder, LEASE_SECONDS))
                finally:
                    await store.release_job(LEDGER_JOB, holder)
            else:
                await _follow(store, total, progress)
            progress(total)
        left = await store.list_anomalies(AnomalyQuery(open=True, limit=100000))
        return await store.position_counts(), len(left)

    counts, open_anomalies = on_store(config, run, readonly=False)
    summary = ", ".join(f"{n} {state}" for _, state, n in _summed(counts)) or "no positions"
    click.echo(f"ledger rebuilt: {summary}; {open_anomalies} open anomalies")


async def _follow(store: Store, total: int, progress: Callable[[int], None]) -> None:
    """A running gateway holds the projector's lease: it starts again from the reset."""
    click.echo("a running gateway projects the ledger; following its progress", err=True)
    last, moved = -1, time.monotonic()
    while True:
        status = await store.ledger_status()
        if status.checkpoint >= total and not status.orphans:
            return
        if status.checkpoint != last:
            last, moved = status.checkpoint, time.monotonic()
            progress(status.checkpoint)
        elif time.monotonic() - moved > FOLLOW_TIMEOUT:
            click.echo(f"\nno progress for {FOLLOW_TIMEOUT:g} s: see the gateway's log (the reset is done; "
                       "it rebuilds once its projector runs)", err=True)
            sys.exit(1)
        await asyncio.sleep(0.2)


def _summed(counts: Sequence[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    totals = {state: sum(n for _, s, n in counts if s == state) for state in STATES}
    return [("*", state, n) for state, n in totals.items() if n]


@ledger.command()
@config_option
def status(config_path: Path | None) -> None:
    """Where the projection stands: the last event in the ledger, its lag, positions per state."""
    config = resolve_config(config_path)

    async def read(store: Store) -> tuple[Any, list[tuple[str, str, int]]]:
        return await store.ledger_status(), await store.position_counts()

    found, counts = on_store(config, read)
    lag = 0.0 if found.pending_since is None else max(0.0, time.time() - found.pending_since)
    click.echo(f"checkpoint {found.checkpoint} of {found.latest} events; lag {lag:.1f} s")
    _table([(source, state, n) for source, state, n in counts if n], ("SOURCE", "STATE", "POSITIONS"))


def _as_of(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("must be an ISO 8601 time, e.g. 2026-11-20T10:15:00Z") from None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


@ledger.command()
@config_option
@click.option("--source", required=True, help="The source whose positions the snapshot lists.")
@click.option("--as-of", "as_of", callback=_as_of, metavar="TIME",
              help="When the snapshot was taken (ISO 8601; UTC unless it says): later ledger changes are not "
                   "differences.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per difference.")
@click.argument("snapshot_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def reconcile(config_path: Path | None, source: str, as_of: float | None, as_json: bool, snapshot_file: Path) -> None:
    """Compare a platform's snapshot of open positions (CSV or JSON lines with account,
    position_id, symbol, side, volume) with the ledger. Exits 1 when anything differs."""
    config = resolve_config(config_path)
    if source not in config.sources:
        raise click.BadParameter(f"unknown source {source!r} (configured: {', '.join(config.sources)})",
                                 param_hint="--source")
    try:
        snapshot = read_snapshot(snapshot_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        click.echo(f"{snapshot_file}: not UTF-8 text (byte {exc.start})", err=True)
        sys.exit(2)
    except SnapshotError as exc:
        click.echo(f"{snapshot_file}: {exc}", err=True)
        sys.exit(2)

    async def ledger_positions(store: Store) -> list[StoredPosition]:
        found: dict[int, StoredPosition] = {}
        for state in ("open", "partially_closed"):
            after = None
            while page := await store.list_positions(PositionQuery(source=source, state=state, after=after,
                                                                   limit=PAGE)):
                found.update((p.id, p) for p in page)
                after = page[-1].id
        for row in snapshot:  # open on the platform: closed in the ledger, or not in it
            stored = await store.get_position((source, row.account, row.position_id))
            if stored is not None:
                found[stored.id] = stored
        return list(found.values())

    stored = on_store(config, ledger_positions)
    differences = compare(snapshot, [position_from_json(p.document) for p in stored], as_of)
    if as_json:
        _lines(differences)
    elif differences:
        _table([(d.kind, d.account or "-", d.position_id, d.platform, d.ledger, d.line) for d in differences],
               ("DIFFERENCE", "ACCOUNT", "POSITION", "PLATFORM", "LEDGER", "LINE"))
        click.echo("")
        for kind in dict.fromkeys(d.kind for d in differences):
            click.echo(f"{kind}: {MEANING[kind]}")
    else:
        click.echo(f"{len(snapshot)} open position(s) on the platform; the ledger agrees")
    sys.exit(1 if differences else 0)
