"""SQL written once for every backend: WHERE clauses with the backend's own placeholders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def where(clauses: Sequence[tuple[str, Any]], mark: Callable[[int], str]) -> tuple[str, list[Any]]:
    """` WHERE ...` of the clauses whose value is not None, and their arguments: a clause's `{}`
    is its argument's placeholder (`mark(n)` for the n-th, from 1); one without takes none."""
    parts: list[str] = []
    args: list[Any] = []
    for clause, value in clauses:
        if value is None:
            continue
        if "{}" in clause:
            args.append(value)
            clause = clause.format(mark(len(args)))
        parts.append(clause)
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


def delivery_filters(plugin: str | None, status: str | None, event_id: int | None, delivery_id: int | None,
                     source: str | None, event_type: str | None) -> list[tuple[str, Any]]:
    """The delivery listing's filters (`deliveries d JOIN events e`)."""
    return [("d.plugin = {}", plugin), ("d.status = {}", status), ("d.event_id = {}", event_id),
            ("d.id = {}", delivery_id), ("d.source = {}", source), ("e.event_type = {}", event_type)]
