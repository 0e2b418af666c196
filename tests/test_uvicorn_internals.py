"""The uvicorn internals the gateway reaches into keep their shape.

gateway/_http.py subclasses uvicorn's httptools protocol and gateway/server.py subclasses its
Server; neither is public API, so pyproject.toml pins uvicorn to the versions checked here. These
tests fail with a message naming what moved: fix gateway/_http.py or gateway/server.py (and its
tests/test_http_abuse.py) before widening the pin.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway._asgi import BODY_COMPLETE, Receive, Scope, Send
from gateway._http import GuardedHttpToolsProtocol
from gateway.config import ServerConfig
from gateway.server import SWITCH_INTERVAL_SECONDS, GatewayServer, uvicorn_config
from tests.conftest import RunningGateway

PIN = "pyproject.toml pins uvicorn; gateway/_http.py and gateway/server.py rely on it"


def changed(what: str) -> str:
    return f"uvicorn {uvicorn.__version__} changed {what}: {PIN}"


@pytest.mark.parametrize(("owner", "method", "params", "is_async"), [
    (HttpToolsProtocol, "connection_made", ["self", "transport"], False),
    (HttpToolsProtocol, "data_received", ["self", "data"], False),
    (HttpToolsProtocol, "on_headers_complete", ["self"], False),
    (HttpToolsProtocol, "on_message_complete", ["self"], False),
    (uvicorn.Server, "serve", ["self", "sockets"], True),
    (uvicorn.Server, "on_tick", ["self", "counter"], True),
    (uvicorn.Server, "handle_exit", ["self", "sig", "frame"], False),
])
def test_the_overridden_methods_keep_their_signatures(owner: type, method: str, params: list[str],
                                                      is_async: bool) -> None:
    function = getattr(owner, method, None)
    assert function is not None, changed(f"{owner.__name__}.{method}: it is gone")
    assert list(inspect.signature(function).parameters) == params, changed(
        f"the signature of {owner.__name__}.{method}: {inspect.signature(function)}")
    assert inspect.iscoroutinefunction(function) == is_async, changed(f"whether {owner.__name__}.{method} is async")


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes; enough of a socket's transport for one connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.1.2.3", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _drive_a_request_cut_off_mid_body() -> tuple[GuardedHttpToolsProtocol, ServerState, FakeTransport, list[Any]]:
    received: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append(await receive())  # ends when the protocol marks the cycle disconnected

    config = uvicorn_config(app, ServerConfig(), host="127.0.0.1", port=0, log_level="warning")
    config.load()
    state = ServerState()
    try:  # as uvicorn.Server builds its protocols
        protocol = config.http_protocol_class(config=config, server_state=state, app_state={},  # type: ignore[call-arg]
                                              _loop=asyncio.get_running_loop())
    except TypeError as exc:
        raise AssertionError(changed(f"how a protocol is constructed ({exc})")) from exc
    assert isinstance(protocol, GuardedHttpToolsProtocol)
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"POST /hooks/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    protocol.check(float("inf"))  # past the body's deadline: 408, the cycle cut off
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0)
    return protocol, state, transport, received


def test_the_protocol_state_the_guard_reads_and_writes() -> None:
    protocol, state, transport, received = asyncio.run(_drive_a_request_cut_off_mid_body())
    assert protocol in state.connections and protocol.connections is state.connections, changed(
        "HttpToolsProtocol.connections (the server's set of open connections)")
    assert protocol.transport is transport, changed("HttpToolsProtocol.transport")
    assert protocol.client == ("10.1.2.3", 40000), changed("HttpToolsProtocol.client")
    cycle = protocol.cycle
    assert cycle is not None, changed("HttpToolsProtocol.cycle (set by on_headers_complete)")
    for name in ("response_started", "response_complete", "disconnected"):
        assert isinstance(getattr(cycle, name, None), bool), changed(f"RequestResponseCycle.{name}")
    assert isinstance(getattr(cycle, "message_event", None), asyncio.Event), changed(
        "RequestResponseCycle.message_event")
    assert cycle.disconnected and not cycle.response_started
    assert transport.written.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and transport.closed
    assert received == [{"type": "http.disconnect"}], changed(
        "how a cycle marked disconnected ends the app's receive()")


async def _flags_seen(chunks: list[bytes]) -> list[Any]:
    """What the app finds under BODY_COMPLETE when it first runs, for a request sent in `chunks`."""
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope.get(BODY_COMPLETE))

    config = uvicorn_config(app, ServerConfig(), host="127.0.0.1", port=0, log_level="warning")
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={},  # type: ignore[call-arg]
                                          _loop=asyncio.get_running_loop())
    protocol.connection_made(FakeTransport())
    for chunk in chunks:
        protocol.data_received(chunk)
        await asyncio.sleep(0)  # the app's task runs between chunks, as between network reads
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0)
    return seen


def test_the_scope_says_when_the_whole_body_came_with_the_head() -> None:
    """The ingest skips its head-only credential check only for a body that has arrived."""
    head = b"POST /hooks/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
    assert asyncio.run(_flags_seen([head + b"hello"])) == [True], changed(
        "on_message_complete before the app's task runs, or HttpToolsProtocol.scope")
    assert asyncio.run(_flags_seen([head, b"hel", b"lo"])) == [None]


def test_the_server_ticks_and_shares_its_connections(gateway: RunningGateway,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    server = gateway.server
    assert isinstance(server, GatewayServer)
    ticks: list[tuple[int, float]] = []
    original: Callable[[int], Any] = server.on_tick

    async def on_tick(counter: int) -> bool:
        ticks.append((counter, time.monotonic()))
        result: bool = await original(counter)
        return result

    monkeypatch.setattr(server, "on_tick", on_tick)
    deadline = time.monotonic() + 10
    while len(ticks) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ticks) >= 5, changed("Server.main_loop: it no longer calls on_tick")
    assert sys.getswitchinterval() == SWITCH_INTERVAL_SECONDS, changed("Server.serve: the override did not run")
    counters = [counter for counter, _ in ticks]
    assert all(b == (a + 1) % 864000 for a, b in itertools.pairwise(counters)), changed(
        f"the tick counter ({counters})")
    period = (ticks[-1][1] - ticks[0][1]) / (len(ticks) - 1)
    assert 0.05 < period < 1.0, changed(f"the tick period ({period:.3f} s; the sweep assumes 0.1 s)")
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)):
        while time.monotonic() < deadline and not any(
                isinstance(c, GuardedHttpToolsProtocol) for c in server.server_state.connections):
            time.sleep(0.01)
        assert any(isinstance(c, GuardedHttpToolsProtocol) for c in server.server_state.connections), changed(
            "Server.server_state.connections (the sweep reads it)")
