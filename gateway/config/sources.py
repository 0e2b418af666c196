"""One `[[sources]]` table: the keys every source takes, checked here, and the keys its scheme
declares (`Scheme.options`), its secret rule and its own checks, asked of the scheme registry.
Only the schemes a config names are imported (all of them only to explain a misplaced key)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gateway import schemes as registry
from gateway._secret import Secret
from gateway.config.checker import Checker
from gateway.config.model import DEFAULT_TOLERANCE, SOURCE_NAME, SourceConfig

# The keys every source takes, whatever its scheme.
KEYS = {"name", "scheme", "secret", "secrets", "tolerance_seconds", "allow_ips", "dedup_fields",
        "dedup_ignore_fields", "rate_limit", "rate_burst", "allow_shared_secret", "max_open_days"}


def _scheme(c: Checker, raw: Mapping[str, Any], key: str) -> registry.Scheme | None:
    name = c.get(raw, f"{key}.scheme", "scheme", str, None)
    if name not in registry.SCHEMES:
        c.error(f"{key}.scheme", f"must be one of {', '.join(registry.SCHEMES)}, got {name!r}")
        return None
    try:
        return registry.get_scheme(name)
    except registry.SchemeError as exc:
        c.error(f"{key}.scheme", str(exc))
        return None


def _other_keys(c: Checker, raw: Mapping[str, Any], bare_key: str, key: str, scheme: registry.Scheme | None) -> None:
    """A key that is neither common nor the scheme's: another scheme's, or unknown."""
    strays = [name for name in raw if name not in KEYS and (scheme is None or name not in scheme.options)]
    if not strays:
        return
    owners: dict[str, list[str]] = {}
    for other_name in registry.SCHEMES:
        try:
            other = registry.get_scheme(other_name)
        except registry.SchemeError:
            continue  # a source that names it is told why; here it only explains a stray key
        for option in other.options:
            owners.setdefault(option, []).append(other.name)
    for name in strays:
        if name in owners:
            c.error(f"{key}.{name}", f"applies to {' and '.join(owners[name])} sources only")
        else:
            c.unknown_key(f"{bare_key}.{name}", KEYS | set(owners))


def _options(c: Checker, raw: Mapping[str, Any], key: str, scheme: registry.Scheme) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, option in scheme.options.items():
        value = c.get(raw, f"{key}.{name}", name, option.kind, option.default)
        if option.choices and value not in option.choices:
            c.error(f"{key}.{name}", f"must be one of {', '.join(map(str, option.choices))}, got {value!r}")
        values[name] = value
    return values


def _secrets(c: Checker, raw: Mapping[str, Any], key: str, scheme: registry.Scheme | None,
             options: Mapping[str, Any]) -> list[Secret]:
    if "secret" in raw and "secrets" in raw:
        c.error(f"{key}.secrets", "give either secret or secrets, not both")
    raw_secrets = raw.get("secrets", [raw["secret"]] if "secret" in raw else [])
    if not isinstance(raw_secrets, list):
        c.error(f"{key}.secrets", "must be a list of strings")
        raw_secrets = []
    rule = scheme.secret_rule(options) if scheme is not None else None
    secrets: list[Secret] = []
    for i, item in enumerate(raw_secrets):
        secret = c.secret(f"{key}.secrets[{i}]", item)
        if secret is None:
            continue
        problem = rule.problem(secret.reveal()) if rule is not None else None
        if problem is not None:
            c.error(f"{key}.secrets[{i}]", problem)
        if scheme is not None and scheme.secret_form is not None:
            secret.derive(scheme.secret_form)  # once here, never per request
        secrets.append(secret)
    if rule is not None and not raw_secrets:  # no rule: the scheme's check says what is wrong
        c.error(f"{key}.secrets", "at least one secret is required")
    return secrets


def parse_source(c: Checker, raw: Any, index: int) -> SourceConfig | None:
    key = f"sources[{index}]"
    if not isinstance(raw, Mapping):
        c.error(key, "must be a table ([[sources]])")
        return None
    before = len(c.errors)

    name = c.get(raw, f"{key}.name", "name", str, None)
    if name is None:
        c.error(f"{key}.name", "is required (the endpoint is POST /hooks/{name})")
    elif not SOURCE_NAME.fullmatch(name):
        c.error(f"{key}.name", f"{name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    bare_key, key = key, f"sources[{index}] ({name})" if name else key

    scheme = _scheme(c, raw, key)
    _other_keys(c, raw, bare_key, key, scheme)
    options = _options(c, raw, key, scheme) if scheme is not None else {}
    secrets = _secrets(c, raw, key, scheme, options)

    tolerance = c.get(raw, f"{key}.tolerance_seconds", "tolerance_seconds", int, DEFAULT_TOLERANCE)
    if not 1 <= tolerance <= 7 * 86400:
        c.error(f"{key}.tolerance_seconds", f"must be between 1 and 604800, got {tolerance}")

    nets = c.networks(f"{key}.allow_ips", c.get(raw, f"{key}.allow_ips", "allow_ips", list, []))

    fields = c.get(raw, f"{key}.dedup_fields", "dedup_fields", list, None)
    if fields is not None and not (fields and all(isinstance(f, str) and f.strip(".") for f in fields)):
        c.error(f"{key}.dedup_fields", 'must be a non-empty list of paths like "position.id"')
        fields = None
    ignore = c.get(raw, f"{key}.dedup_ignore_fields", "dedup_ignore_fields", list, None)
    if ignore is not None and not all(isinstance(f, str) and f.strip(".") for f in ignore):
        c.error(f"{key}.dedup_ignore_fields", 'must be a list of paths like "timestamp" (may be empty)')
        ignore = None

    rate = c.number(raw, key, "rate_limit", 0.0, 0, 1_000_000)
    burst = c.get(raw, f"{key}.rate_burst", "rate_burst", int, max(1, math.ceil(rate * 10)))
    if "rate_burst" in raw and rate == 0:
        c.error(f"{key}.rate_burst", "needs rate_limit (requests per second) above 0")
    elif not 1 <= burst <= 1_000_000:
        c.error(f"{key}.rate_burst", f"must be between 1 and 1000000, got {burst}")

    # 0: off. A position open for longer than this raises `stale_open` (docs/ledger.md).
    max_open_days = c.number(raw, key, "max_open_days", 0.0, 0, 36_500)

    source = SourceConfig(
        name=name,
        scheme=scheme.name if scheme is not None else "",
        secrets=tuple(secrets),
        tolerance_seconds=tolerance,
        allow_ips=tuple(nets),
        dedup_fields=tuple(fields) if fields is not None else None,
        dedup_ignore_fields=tuple(ignore) if ignore is not None else None,
        rate_limit=rate,
        rate_burst=burst if rate else 0,
        options=MappingProxyType(options),
        allow_shared_secret=c.get(raw, f"{key}.allow_shared_secret", "allow_shared_secret", bool, False),
        max_open_days=max_open_days or None,
    )
    if scheme is not None:
        for sub, message in scheme.check(source):
            c.error(f"{key}.{sub}", message)
    return None if len(c.errors) > before else source


def shared_secrets(c: Checker, sources: list[tuple[int, SourceConfig]]) -> list[str]:
    """A secret on two sources lets a request captured at one verify at the other (MetaCopier
    and PipSync both sign `<ts>.<body>`): an error naming both sources (never the secret),
    unless one of the two sets `allow_shared_secret = true`; then a warning, returned."""
    first: dict[bytes, tuple[int, SourceConfig, int]] = {}
    warnings: list[str] = []
    for index, source in sources:
        for i, secret in enumerate(source.secrets):
            seen = first.setdefault(secret.key, (index, source, i))
            if seen[1] is source:
                continue
            other_index, other, other_i = seen
            where = f"sources[{other_index}] ({other.name}).secrets[{other_i}]"
            if source.allow_shared_secret or other.allow_shared_secret:
                warnings.append(f"{c.origin}: sources {other.name!r} and {source.name!r} share a secret "
                                "(allow_shared_secret = true): a request captured at one of them verifies at the "
                                "other; give each source its own secret")
            else:
                c.error(f"sources[{index}] ({source.name}).secrets[{i}]",
                        f"is the same secret as {where}: a request captured at one source would verify at the "
                        "other; give each source its own secret (or set allow_shared_secret = true on one of them)")
    return warnings
