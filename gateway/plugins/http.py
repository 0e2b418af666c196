"""`http`: POST every event as JSON to a URL, signed the Standard Webhooks way.

Options:
    url (str, required): the `http://` or `https://` endpoint. Redirects are not followed.
    secret (str, required): the signing secret, or `env:NAME` to read it from the environment
        variable NAME. As in the Standard Webhooks spec, a secret starting with `whsec_` is the
        base64 of the key (`whsec_` + base64); any other secret is used as its UTF-8 bytes.
    timeout_seconds (number, default 10): connect, read and write timeout of one attempt.
    headers (table of strings): extra static headers sent with every request.

The body is `orjson.dumps(event.to_json())`, sent with `content-type: application/json`,
`user-agent: trading-webhook-gateway` and the Standard Webhooks headers: `webhook-id`
(`evt_<event id>`, the same on every retry so the receiver can deduplicate),
`webhook-timestamp` (Unix seconds) and `webhook-signature`
(`v1,` + base64 HMAC-SHA256 of `<id>.<timestamp>.<body>`).

Outcome: 2xx acknowledges; 408, 429, 5xx, timeouts and network errors are retried; a 3xx
(the URL is wrong: redirects are not followed) or any other 4xx dead-letters the event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson

from gateway.plugins import Event, PermanentFailure, PluginContext
from gateway.plugins.options import check_keys, required_string, string_table

USER_AGENT = "trading-webhook-gateway"
_OPTIONS = ("headers", "secret", "timeout_seconds", "url")
_OWN_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "user-agent"})
_RETRY_4XX = frozenset({408, 429})
_EXCERPT = 200  # bytes of a refusing response body quoted in the error


class DeliveryError(Exception):
    """A failed attempt worth retrying; `status` is None for a network error or timeout."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: base64-decoded after a `whsec_` prefix, else its UTF-8 bytes."""
    if not secret.startswith("whsec_"):
        return secret.encode("utf-8")
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("option 'secret' starts with 'whsec_' but the rest is not valid base64") from None


def sign(secret_key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message (Standard Webhooks, version v1)."""
    digest = hmac.new(secret_key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


class HttpPlugin:
    """Posts events to one endpoint through one pooled connection client."""

    def __init__(self, url: str, key: bytes, *, timeout_seconds: float = 10.0,
                 headers: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.headers = {"content-type": "application/json", "user-agent": USER_AGENT, **(headers or {})}
        self._key = key
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        parsed = httpx.URL(url)  # errors name the endpoint without credentials or query string
        self._target = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}{parsed.path}"

    def __repr__(self) -> str:
        return f"HttpPlugin({self._target!r})"

    async def start(self) -> None:
        self._open()

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _open(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_seconds, follow_redirects=False)
        return self._client

    async def deliver(self, event: Event) -> None:
        body = orjson.dumps(event.to_json())
        msg_id = f"evt_{event.id}"
        timestamp = int(self._clock())
        headers = {
            **self.headers,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, msg_id, timestamp, body),
        }
        try:
            async with self._open().stream("POST", self.url, content=body, headers=headers) as response:
                status = response.status_code
                if 200 <= status < 300:
                    return
                excerpt = await _excerpt(response)
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            detail = str(exc) or "no detail"
            raise DeliveryError(f"POST {self._target}: network error ({type(exc).__name__}: {detail})") from exc
        message = f"POST {self._target}: HTTP {status}" + (f": {excerpt}" if excerpt else "")
        if status in _RETRY_4XX or status >= 500:
            raise DeliveryError(message, status)
        if 300 <= status < 400:
            location = response.headers.get("location", "")
            raise PermanentFailure(f"{message} (redirect to {location!r} not followed: fix the url)")
        raise PermanentFailure(message)


async def _excerpt(response: httpx.Response) -> str:
    """The start of the response body, for the error message; the rest is not read."""
    data = b""
    try:
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) >= _EXCERPT:
                break
    except httpx.HTTPError:  # the status decides the outcome; a broken body only shortens the message
        pass
    return data[:_EXCERPT].decode("utf-8", "replace").strip()


def factory(options: Mapping[str, Any], context: PluginContext) -> HttpPlugin:
    check_keys(options, "http", _OPTIONS)
    url = required_string(options, "url")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        # httpx quotes the offending part ("Invalid port: '...'"), which can be a piece of a
        # password with an unescaped '/' or '@': name the problem only.
        problem = str(exc).split(":", 1)[0]
        raise ValueError(f"option 'url' is not a valid URL ({problem}; percent-encode special characters "
                         "in credentials)") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("option 'url' must be an absolute http:// or https:// URL")
    return HttpPlugin(url, signing_key(_secret(required_string(options, "secret", " (or 'env:NAME')"))),
                      timeout_seconds=_timeout(options.get("timeout_seconds", 10.0)),
                      headers=_headers(string_table(options, "headers")))


def _secret(value: str) -> str:
    if value.startswith("env:"):
        name = value.removeprefix("env:")
        secret = os.environ.get(name)
        if not secret:
            raise ValueError(f"option 'secret' reads environment variable {name!r}, which is not set or empty")
        return secret
    return value


def _timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError("option 'timeout_seconds' must be a positive number")
    return float(value)


def _headers(value: dict[str, str]) -> dict[str, str]:
    clash = sorted(k for k in value if k.lower() in _OWN_HEADERS)
    if clash:
        raise ValueError(f"option 'headers' cannot set {', '.join(clash)}: the plugin sets them itself")
    return value
