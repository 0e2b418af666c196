"""The validation engine: reads values out of parsed TOML, recording each problem with the
file and the key path, so that loading reports every problem in one pass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway._secret import Secret
from gateway.ipnet import IPNetwork, parse_network


class Checker:
    """Reads values out of the parsed TOML, recording each problem with its key path."""

    def __init__(self, origin: str, environ: Mapping[str, str]) -> None:
        self.origin = origin
        self.environ = environ
        self.errors: list[str] = []
        self.literal_secrets: list[str] = []  # key paths of secrets written in the file itself

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.origin}: {key}: {message}")

    def table(self, data: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
        value = data.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(value, Mapping):
            self.error(key, f"must be a table, got {type(value).__name__}")
            return {}
        self.unknown(value, key, allowed)
        return value

    def unknown(self, data: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
        for name in data:
            if name not in allowed:
                self.unknown_key(f"{prefix}.{name}" if prefix else name, allowed)

    def unknown_key(self, key: str, known: set[str]) -> None:
        self.error(key, f"unknown key (known: {', '.join(sorted(known))})")

    def get(self, data: Mapping[str, Any], key: str, name: str, kind: type, default: Any,
            echo: bool = True) -> Any:
        """`data[name]` if it is a `kind`; `echo=False` for keys that may hold secrets (the
        error then names the type found, not the value)."""
        if name not in data:
            return default
        value = data[name]
        # bool is an int subclass in Python; TOML keeps them apart and so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            shown = f" {value!r}" if echo else ""
            self.error(key, f"must be {kind.__name__}, got {type(value).__name__}{shown}")
            return default
        return value

    def number(self, raw: Mapping[str, Any], key: str, name: str, default: float, low: float, high: float) -> float:
        value = raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(f"{key}.{name}", f"must be a number, got {type(value).__name__} {value!r}")
            return default
        if not low <= value <= high:
            self.error(f"{key}.{name}", f"must be between {low:g} and {high:g}, got {value}")
        return float(value)

    def secret(self, key: str, raw: Any) -> Secret | None:
        if not isinstance(raw, str) or not raw:
            self.error(key, "must be a non-empty string")
            return None
        if raw.startswith("env:"):
            var = raw[4:]
            value = self.environ.get(var)
            if not value:
                self.error(key, f"environment variable {var} is not set or empty")
                return None
            return Secret(value)
        self.literal_secrets.append(key)
        return Secret(raw)

    def networks(self, key: str, items: list[Any]) -> list[IPNetwork]:
        """Addresses and CIDRs of an allowlist; each bad entry is an error naming its index."""
        nets: list[IPNetwork] = []
        for i, item in enumerate(items):
            net = parse_network(str(item))
            if net is None:
                self.error(f"{key}[{i}]", f"{item!r} is not an IP address or CIDR")
            else:
                nets.append(net)
        return nets
