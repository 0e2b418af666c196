"""The live stream over real sockets: SSE and WebSocket, filters, resume, auth, slow clients."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
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
        except (httpx.HTTPError, OSError, ValueError):  # ended, or hung up by close()
            pass
        finally:
            self.ready.set()
            self.ended.set()

    def ids(self) -> list[int]:
        return [event_id for event_id, _ in self.events]

    def close(self) -> None:
        """Hang up (the gateway sees the disconnect) and wait for the reading thread."""
        if hasattr(self, "response") and not self.ended.is_set():
            sock = self.response.extensions["network_stream"].get_extra_info("socket")
            with contextlib.suppress(OSError):  # closing the response from here leaves the socket open
                sock.shutdown(socket.SHUT_RDWR)
        self.ended.wait(5)
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


def ws_closing(url: str, headers: dict[str, str]) -> tuple[int, str]:
    """Read a WebSocket stream until the gateway closes it: the close code and reason."""
    with connect(url, additional_headers=headers) as ws, pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None, "closed without a close frame from the gateway"
    return info.value.rcvd.code, info.value.rcvd.reason


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
    code, reason = ws_closing(ws_url(gw, "?since=0"), bearer(gw))
    assert code == 1008 and "too_slow" in reason


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


# --- item 12: a filtered stream is not cut off by traffic it does not match -------------------


@pytest.fixture
def two_sources(make_config: Callable[..., Config], serve: Callable[..., RunningGateway]) -> RunningGateway:
    gw = serve(make_config(only=[source_table("metacopier", "metacopier"),
                                 source_table("tradr", "metacopier", allow_shared_secret=True)],
                           clients=[{"id": "dash", "secret": SECRET, "scopes": ["events:read"]}]))
    gw.app.streams.max_lag = 20  # so that a flood of 60 events is "large"
    gw.app.streams.batch = 5
    return gw


def test_a_caught_up_filtered_stream_outlives_a_flood_it_does_not_match(two_sources: RunningGateway) -> None:
    gw = two_sources
    auth = bearer(gw)
    reader = SSEReader(gw, "?source=metacopier", auth)
    first = send(gw, body("mc-1"))
    wait_for(lambda: reader.ids() == [first], seen=reader.ids)
    flood = [send(gw, body(f"other-{i}"), source="tradr") for i in range(60)]  # 3x the lag limit
    after = send(gw, body("mc-2"))
    wait_for(lambda: reader.ids() == [first, after], seen=lambda: (reader.ids(), reader.errors))
    assert reader.errors == [] and not reader.ended.is_set()
    reader.close()

    # resuming from the last match, 60 unmatched events back, is not refused either
    resumed = SSEReader(gw, "?source=metacopier", {**auth, "Last-Event-ID": str(first)})
    wait_for(lambda: resumed.ids() == [after], seen=lambda: (resumed.ids(), resumed.errors))
    live = send(gw, body("mc-3"))
    wait_for(lambda: resumed.ids() == [after, live], seen=lambda: (resumed.ids(), resumed.errors))
    assert resumed.errors == [] and flood[-1] < after
    resumed.close()

    with connect(ws_url(gw, f"?source=metacopier&since={first}"), additional_headers=auth) as ws:
        assert orjson.loads(ws.recv(timeout=5))["id"] == after
        for i in range(60):
            send(gw, body(f"more-{i}"), source="tradr")
        last = send(gw, body("mc-4"))
        assert [orjson.loads(ws.recv(timeout=5))["id"] for _ in range(2)] == [live, last]


def test_a_filtered_stream_behind_on_events_it_matches_is_still_cut_off(two_sources: RunningGateway) -> None:
    gw = two_sources
    for i in range(40):  # a backlog of matching events: a page of 5, then 35 more behind
        send(gw, body(f"mc-{i}"))
        send(gw, body(f"other-{i}"), source="tradr")
    code, reason = ws_closing(ws_url(gw, "?source=metacopier&since=0"), bearer(gw))
    assert code == 1008 and "too_slow" in reason


# --- item 3: a stream lives no longer than its token ------------------------------------------


class Clock:
    """The gateway's clock, shifted by `offset` seconds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clocked(make_config: Callable[..., Config], serve: Callable[..., RunningGateway]) -> tuple[RunningGateway, Clock]:
    clock = Clock()
    gw = serve(make_config(only=[source_table("metacopier", "metacopier")],
                           clients=[{"id": "dash", "secret": SECRET, "scopes": ["events:read"]}]), clock=clock)
    return gw, clock


def nearly_expired(gw: RunningGateway, clock: Clock, seconds_left: float = 1.0) -> dict[str, str]:
    """A token issued so long ago that it expires `seconds_left` (or up to 1 s more) from now."""
    clock.offset = -(gw.app.config.api.token_ttl_seconds - seconds_left)
    try:
        return bearer(gw)
    finally:
        clock.offset = 0.0


