"""Which plugins get an event: the plugins' sources and events globs, cached per (source, type),
then the `where` filters of those that have one, evaluated over the event in the plugin's shape."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.config import PluginConfig
from gateway.model import ParsedEvent

log = logging.getLogger("gateway.routing")

Filtered = Callable[[str, str], None]
"""Told (plugin, why) for each event a plugin's `where` kept from it: `no_match` or `error`."""


class Router:
    def __init__(self, plugins: Sequence[PluginConfig], schemes: Mapping[str, str] | None = None) -> None:
        """`schemes`: each source's scheme, for the filters of plugins that take the normalized shape."""
        self.plugins = tuple(plugins)
        self.schemes = dict(schemes or {})
        self._filters = any(p.condition is not None for p in self.plugins)
        self._cache: dict[tuple[str, str, bool], tuple[PluginConfig, ...]] = {}

    def candidates(self, source: str, event_type: str, quarantined: bool) -> tuple[PluginConfig, ...]:
        key = (source, event_type, quarantined)
        found = self._cache.get(key)
        if found is None:
            found = tuple(p for p in self.plugins if p.matches(source, event_type, quarantined))
            if len(self._cache) < 10_000:  # event types come from senders: bound the cache
                self._cache[key] = found
        return found

    def route(self, source: str, event: ParsedEvent, filtered: list[tuple[str, str]] | None = None) -> tuple[str, ...]:
        """The plugins that get `event`. Those a `where` kept from it are added to `filtered`.
        A quarantined event has nothing to filter on: it goes to every plugin that asks for them."""
        plugins = self.candidates(source, event.event_type, event.quarantine_reason is not None)
        if not self._filters or event.quarantine_reason is not None:
            return tuple(p.name for p in plugins)
        names = []
        documents: dict[str, Any] = {}  # the event in each shape, made once for all the plugins
        for plugin in plugins:
            why = None if plugin.condition is None else self._refuses(plugin, source, event, documents)
            if why is None:
                names.append(plugin.name)
            elif filtered is not None:
                filtered.append((plugin.name, why))
        return tuple(names)

    def routes(self, source: str, events: Sequence[ParsedEvent]
               ) -> tuple[list[tuple[str, ...]] | None, list[list[tuple[str, str]]] | None]:
        """Each event's plugins (None: no plugins at all), and what each event's filters kept
        it from (None: no plugin has a filter)."""
        if not self.plugins:
            return None, None
        if not self._filters:
            return [self.route(source, event) for event in events], None
        filtered: list[list[tuple[str, str]]] = [[] for _ in events]
        return [self.route(source, event, kept) for event, kept in zip(events, filtered, strict=True)], filtered

    def _refuses(self, plugin: PluginConfig, source: str, event: ParsedEvent, documents: dict[str, Any]) -> str | None:
        try:
            if plugin.shape not in documents:
                documents[plugin.shape] = self._document(plugin, source, event)
            found = plugin.condition.search(documents[plugin.shape])
        except Exception as exc:
            log.warning("plugin %s: where %r failed on a %s event: %s", plugin.name, plugin.where,
                        event.event_type, exc)
            return "error"
        return None if _true(found) else "no_match"

    def _document(self, plugin: PluginConfig, source: str, event: ParsedEvent) -> Any:
        if plugin.shape != "normalized":
            return event.document
        from gateway.normalized import normalize_document

        return normalize_document(self.schemes.get(source), source, event.event_type, event.document)


def _true(value: Any) -> bool:
    """JMESPath's truth: false, null, and empty strings, lists and objects are false."""
    return value is not None and value is not False and value != "" and value != [] and value != {}
