"""Checks for a plugin factory's `options` table, for the built-ins and any third-party plugin.

Each raises `ValueError` naming the option, which the loader reports as a config error naming the
plugin: `test.toml: plugins[0] (archive): option 'path' is required and must be a non-empty string`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def check_keys(options: Mapping[str, Any], plugin: str, takes: Sequence[str]) -> None:
    """Refuse options the plugin does not take (a misspelt key would be silently ignored)."""
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; {plugin} takes: {', '.join(takes)}")


def required_string(options: Mapping[str, Any], key: str, hint: str = "") -> str:
    """A non-empty string that must be there; `hint` (e.g. " (the file to append to)") ends the message."""
    value = options.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"option {key!r} is required and must be a non-empty string{hint}")
    return value


def optional_string(options: Mapping[str, Any], key: str) -> str | None:
    """A non-empty string, or None when the option is absent."""
    value = options.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"option {key!r} must be a non-empty string")
    return value


def string_table(options: Mapping[str, Any], key: str) -> dict[str, str]:
    """A table of string values (empty when the option is absent)."""
    value = options.get(key, {})
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"option {key!r} must be a table of string values")
    return dict(value)