def test_an_sse_stream_ends_when_its_token_expires(clocked: tuple[RunningGateway, Clock]) -> None:
    gw, clock = clocked
    reader = SSEReader(gw, "", nearly_expired(gw, clock))  # no event needed to end it: a timer
    first = send(gw, body("before-expiry"))
    wait_for(lambda: reader.ids() == [first], seen=reader.ids)
    reader.ended.wait(5)
    assert [e["code"] for e in reader.errors] == ["token_expired"]
    assert "expired" in reader.errors[0]["detail"]
    assert reader.ids() == [first]
    reader.close()


def test_a_websocket_closes_with_1008_when_its_token_expires(clocked: tuple[RunningGateway, Clock]) -> None:
    gw, clock = clocked
    code, reason = ws_closing(ws_url(gw), nearly_expired(gw, clock))
    assert code == 1008 and reason.startswith("token_expired:")


def test_streams_end_when_their_client_is_removed(gw: RunningGateway) -> None:
    auth = bearer(gw)
    reader = SSEReader(gw, "", auth)
    with connect(ws_url(gw), additional_headers=auth) as ws:
        first = send(gw, body("while-configured"))
        wait_for(lambda: reader.ids() == [first], seen=reader.ids)
        assert orjson.loads(ws.recv(timeout=5))["id"] == first
        gw.app.tokens.api = replace(gw.app.tokens.api, clients={})  # the client is gone from the config
        send(gw, body("after-removal"))  # never delivered to either stream
        assert reader.ended.wait(5)
        assert [e["code"] for e in reader.errors] == ["invalid_token"]
        assert "no longer configured" in reader.errors[0]["detail"]
        assert reader.ids() == [first]
        reader.close()
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    assert info.value.rcvd.reason.startswith("invalid_token:")


# --- item 4: streams are capped per client and in total ---------------------------------------


@pytest.fixture
def capped(make_config: Callable[..., Config], serve: Callable[..., RunningGateway]) -> RunningGateway:
    return serve(make_config(only=[source_table("metacopier", "metacopier")],
                             api={"max_streams_per_client": 2, "max_streams": 3},
                             clients=[{"id": "dash", "secret": SECRET, "scopes": ["events:read"]},
                                      {"id": "ops", "secret": SECRET + "-ops", "scopes": ["events:read"]}]))


def ops_token(gw: RunningGateway) -> dict[str, str]:
    r = gw.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "ops",
                                              "client_secret": SECRET + "-ops"})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_streams_per_client_and_in_total_are_capped_with_a_precise_answer(capped: RunningGateway) -> None:
    gw = capped
    dash = bearer(gw)
    sse = SSEReader(gw, "", dash)
    ws = connect(ws_url(gw), additional_headers=dash).__enter__()  # SSE and WebSocket count together
    r = gw.client.get("/api/v1/stream", headers=dash)
    assert r.status_code == 429 and r.json()["code"] == "too_many_streams", r.text
    assert r.headers["retry-after"] == "10" and "max_streams_per_client = 2" in r.json()["detail"]
    assert r.headers["content-type"] == "application/problem+json"
    with pytest.raises(InvalidStatus), connect(ws_url(gw), additional_headers=dash):
        pass

    ops = ops_token(gw)
    third = SSEReader(gw, "", ops)  # another client still gets one: 3 in all
    r = gw.client.get("/api/v1/stream", headers=ops)
    assert r.status_code == 503 and r.json()["code"] == "overloaded", r.text
    assert r.headers["retry-after"] == "10" and "max_streams" in r.json()["detail"]
    assert gw.client.get("/api/v1/events", headers=ops).status_code == 200  # the rest of the API is not capped
    assert send(gw, body("webhooks-still-served"))

    ws.close()  # a slot comes back when its stream ends
    wait_for(lambda: gw.client.get("/api/v1/stream", headers={**ops, "Last-Event-ID": "x"}).status_code == 400,
             what="the closed WebSocket's slot to be free")
    again = SSEReader(gw, "", ops)
    assert again.status == 200
    for reader in (sse, third, again):
        reader.close()
    wait_for(lambda: not gw.app.streams.slots.open, what="every slot back", seen=lambda: gw.app.streams.slots.open)


def test_anonymous_streams_are_capped_per_address(make_config: Callable[..., Config],
                                                  serve: Callable[..., RunningGateway]) -> None:
    gw = serve(make_config(only=[source_table("metacopier", "metacopier")],
                           api={"public": True, "max_streams_per_client": 1}))
    reader = SSEReader(gw, "", {})
    r = gw.client.get("/api/v1/stream")
    assert r.status_code == 429 and "address 127.0.0.1" in r.json()["detail"]
    reader.close()
