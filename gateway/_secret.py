"""A value that never shows itself in `repr`, `str`, logs or tracebacks."""

from __future__ import annotations

import hashlib


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
