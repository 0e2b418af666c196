"""Which plugins get an event: a pure function of the config, cached per (source, type)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import PluginConfig
from gateway.model import ParsedEvent


class Router:
    def __init__(self, plugins: Sequence[PluginConfig]) -> None:
        self.plugins = tuple(plugins)
        self._cache: dict[tuple[str, str, bool], tuple[str, ...]] = {}

    def route(self, source: str, event: ParsedEvent) -> tuple[str, ...]:
        quarantined = event.quarantine_reason is not None
        key = (source, event.event_type, quarantined)
        names = self._cache.get(key)
        if names is None:
            names = tuple(p.name for p in self.plugins if p.matches(source, event.event_type, quarantined))
            if len(self._cache) < 10_000:  # event types come from senders: bound the cache
                self._cache[key] = names
        return names

    def routes(self, source: str, events: Sequence[ParsedEvent]) -> list[tuple[str, ...]] | None:
        if not self.plugins:
            return None
        return [self.route(source, event) for event in events]
