"""Parameters as PostgreSQL takes them: text without NUL, and WHERE clauses with `$n` marks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.store import sql


def text(value: Any) -> Any:
    """A text value as PostgreSQL can hold it: its text type has no NUL character, which JSON
    allows (`\\u0000`) and SQLite keeps. It becomes U+FFFD in text columns, on the way in and in
    every lookup alike; the raw body and the payload (bytea) keep it as sent."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def where(clauses: Sequence[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """`gateway.store.sql.where` with `$n` marks, its text arguments as `text` keeps them."""
    sql_where, args = sql.where(clauses, lambda n: f"${n}")
    return sql_where, [text(a) for a in args]
