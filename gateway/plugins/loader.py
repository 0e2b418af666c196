"""Turn `[[plugins]]` entries into plugin objects: built-in, import string or entry point."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from importlib.metadata import entry_points
from typing import Any, cast

from uvicorn.importer import ImportFromStringError, import_from_string

from gateway.config import Config, ConfigError, PluginConfig
from gateway.plugins import ENTRY_POINT_GROUP, Event, Plugin, PluginContext, PluginFactory

BUILTINS = {
    "jsonl": "gateway.plugins.jsonl:factory",
    "http": "gateway.plugins.http:factory",
    "exec": "gateway.plugins.exec:factory",
}


def resolve_factory(use: str) -> PluginFactory:
    """The factory that `use` names; raises LookupError saying what was tried."""
    if use in BUILTINS:
        return cast(PluginFactory, import_from_string(BUILTINS[use]))
    if ":" in use:
        try:
            return cast(PluginFactory, import_from_string(use))
        except (ImportError, ImportFromStringError) as exc:
            raise LookupError(f"cannot import {use!r}: {exc}") from exc
    found = entry_points(group=ENTRY_POINT_GROUP, name=use)
    if not found:
        known = sorted({*BUILTINS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
        raise LookupError(f"{use!r} is not a built-in, an import string (package.module:factory) or an "
                          f"installed entry point in {ENTRY_POINT_GROUP} (known: {', '.join(known)})")
    try:
        return cast(PluginFactory, next(iter(found)).load())
    except Exception as exc:
        raise LookupError(f"entry point {use!r} failed to load: {exc}") from exc


async def _nothing() -> None:
    """The hook a plugin does not have."""


class _WithDefaultHooks:
    """A plugin written without `start` or `stop` (they are optional for plugin authors): the
    missing hook does nothing. `plugin` is the object its factory returned."""

    def __init__(self, plugin: Any) -> None:
        self.plugin = plugin
        self.deliver: Callable[[Event], Coroutine[Any, Any, None]] = plugin.deliver
        self.start: Callable[[], Coroutine[Any, Any, None]] = getattr(plugin, "start", _nothing)
        self.stop: Callable[[], Coroutine[Any, Any, None]] = getattr(plugin, "stop", _nothing)

    def __repr__(self) -> str:
        return repr(self.plugin)


def build_plugin(config: PluginConfig, context: PluginContext) -> Plugin:
    """The plugin `config` names, with every hook of the `Plugin` protocol."""
    factory = resolve_factory(config.use)
    plugin: Any = factory(config.options, context)
    if not callable(getattr(plugin, "deliver", None)):
        raise TypeError(f"the factory returned {type(plugin).__name__}, which has no deliver(event) method")
    if callable(getattr(plugin, "start", None)) and callable(getattr(plugin, "stop", None)):
        return cast(Plugin, plugin)
    return _WithDefaultHooks(plugin)


def load_plugins(config: Config) -> dict[str, Plugin]:
    """Build every configured plugin, or raise ConfigError naming each one that failed."""
    plugins: dict[str, Plugin] = {}
    errors: list[str] = []
    for index, entry in enumerate(config.plugins):
        context = PluginContext(name=entry.name, base_dir=config.base_dir)
        try:
            plugins[entry.name] = build_plugin(entry, context)
        except (LookupError, ValueError, TypeError) as exc:
            errors.append(f"{config.origin}: plugins[{index}] ({entry.name}): {exc}")
    if errors:
        raise ConfigError(errors)
    return plugins
