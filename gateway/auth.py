"""OAuth2 client-credentials tokens for the read API (RFC 6749 section 4.4).

Tokens are signed with itsdangerous and carry the client id, its scopes and the time of
issue; they expire after `[api] token_ttl_seconds`. The signing key is generated once into
the store's folder (mode 0600), so tokens survive restarts. A token whose client was
removed from the config, or whose scopes were narrowed, stops working at once.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer

from gateway.config import ApiConfig, ClientConfig
from gateway.errors import GatewayError

KEY_FILE = "api-signing.key"


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str | None  # None: anonymous, allowed by `[api] public = true`
    scopes: frozenset[str]


def load_or_create_key(folder: Path) -> bytes:
    """The token signing key, created (mode 0600) on first use."""
    path = folder / KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


class Tokens:
    def __init__(self, api: ApiConfig, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.clock = clock

        class Signer(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock())

        self._tokens = URLSafeTimedSerializer(key, salt="gateway-access-token", signer=Signer)
        self._cursors = URLSafeSerializer(key, salt="gateway-cursor")

    def authenticate(self, client_id: str, secret: str) -> ClientConfig:
        client = self.api.clients.get(client_id)
        expected = client.secret.key if client else b"\0" * 32
        # compare even for unknown ids, so timing does not tell which ids exist
        if not hmac.compare_digest(expected, secret.encode("utf-8", "surrogateescape")) or client is None:
            raise GatewayError("invalid_client", "unknown client or wrong secret")
        return client

    def issue(self, client: ClientConfig, scopes: tuple[str, ...]) -> str:
        return self._tokens.dumps({"c": client.id, "s": list(scopes)})

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
