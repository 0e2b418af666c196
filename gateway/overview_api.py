"""`GET /api/v1/overview`: the console's landing tab, the feed's health over a window, from the
store (so it is true across workers, hosts and restarts)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.api import Api, _choice, json_response
from gateway.model import STORED_STATUSES, iso_utc

# window -> (its length, the bucket the counts come in), seconds
WINDOWS = {"15m": (900, 60), "1h": (3600, 60), "24h": (86_400, 900), "7d": (7 * 86_400, 3600)}


class OverviewApi:
    def __init__(self, api: Api, sources: Sequence[str]) -> None:
        self.api = api
        self.sources = tuple(sources)

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/v1/overview", self.overview)]

    async def overview(self, request: Request) -> Response:
        self.api.principal(request, "events:read")
        window = _choice(request, "window", tuple(WINDOWS)) or "1h"
        length, bucket = WINDOWS[window]
        until = self.api.clock()
        since = until - length
        count = math.ceil(length / bucket)
        data = await self.api.store.overview(since, until, bucket)
        # the configured sources, and any other with events in the window (one removed since);
        # rejections also name what is no source (unknown names, /oauth/token)
        sources = list(dict.fromkeys([*self.sources, *(e[0] for e in data.events)]))
        events: dict[str, dict[str, list[int]]] = {s: {st: [0] * count for st in STORED_STATUSES} for s in sources}
        for source, status, index, n in data.events:
            if 0 <= index < count:
                events[source].setdefault(status, [0] * count)[index] += n
        rejections: dict[str, dict[str, list[int]]] = {}
        for source, code, index, n in data.rejections:
            if 0 <= index < count:
                rejections.setdefault(source, {}).setdefault(code, [0] * count)[index] += n
        deliveries = []
        for plugin in self.api.plugins:
            stats = await self.api.store.delivery_stats(plugin)
            age = 0.0 if stats.oldest_pending_at is None else max(0.0, until - stats.oldest_pending_at)
            deliveries.append({"plugin": plugin, "pending": stats.pending, "dead": stats.dead,
                               "oldest_pending_age_seconds": round(age, 3)})
        skew: dict[str, Any] = {s: None for s in sources}
        for source, (median, largest) in data.skew.items():
            skew[source] = {"p50": round(median, 3), "max_abs": round(largest, 3)}
        latency = {s: None if s not in data.latency_p99 else round(data.latency_p99[s] * 1000, 2) for s in sources}
        return json_response({
            "window": window, "since": iso_utc(since), "until": iso_utc(until), "bucket_seconds": bucket,
            "sources": sources,
            "buckets": [iso_utc(since + i * bucket) for i in range(count)],
            "events": events, "rejections": rejections, "deliveries": deliveries,
            "latency_p99_ms": latency, "clock_skew_seconds": skew,
        })
