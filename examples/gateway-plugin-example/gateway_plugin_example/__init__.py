"""`position-ledger`: an example third-party plugin for the webhook gateway.

It keeps a JSON file of the positions open right now, keyed `source:entity_id`:

    {"open": {"metacopier:position:88412231": {"symbol": "EURUSD", "account": "6f1c2d7e-...",
                                      "opened_event_id": 12, "event_type": "position.opened"}},
     "applied": {"metacopier:position:88412231": 12}}

An "opened" event adds its position, a "closed" event removes it, any other event is
acknowledged and ignored. `applied` holds the last event id applied per position: the gateway
delivers at least once, so an event whose id is not above it (a redelivery, a replay) is a no-op.
That test is sound only because the gateway delivers each position's events in order: a lower
id is always an event already seen, never one that overtook a later event of its position.

Options:
    path (str, required): the ledger file, relative to the config file's folder.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict

import orjson

from gateway.plugins import Event, PermanentFailure, PluginContext

OPENED = frozenset({"position.opened", "trade.opened", "open_position"})
CLOSED = frozenset({"position.closed", "trade.closed", "trade.tp_hit", "trade.sl_hit", "close_position"})
_OPTIONS = frozenset({"path"})


class OpenPosition(TypedDict):
    symbol: str | None
    account: str | None
    opened_event_id: int
    event_type: str


class PositionLedger:
    """Tracks open positions in one JSON file, replaced atomically after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.open: dict[str, OpenPosition] = {}
        self.applied: dict[str, int] = {}
        # Deliveries of different positions run concurrently: one read-modify-write at a time,
        # and one writer thread, so a write left running by a cancelled delivery lands before the next.
        self._lock = asyncio.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="position-ledger")

    async def start(self) -> None:
        """Load the ledger the previous run left, if any (called once, before the first delivery)."""
        data = await asyncio.get_running_loop().run_in_executor(self._writer, self._read)
        self.open, self.applied = data.get("open", {}), data.get("applied", {})

    async def stop(self) -> None:
        """Let the writer thread finish (called once, after the last delivery)."""
        await asyncio.to_thread(self._writer.shutdown)

    async def deliver(self, event: Event) -> None:
        """Apply one event; return only once the file on disk reflects it."""
        if event.event_type not in OPENED | CLOSED:
            return  # not a position opening or closing: acknowledged, nothing to do
        if not isinstance(event.payload, dict):  # no retry can fix this: dead-letter it
            raise PermanentFailure(f"event {event.id}: payload is {type(event.payload).__name__}, not an object")
        key = f"{event.source}:{event.entity_id}"
        async with self._lock:
            if event.id <= self.applied.get(key, 0):
                return  # already applied: a redelivery, or a replay of an older event
            open_ = dict(self.open)
            if event.event_type in OPENED:
                open_[key] = OpenPosition(symbol=event.symbol, account=event.account,
                                          opened_event_id=event.id, event_type=event.event_type)
            else:
                open_.pop(key, None)
            applied = {**self.applied, key: event.id}
            data = orjson.dumps({"open": open_, "applied": applied}, option=orjson.OPT_INDENT_2)
            # Memory changes only once the file has: a failed or cancelled write is simply retried.
            await asyncio.get_running_loop().run_in_executor(self._writer, self._write, data)
            self.open, self.applied = open_, applied

    def _read(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        if not isinstance(data, dict):
            raise ValueError(f"{self.path} is not a position ledger (expected a JSON object)")
        return data

    def _write(self, data: bytes) -> None:
        """Replace the file atomically: write a temporary file, fsync it, rename it over the old one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)  # make the rename itself durable (POSIX)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def factory(options: Mapping[str, Any], context: PluginContext) -> PositionLedger:
    """Build the plugin from its `[plugins.options]`; a bad option raises ValueError."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; position-ledger takes only: path")
    path = options.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError("option 'path' is required and must be a non-empty string (the ledger file)")
    return PositionLedger(context.base_dir / path)
