"""A value that never shows itself in `repr`, `str`, logs or tracebacks."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable


class Secret:
    """A configured credential. `reveal()` is the only way to read it."""

    __slots__ = ("_bytes", "_sha1_hex", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._bytes = value.encode("utf-8")
        # TradrAPI sends the SHA-1 of the key; computed once at load, not per request.
        self._sha1_hex = hashlib.sha1(self._bytes, usedforsecurity=False).hexdigest()

    def reveal(self) -> str:
        return self._value

    @property
    def key(self) -> bytes:
        """UTF-8 bytes of the secret, as HMAC keys take them."""
        return self._bytes

    @property
    def sha1_hex(self) -> str:
        return self._sha1_hex

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
    stored. Looks for each secret and its SHA-1 hex (TradrAPI's credential), in any case."""

    __slots__ = ("_forms", "_pattern")

    def __init__(self, secrets: Iterable[Secret]) -> None:
        forms = {form for s in secrets for form in (s.reveal().lower(), s.sha1_hex)}
        self._forms = tuple(sorted(forms, key=len, reverse=True))  # longest first, for redact()
        self._pattern = re.compile("|".join(map(re.escape, self._forms)), re.IGNORECASE) if forms else None

    def found_in(self, text: str) -> bool:
        if not self._forms:
            return False
        lowered = text.lower()
        return any(form in lowered for form in self._forms)

    def redact(self, text: str) -> str:
        """`text` with every secret found replaced by `[secret]`."""
        return self._pattern.sub("[secret]", text) if self._pattern is not None else text
