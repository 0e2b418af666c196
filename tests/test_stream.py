"""The live stream over real sockets: SSE and WebSocket, filters, resume, auth, slow clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from gateway.config import Config
from tests.conftest import RunningGateway, send, source_table, wait_for

SECRET = "dashboard-secret-0123456789"


@pytest.fixture
def gw(make_config: Callable[..., Config], serve: Callable[..., RunningGateway]) -> RunningGateway:
    return serve(make_config(only=[source_table("metacopier", "metacopier")],
                             clients=[{"id": "dash", "secret": SECRET, "scopes": ["events:read"]}]))


def token(gw: RunningGateway) -> str:
    r = gw.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "dash",
                                              "client_secret": SECRET})
    assert r.status_code == 200, r.text
    value: str = r.json()["access_token"]
    return value


def body(position: str, event: str = "position.opened", pad: int = 0) -> dict[str, Any]:
    return {"type": event, "position": {"id": position}, "pad": "x" * pad}


class SSEReader:
    """Reads an SSE stream in a thread, collecting (id, event) pairs and error events."""

    def __init__(self, gw: RunningGateway, query: str, headers: dict[str, str], read: bool = True) -> None:
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.errors: list[dict[str, Any]] = []
        self.ended = threading.Event()
        self.ready = threading.Event()
        self.go = threading.Event()
        if read:
            self.go.set()
        self.client = httpx.Client(base_url=gw.url, timeout=30)
        self.thread = threading.Thread(target=self._run, args=(query, headers), daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    def _run(self, query: str, headers: dict[str, str]) -> None:
        try:
            with self.client.stream("GET", f"/api/v1/stream{query}", headers=headers) as response:
                self.status = response.status_code
                self.response = response
                self.ready.set()
                self.go.wait()
                current: dict[str, str] = {}
                for line in response.iter_lines():
                    if line == "":
                        if current.get("event") == "event":
                            self.events.append((int(current["id"]), orjson.loads(current["data"])))
                        elif current.get("event") == "error":
                            self.errors.append(orjson.loads(current["data"]))
                        current = {}
                    elif not line.startswith(":") and ":" in line:
                        key, _, value = line.partition(":")
                        current[key] = value.lstrip()
        except httpx.HTTPError:
            pass
        finally:
            self.ready.set()
            self.ended.set()

    def ids(self) -> list[int]:
        return [event_id for event_id, _ in self.events]

    def close(self) -> None:
        self.client.close()
        self.ended.wait(1)


def test_sse_live_events_filters_and_resume(gw: RunningGateway) -> None:
    bearer = {"Authorization": f"Bearer {token(gw)}"}
    before = send(gw, body("old-1"))  # sent before connecting: not part of a stream "from now on"
    reader = SSEReader(gw, "?type=position.closed", bearer)
    assert reader.status == 200
    closes = [send(gw, body(f"p{i}", "position.closed")) for i in range(3)]
    send(gw, body("p9", "position.opened"))  # filtered out
    wait_for(lambda: reader.ids() == closes, what=f"the closes {closes}", seen=reader.ids)
    assert all(event["event_type"] == "position.closed" for _, event in reader.events)
    assert before not in reader.ids()
    reader.close()

    missed = [send(gw, body(f"m{i}", "position.closed")) for i in range(4)]  # while disconnected
    resumed = SSEReader(gw, "?type=position.closed", {**bearer, "Last-Event-ID": str(closes[-1])})
    wait_for(lambda: resumed.ids() == missed, what=f"the missed events {missed}",
             seen=lambda: f"{resumed.ids()}; status {resumed.status}")
    live = send(gw, body("live", "position.closed"))
    wait_for(lambda: resumed.ids() == [*missed, live], seen=resumed.ids)  # no gap, no repeat
    resumed.close()


def test_sse_auth_failures(gw: RunningGateway) -> None:
    assert gw.client.get("/api/v1/stream").status_code == 401
    r = gw.client.get("/api/v1/stream", headers={"Authorization": "Bearer forged"})
    assert r.status_code == 401 and r.json()["code"] == "invalid_token"


def ws_url(gw: RunningGateway, query: str = "") -> str:
    return gw.url.replace("http://", "ws://") + f"/api/v1/ws{query}"


def bearer(gw: RunningGateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(gw)}"}


def test_websocket_live_and_resume_with_since(gw: RunningGateway) -> None:
    url = ws_url(gw, "?type=position.*")
    auth = bearer(gw)
    with connect(url, additional_headers=auth) as ws:
        sent = [send(gw, body(f"w{i}")) for i in range(3)]
        got = [orjson.loads(ws.recv(timeout=5)) for _ in sent]
    assert [m["id"] for m in got] == sent and all(m["type"] == "event" for m in got)
    assert got[0]["event"]["entity_id"] == "position:w0"
    assert got[0]["event"]["conflicts_with"] is None
    missed = [send(gw, body(f"x{i}")) for i in range(2)]
    with connect(f"{url}&since={sent[-1]}", additional_headers=auth) as ws:
        replayed = [orjson.loads(ws.recv(timeout=5))["id"] for _ in missed]
        live = send(gw, body("x-live"))
        assert replayed == missed
        assert orjson.loads(ws.recv(timeout=5))["id"] == live


def test_websocket_refuses_without_a_valid_token(gw: RunningGateway) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        with pytest.raises(InvalidStatus) as info, connect(ws_url(gw), additional_headers=headers):
            pass
        assert info.value.response.status_code == 403


def test_slow_client_is_cut_off_with_a_reason_and_ingest_is_not_slowed(gw: RunningGateway) -> None:
    gw.app.streams.max_lag = 20
    gw.app.streams.batch = 5
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that barely reads
    sock.connect((host, int(port)))
    sock.sendall(f"GET /api/v1/stream?since=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token(gw)}\r\n\r\n"
                 .encode())
    started = time.monotonic()
    for i in range(150):  # 150 events of 50 KB while the client reads nothing
        send(gw, body(f"slow-{i}", pad=50_000))
    assert time.monotonic() - started < 20  # ingest went on regardless
    received = b""
    sock.settimeout(10)
    while b"event: error" not in received:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    sock.close()
    assert b"event: error" in received and b'"code":"too_slow"' in received
    assert b"reconnect" in received
    assert received.count(b"event: event") < 150  # cut off before it got everything


def test_websocket_slow_client_is_closed_with_a_reason(gw: RunningGateway) -> None:
    gw.app.streams.max_lag = 10
    gw.app.streams.batch = 5  # a page at a time: 25 matching events beyond the first page
    for i in range(30):
        send(gw, body(f"lag-{i}"))
    with connect(ws_url(gw, "?since=0"), additional_headers=bearer(gw)) as ws, \
            pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    assert "too_slow" in info.value.rcvd.reason


@pytest.mark.parametrize(("query", "headers"), [
    (f"?since={2**64}", {}),
    ("?since=%C2%B2", {}),  # "²": a digit to Python, not an id
    ("", {"Last-Event-ID": "²".encode()}),  # type: ignore[dict-item]
    ("", {"Last-Event-ID": str(2**63)}),
])
def test_an_impossible_start_is_a_400_not_a_500(gw: RunningGateway, query: str, headers: dict[str, str]) -> None:
    r = gw.client.get(f"/api/v1/stream{query}", headers={"Authorization": f"Bearer {token(gw)}", **headers})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_parameter"
