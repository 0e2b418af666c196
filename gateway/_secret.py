"""A value that never shows itself in `repr`, `str`, logs or tracebacks."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable


class Secret:
    """A configured credential. `reveal()` is the only way to read it."""

    __slots__ = ("_bytes", "_derived", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._bytes = value.encode("utf-8")
        self._derived: dict[Callable[[bytes], str], str] = {}

    def reveal(self) -> str:
        return self._value

    @property
    def key(self) -> bytes:
        """UTF-8 bytes of the secret, as HMAC keys take them."""
        return self._bytes

    def derive(self, form: Callable[[bytes], str]) -> str:
        """`form(key)`, computed once and kept: e.g. the SHA-1 hex TradrAPI sends instead of
        the key, which the config computes at load so that requests only look it up."""
        value = self._derived.get(form)
        if value is None:
            value = self._derived[form] = form(self._bytes)
        return value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __reduce__(self) -> str:  # never pickled into anything
        raise TypeError("Secret cannot be pickled")


class SecretScanner:
    """Finds configured secrets in text that a request brought (a URL path, header names and
    values), so that a secret a sender put in the wrong place is neither echoed, logged nor
    stored. Looks for each secret and each of its `forms`, in any case: by default the forms
    that any registered scheme's senders send instead of a secret (TradrAPI's SHA-1 hex)."""

    __slots__ = ("_forms", "_pattern")

    def __init__(self, secrets: Iterable[Secret], forms: Iterable[Callable[[bytes], str]] | None = None) -> None:
        if forms is None:
            from gateway.schemes import secret_forms  # the registry is above this module

            forms = secret_forms()
        derivations = tuple(forms)
        found = {form.lower() for s in secrets for form in (s.reveal(), *map(s.derive, derivations))}
        self._forms = tuple(sorted(found, key=len, reverse=True))  # longest first, for redact()
        self._pattern = re.compile("|".join(map(re.escape, self._forms)), re.IGNORECASE) if found else None

    def found_in(self, text: str) -> bool:
        if not self._forms:
            return False
        lowered = text.lower()
        return any(form in lowered for form in self._forms)

    def redact(self, text: str) -> str:
        """`text` with every secret found replaced by `[secret]`."""
        return self._pattern.sub("[secret]", text) if self._pattern is not None else text
