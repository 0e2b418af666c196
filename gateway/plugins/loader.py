"""Turn `[[plugins]]` entries into plugin objects: built-in, import string or entry point."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, cast

from gateway.config import Config, ConfigError, PluginConfig
from gateway.plugins import ENTRY_POINT_GROUP, Plugin, PluginContext, PluginFactory

BUILTINS = {
    "jsonl": "gateway.plugins.jsonl:factory",
    "http": "gateway.plugins.http:factory",
    "exec": "gateway.plugins.exec:factory",
}


def _import(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def resolve_factory(use: str) -> PluginFactory:
    """The factory that `use` names; raises LookupError saying what was tried."""
    if use in BUILTINS:
        return cast(PluginFactory, _import(BUILTINS[use]))
    if ":" in use:
        try:
            return cast(PluginFactory, _import(use))
        except (ImportError, AttributeError) as exc:
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


def build_plugin(config: PluginConfig, context: PluginContext) -> Plugin:
    factory = resolve_factory(config.use)
    plugin = factory(config.options, context)
    if not callable(getattr(plugin, "deliver", None)):
        raise TypeError(f"the factory returned {type(plugin).__name__}, which has no deliver(event) method")
    return plugin


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
