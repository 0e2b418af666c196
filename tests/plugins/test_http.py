"""The `http` plugin against a real HTTP server on 127.0.0.1 that checks signatures on its own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.plugins import Event, PermanentFailure, PluginContext
from gateway.plugins.http import DeliveryError, HttpPlugin, factory, sign, signing_key

pytestmark = pytest.mark.anyio

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def make_event(event_id: int = 41, **changes: Any) -> Event:
    fields: dict[str, Any] = {
        "id": event_id, "source": "pipsync", "scheme": "pipsync", "event_type": "trade.opened",
        "entity_id": "trade:tr_9f2c", "dedup_key": "pipsync:trade.opened:tr_9f2c", "status": "stored",
        "conflicts_with": None,
        "account": "acc_12", "symbol": "EURUSD", "received_at": 1763633702.5,
        "payload": {"data": {"trade_id": "tr_9f2c", "lots": 0.5}}, "body": b"{}",
    }
    return Event(**{**fields, **changes})


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """The receiving end: answers `/status/<code>` with that code, `/slow` after a second."""

    url: str
    requests: list[Received] = field(default_factory=list)

    def verify(self, request: Received, key: bytes) -> bool:
        """Check the Standard Webhooks signature independently of the plugin's code."""
        signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode() + request.body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        versions = dict(sig.split(",", 1) for sig in request.headers["webhook-signature"].split(" "))
        return hmac.compare_digest(versions.get("v1", ""), expected)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if self.path == "/slow":
                time.sleep(1)
                status = 200
            else:
                status = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/status/") else 200
            answer = b"refused: this is why" if status >= 300 else b"ok"
            try:
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("location", "/status/200")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except ConnectionError:
                pass  # the client gave up (timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
async def make_plugin(tmp_path: Path) -> AsyncIterator[Callable[..., HttpPlugin]]:
    """Build an http plugin through the factory; every plugin is stopped afterwards."""
    made: list[HttpPlugin] = []

    def make(url: str, **options: Any) -> HttpPlugin:
        plugin = factory({"url": url, "secret": SECRET, **options}, PluginContext("forward", tmp_path))
        made.append(plugin)
        return plugin

    yield make
    for plugin in made:
        await plugin.stop()


def test_sign_matches_the_standard_webhooks_test_vector() -> None:
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_secret_without_whsec_prefix_is_used_as_utf8_bytes() -> None:
    assert signing_key("plain-sécret") == "plain-sécret".encode()
    assert signing_key(SECRET) == KEY


async def test_posts_the_event_signed_with_standard_webhooks_headers(
        make_plugin: Callable[..., HttpPlugin], receiver: Receiver) -> None:
    plugin = make_plugin(receiver.url + "/hooks", headers={"authorization": "Bearer t0ken"})
    await plugin.start()
    event = make_event()
    before = int(time.time())
    await plugin.deliver(event)
    [request] = receiver.requests
    assert request.path == "/hooks"
    assert request.body == orjson.dumps(event.to_json())
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "trading-webhook-gateway"
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["webhook-id"] == "evt_41"
    assert before <= int(request.headers["webhook-timestamp"]) <= int(time.time())
    assert receiver.verify(request, KEY)
    assert not receiver.verify(request, b"another key")


async def test_webhook_id_is_stable_across_retries(receiver: Receiver) -> None:
    plugin = HttpPlugin(receiver.url, b"k", clock=lambda: 1614265330.9)
    try:
        await plugin.deliver(make_event(attempt=1))  # before start: the client is created lazily
        await plugin.deliver(make_event(attempt=2))
    finally:
        await plugin.stop()
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "evt_41"
    assert first.headers["webhook-timestamp"] == "1614265330"
    assert receiver.verify(first, b"k")


