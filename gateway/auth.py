"""OAuth2 client-credentials tokens for the read API (RFC 6749 section 4.4).

Tokens are signed with itsdangerous and carry the client id, its scopes and the time of
issue; they expire after `[api] token_ttl_seconds`. The signing key is generated once into
the store's folder (mode 0600), so tokens survive restarts. A token whose client was
removed from the config, whose secret was changed (rotated), or whose scopes were narrowed,
stops working at once: a token names the secret it was issued under, by a keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer

from gateway._files import create_private
from gateway.config import ApiConfig, ClientConfig, ConfigError
from gateway.errors import GatewayError

KEY_FILE = "api-signing.key"
MIN_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str | None  # None: anonymous, allowed by `[api] public = true`
    scopes: frozenset[str]


def load_or_create_key(folder: Path) -> bytes:
    """The token signing key, created (mode 0600, atomically) on first use. Raises ConfigError
    for a key shorter than MIN_KEY_BYTES: anyone could sign tokens with an empty key."""
    path = folder / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        create_private(path, secrets.token_bytes(MIN_KEY_BYTES))  # False: another process made it
        key = path.read_bytes()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError([
            f"{path}: the API token signing key is {len(key)} bytes long, it must be at least {MIN_KEY_BYTES} "
            f"(a start was interrupted while writing it, or the file was altered): delete {path} and start the "
            "gateway again to generate a new key; tokens issued so far then stop working"])
    return key


class Tokens:
    def __init__(self, api: ApiConfig, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.clock = clock
        self.use_key(key)

    def use_key(self, key: bytes) -> None:
        """Sign and check with `key` from now on: the one the store shares between instances
        (a PostgreSQL store keeps it in the database), so that a token, a cursor or a session
        from one instance is good on every other behind the balancer."""
        clock = self.clock

        class Signer(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock())

        self._key = key
        self._tokens = URLSafeTimedSerializer(key, salt="gateway-access-token", signer=Signer)
        self._cursors = URLSafeSerializer(key, salt="gateway-cursor")

    def authenticate(self, client_id: str, secret: str) -> ClientConfig:
        client = self.api.clients.get(client_id)
        expected = client.secret.key if client else b"\0" * 32
        # compare even for unknown ids, so timing does not tell which ids exist
        if not hmac.compare_digest(expected, secret.encode("utf-8", "surrogateescape")) or client is None:
            raise GatewayError("invalid_client", "unknown client or wrong secret")
        return client

    def _secret_stamp(self, client: ClientConfig) -> str:
        """Which secret `client` has: a keyed hash (a token's payload is readable, so never a
        plain hash of the secret), short, and different for every signing key."""
        return hmac.new(self._key, b"client-secret\0" + client.secret.key, hashlib.sha256).hexdigest()[:16]

    def issue(self, client: ClientConfig, scopes: tuple[str, ...]) -> str:
        return self._tokens.dumps({"c": client.id, "s": list(scopes), "k": self._secret_stamp(client)})

    def verify(self, token: str) -> Principal:
        try:
            data: Any = self._tokens.loads(token, max_age=self.api.token_ttl_seconds)
        except SignatureExpired:
            raise GatewayError("token_expired", "the access token has expired; request a new one") from None
        except BadSignature:
            raise GatewayError("invalid_token", "the access token is not valid") from None
        client = self.api.clients.get(str(data.get("c"))) if isinstance(data, dict) else None
        if client is None:
            raise GatewayError("invalid_token", "the access token's client is no longer configured")
        if not hmac.compare_digest(str(data.get("k", "")), self._secret_stamp(client)):
            raise GatewayError("invalid_token", "the client's secret has changed since this token was issued")
        return Principal(client.id, frozenset(data.get("s", ())) & frozenset(client.scopes))

    def expires_at(self, token: str) -> float:
        """The first second (the clock's) at which `verify` refuses `token` as expired."""
        try:
            _, issued = self._tokens.loads(token, max_age=self.api.token_ttl_seconds, return_timestamp=True)
        except BadSignature:
            raise GatewayError("invalid_token", "the access token is not valid") from None
        return float(issued.timestamp()) + self.api.token_ttl_seconds + 1

    def cursor(self, data: dict[str, Any]) -> str:
        return self._cursors.dumps(data)

    def read_cursor(self, cursor: str) -> dict[str, Any]:
        try:
            data = self._cursors.loads(cursor)
        except BadSignature:
            raise GatewayError("invalid_cursor", "the cursor was altered or is not from this gateway") from None
        if not isinstance(data, dict):
            raise GatewayError("invalid_cursor", "the cursor is not valid")
        return data


class FailureThrottle:
    """At most `limit` failed client authentications a minute for each key (a client id, an
    address); past that the key is refused, whatever it sends, until its oldest failure in the
    window is a minute old: answering a right secret then would tell a guesser that it is right.
    Pure (the clock is passed in) and bounded: `max_keys` keys, the least recently failed first
    forgotten."""

    WINDOW = 60.0

    def __init__(self, limit: int, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def wait(self, keys: Iterable[tuple[str, str]], now: float) -> float:
        """Seconds until every key may try again; 0.0 when none is throttled."""
        longest = 0.0
        for key in keys:
            stamps = self._failures.get(key)
            if stamps is not None and len(stamps) >= self.limit:
                longest = max(longest, stamps[0] + self.WINDOW - now)
        return longest

    def failed(self, keys: Iterable[tuple[str, str]], now: float) -> None:
        for key in keys:
            stamps = self._failures.pop(key, None)  # re-inserted last: the most recently failed
            if stamps is None:
                stamps = deque(maxlen=self.limit)
            while stamps and stamps[0] <= now - self.WINDOW:
                stamps.popleft()
            stamps.append(now)
            self._failures[key] = stamps
        while len(self._failures) > self.max_keys:
            del self._failures[next(iter(self._failures))]
