"""A third-party-style plugin for tests/test_secrets.py: it holds a secret option and fails in
every way a plugin can (retried deliveries, a dead letter, a traceback at shutdown)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.plugins import Event, PluginContext


def _call_risk_engine(headers: Mapping[str, str], what: str) -> None:
    # `headers` (a local of this frame) holds the secret: a traceback that showed locals would leak it.
    raise ConnectionError(f"risk engine refused {what} ({len(headers)} header(s) sent)")


class RiskEngine:
    """Always fails: deliveries are retried, then dead-lettered; `stop` raises (logged with its traceback)."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    async def deliver(self, event: Event) -> None:
        _call_risk_engine({"x-api-key": self._api_key}, f"event {event.id}")

    async def stop(self) -> None:
        _call_risk_engine({"x-api-key": self._api_key}, "the session close")


def risk_engine(options: Mapping[str, Any], context: PluginContext) -> RiskEngine:
    key = options.get("api_key")
    if not isinstance(key, str) or len(key) < 16:
        raise ValueError("option 'api_key' is required (at least 16 characters)")
    return RiskEngine(key)
