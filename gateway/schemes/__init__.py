"""Sender schemes, by name. One module per scheme; adding one is a new module and a line here.

`SCHEMES` maps a scheme's name to the import string of its `Scheme` object, as uvicorn maps
protocol names to classes: nothing is imported until a source uses the scheme, so the config
(which asks this registry) never imports the verifiers. A scheme that lives outside the
gateway is added with `register_scheme("name", "package.module:attr")` before the config loads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from uvicorn.importer import ImportFromStringError, import_from_string

from gateway.schemes.spec import Headers, Option, Problems, Scheme, SchemeSpec, SecretRule

if TYPE_CHECKING:  # the config imports this registry: never the other way at import time
    from gateway.config import SourceConfig
    from gateway.model import ParsedEvent

SCHEMES: dict[str, str] = {
    "metacopier": "gateway.schemes.metacopier:scheme",
    "pipsync": "gateway.schemes.pipsync:scheme",
    "tradrapi": "gateway.schemes.tradrapi:scheme",
}
BUILTIN = tuple(SCHEMES)

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_loaded: dict[tuple[str, str], Scheme] = {}  # by name and import string
# Every member of the protocol: what the load-time check looks for.
_DATA = ("name", "event_types", "options", "credential_headers", "secret_form", "dedup_fields")
_METHODS = ("secret_rule", "check", "verify", "identify", "sign", "sample", "new_secret")


class SchemeError(Exception):
    """A scheme cannot be registered or loaded; the message names it and says why."""


def register_scheme(name: str, target: str) -> None:
    """Make `scheme = "<name>"` usable in `[[sources]]`; `target` is "module:attribute" of an
    object that fits `Scheme`. It is imported (and checked) when a config first uses it."""
    if not _NAME.fullmatch(name):
        raise SchemeError(f"scheme name {name!r} must be 1-32 lower-case letters, digits, '_' or '-'")
    module, sep, attr = target.partition(":")
    if not (module and sep and attr):
        raise SchemeError(f'scheme {name!r}: {target!r} must be "<module>:<attribute>"')
    if SCHEMES.get(name, target) != target:
        raise SchemeError(f"scheme {name!r} is already registered as {SCHEMES[name]}")
    SCHEMES[name] = target


def scheme_names() -> tuple[str, ...]:
    return tuple(SCHEMES)


def get_scheme(name: str) -> Scheme:
    """The scheme registered as `name`, imported and checked on first use."""
    target = SCHEMES.get(name)
    if target is None:
        raise SchemeError(f"no scheme named {name!r} (known: {', '.join(SCHEMES)})")
    scheme = _loaded.get((name, target))
    if scheme is None:
        try:
            found = import_from_string(target)
        except ImportFromStringError as exc:
            raise SchemeError(f"scheme {name!r}: {exc}") from exc
        scheme = _loaded[name, target] = _checked(name, target, found)
    return scheme


def all_schemes() -> tuple[Scheme, ...]:
    """Every registered scheme, loaded."""
    return tuple(get_scheme(name) for name in SCHEMES)


def secret_forms() -> tuple[Callable[[bytes], str], ...]:
    """The forms, besides themselves, in which any scheme's senders send secrets."""
    return tuple(s.secret_form for s in all_schemes() if s.secret_form is not None)


def _checked(name: str, target: str, found: Any) -> Scheme:
    missing = [m for m in _DATA if not hasattr(found, m)]
    missing += [m for m in _METHODS if not callable(getattr(found, m, None))]
    if missing:
        raise SchemeError(f"scheme {name!r} ({target}) does not fit the Scheme protocol: "
                          f"missing {', '.join(missing)}")
    scheme: Scheme = found  # checked member by member above
    if scheme.name != name:
        raise SchemeError(f"scheme {name!r} ({target}) calls itself {scheme.name!r}")
    return scheme


__all__ = [
    "BUILTIN", "SCHEMES", "Headers", "Option", "Problems", "Scheme", "SchemeError", "SchemeSpec", "SecretRule",
    "all_schemes", "get_scheme", "register_scheme", "scheme_names", "secret_forms",
]


def reader(sources: Mapping[str, SourceConfig]) -> Callable[[str, str, bytes, bool], ParsedEvent | None]:
    """What `Store.reidentify` calls to read a stored event again: by its source's scheme and
    settings (`dedup_fields`, `dedup_ignore_fields`), or the scheme's defaults for a source no
    longer configured; None when the scheme is not registered."""

    from gateway.config import SourceConfig

    def identify(source: str, scheme: str, data: bytes, member: bool) -> ParsedEvent | None:
        try:
            spec = get_scheme(scheme)
        except SchemeError:
            return None
        config = sources.get(source)
        if config is None or config.scheme != scheme:
            config = SourceConfig(name=source, scheme=scheme)
        return spec.identify(data, config, member)

    return identify