async def test_secret_from_the_environment(make_plugin: Callable[..., HttpPlugin], receiver: Receiver,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARD_SECRET", "from-the-env")
    plugin = make_plugin(receiver.url, secret="env:FORWARD_SECRET")
    await plugin.deliver(make_event())
    assert receiver.verify(receiver.requests[0], b"from-the-env")


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_2xx_acknowledges(status: int, make_plugin: Callable[..., HttpPlugin], receiver: Receiver) -> None:
    await make_plugin(f"{receiver.url}/status/{status}").deliver(make_event())
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_408_429_and_5xx_are_retried(status: int, make_plugin: Callable[..., HttpPlugin],
                                           receiver: Receiver) -> None:
    with pytest.raises(DeliveryError) as caught:
        await make_plugin(f"{receiver.url}/status/{status}").deliver(make_event())
    assert not isinstance(caught.value, PermanentFailure)
    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET.removeprefix("whsec_") not in str(caught.value)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_other_4xx_dead_letter(status: int, make_plugin: Callable[..., HttpPlugin], receiver: Receiver) -> None:
    with pytest.raises(PermanentFailure, match=f"HTTP {status}: refused: this is why"):
        await make_plugin(f"{receiver.url}/status/{status}").deliver(make_event())


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_not_followed_and_dead_letter(status: int, make_plugin: Callable[..., HttpPlugin],
                                                          receiver: Receiver) -> None:
    with pytest.raises(PermanentFailure, match=f"HTTP {status}.*redirect to '/status/200' not followed"):
        await make_plugin(f"{receiver.url}/status/{status}").deliver(make_event())
    assert [r.path for r in receiver.requests] == [f"/status/{status}"]


async def test_connection_refused_is_retried(make_plugin: Callable[..., HttpPlugin]) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DeliveryError, match="network error") as caught:
        await make_plugin(f"http://127.0.0.1:{port}/hooks").deliver(make_event())
    assert caught.value.status is None
    assert SECRET.removeprefix("whsec_") not in str(caught.value)


async def test_a_timeout_is_retried(make_plugin: Callable[..., HttpPlugin], receiver: Receiver) -> None:
    with pytest.raises(DeliveryError, match=r"network error.*Timeout"):
        await make_plugin(receiver.url + "/slow", timeout_seconds=0.2).deliver(make_event())


async def test_one_client_from_start_to_stop(make_plugin: Callable[..., HttpPlugin], receiver: Receiver) -> None:
    plugin = make_plugin(receiver.url)
    await plugin.start()
    client = plugin._client
    assert client is not None
    await plugin.deliver(make_event(1))
    await plugin.deliver(make_event(2))
    assert plugin._client is client
    await plugin.stop()
    assert client.is_closed and plugin._client is None


def test_repr_hides_the_secret(tmp_path: Path) -> None:
    plugin = factory({"url": "https://user:pw@example.com/hook?token=abc", "secret": SECRET},
                     PluginContext("forward", tmp_path))
    assert repr(plugin) == "HttpPlugin('https://example.com/hook')"


@pytest.mark.parametrize(("options", "message"), [
    ({"secret": SECRET}, "option 'url' is required"),
    ({"url": "ftp://example.com/x", "secret": SECRET}, "absolute http:// or https://"),
    ({"url": "/relative", "secret": SECRET}, "absolute http:// or https://"),
    ({"url": "https://example.com"}, "option 'secret' is required"),
    ({"url": "https://example.com", "secret": "env:GATEWAY_TEST_UNSET_SECRET"},
     "environment variable 'GATEWAY_TEST_UNSET_SECRET', which is not set"),
    ({"url": "https://example.com", "secret": "whsec_not base64!"}, "not valid base64"),
    ({"url": "https://example.com", "secret": SECRET, "timeout_seconds": 0}, "positive number"),
    ({"url": "https://example.com", "secret": SECRET, "timeout_seconds": True}, "positive number"),
    ({"url": "https://example.com", "secret": SECRET, "headers": {"x-n": 1}}, "table of string values"),
    ({"url": "https://example.com", "secret": SECRET, "headers": {"Webhook-Signature": "v1,x"}},
     "cannot set Webhook-Signature"),
    ({"url": "https://example.com", "secret": SECRET, "retries": 3}, "unknown option"),
])
def test_bad_options_are_config_errors(options: dict[str, Any], message: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_TEST_UNSET_SECRET", raising=False)
    with pytest.raises(ValueError, match=message) as caught:
        factory(options, PluginContext("forward", tmp_path))
    assert "not base64!" not in str(caught.value)
