"""What the console's overview reads from a store (`Store.overview`), in SQL both backends run:
every figure comes from the store, so it is true for the whole deployment, across workers,
hosts and restarts. Cost on a store of 1,000,000 events (docs/dashboard.md): the window's rows
are read once per figure, through the receive-time indexes."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

US = 1_000_000

Fetch = Callable[[str, Sequence[Any]], Awaitable[Any]]
"""Runs one query with its arguments, in the backend's placeholders (`mark`), and returns its rows."""


@dataclass(slots=True)
class OverviewData:
    """Counts per time bucket (the bucket's index from `since`), and per-source figures."""

    events: list[tuple[str, str, int, int]] = field(default_factory=list)  # source, status, bucket, count
    rejections: list[tuple[str, str, int, int]] = field(default_factory=list)  # source, code, bucket, count
    latency_p99: dict[str, float] = field(default_factory=dict)  # source -> seconds
    skew: dict[str, tuple[float, float]] = field(default_factory=dict)  # source -> (median, largest |skew|) s


async def read(fetch: Fetch, mark: Callable[[int], str], since: float, until: float, bucket: float) -> OverviewData:
    low, high, width = round(since * US), round(until * US), max(1, round(bucket * US))
    m1, m2, m3, m4 = mark(1), mark(2), mark(3), mark(4)
    data = OverviewData()
    for row in await fetch(
            f"SELECT source, status, (received_at - {m1}) / {m3}, count(*) FROM events"
            f" WHERE received_at >= {m1} AND received_at < {m2} GROUP BY 1, 2, 3", (low, high, width)):
        data.events.append((row[0], row[1], int(row[2]), int(row[3])))
    for row in await fetch(
            f"SELECT source, code, (received_at - {m1}) / {m3}, count(*) FROM rejections"
            f" WHERE received_at >= {m1} AND received_at < {m2} GROUP BY 1, 2, 3", (low, high, width)):
        data.rejections.append((row[0], row[1], int(row[2]), int(row[3])))
    window = f"FROM receipts WHERE source = {m1} AND received_at >= {m2} AND received_at < {m3}"
    for source, latencies, skews in await fetch(
            f"SELECT source, count(latency_us), count(sent_at) FROM receipts"
            f" WHERE received_at >= {m1} AND received_at < {m2} GROUP BY 1", (low, high)):
        if latencies:
            [(p99,)] = await fetch(f"SELECT latency_us {window} AND latency_us IS NOT NULL ORDER BY 1"
                                   f" LIMIT 1 OFFSET {m4}", (source, low, high, math.ceil(0.99 * latencies) - 1))
            data.latency_p99[source] = p99 / US
        if skews:
            [(median,)] = await fetch(f"SELECT sent_at - received_at {window} AND sent_at IS NOT NULL ORDER BY 1"
                                      f" LIMIT 1 OFFSET {m4}", (source, low, high, (skews - 1) // 2))
            [(largest,)] = await fetch(f"SELECT max(abs(sent_at - received_at)) {window} AND sent_at IS NOT NULL",
                                       (source, low, high))
            data.skew[source] = (median / US, largest / US)
    return data
