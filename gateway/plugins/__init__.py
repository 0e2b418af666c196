"""The plugin contract: what a plugin receives, what it must provide, how it signals failure.

A plugin is any object with `async deliver(event)`:

- return normally to acknowledge the event (it will not be delivered again);
- raise any exception to ask for a retry (exponential backoff with jitter, up to the
  plugin's `max_attempts`);
- raise `PermanentFailure` to dead-letter the event at once (`gateway replay` can
  redeliver it later).

The gateway enforces the plugin's `timeout_seconds` by cancelling `deliver()`: clean up
on `asyncio.CancelledError` (kill child processes, abort requests) and re-raise. It may
also have `async start()` and `async stop()` (see `Plugin`); the loader gives a plugin without
them ones that do nothing. A plugin is built by a
factory `factory(options, context) -> plugin`, named in the config by `use`: a built-in name
(`jsonl`, `http`, `exec`), an import string `"package.module:factory"`, or the name of an
entry point in the group `gateway.plugins`. `options` is exactly the plugin's
`[plugins.options]` table (none of the gateway's own keys). A factory that raises
`ValueError` or `TypeError` is reported as a config error naming the plugin; do I/O in
`start()`, not in the factory (`gateway check-config` builds plugins too).

Delivery is at least once, in order per (plugin, source, entity id): make `deliver`
idempotent, e.g. by keying on `event.id`. See docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.model import Event as Event  # the plugin's event record, defined with the store's

ENTRY_POINT_GROUP = "gateway.plugins"


class PermanentFailure(Exception):
    """Raised by a plugin for an event it will never accept: dead-letter it, no retries."""


class Plugin(Protocol):
    """What the gateway calls, each hook documented here. A factory may return an object with
    `deliver` only: the loader (gateway/plugins/loader.py) supplies a `start` and a `stop` that
    do nothing, so the gateway calls all three on every plugin."""

    async def deliver(self, event: Event) -> None:
        """Handle one event. Return to acknowledge; raise to retry; PermanentFailure to dead-letter."""

    async def start(self) -> None:
        """Called before the first delivery (open files, connections). If it raises, the
        gateway runs on: the plugin's deliveries wait (pending), its health reads `failed`, and
        `start` is called again with backoff until it returns."""

    async def stop(self) -> None:
        """Called once at shutdown, after the last delivery has finished or been cancelled;
        an exception is logged."""


@dataclass(frozen=True, slots=True)
class PluginContext:
    """Given to a factory: the plugin's configured name and the config file's folder
    (resolve relative paths in options against it)."""

    name: str
    base_dir: Path


class PluginFactory(Protocol):
    def __call__(self, options: Mapping[str, Any], context: PluginContext) -> Plugin: ...
