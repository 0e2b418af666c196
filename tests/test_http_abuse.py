"""Abuse over the HTTP surface, through raw sockets where a well-behaved client cannot misbehave:
oversized heads, slow bodies, slowloris, idle connections, connection and in-flight caps, rate
limits, spoofed X-Forwarded-For. Each time: no 5xx but the caps' own 503, nothing
unauthenticated stored, and the server keeps serving a legitimate sender meanwhile."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import Config, parse_config
from tests.conftest import RunningGateway, mc_sign, source_table, wait_for
from tests.store_reads import events, rejections, sqlite_receipt_count

Serve = Callable[..., RunningGateway]


# --- helpers ----------------------------------------------------------------------------------


def connect(gw: RunningGateway, source_address: str | None = None) -> socket.socket:
    """A connection to the gateway, from `source_address` (any of 127.0.0.0/8) if given."""
    host, port = gw.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10,
                                    source_address=None if source_address is None else (source_address, 0))


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send; False when the server has already closed the connection."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def read_all_of(socks: list[socket.socket], timeout: float) -> list[bytes | None]:
    """What each socket receives until the server closes it; None for those still open after
    `timeout` seconds in all (so a regression costs `timeout`, not `timeout` per socket)."""
    replies: dict[socket.socket, bytes] = {sock: b"" for sock in socks}
    done: set[socket.socket] = set()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ, sock)
        while len(done) < len(socks) and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = key.data
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    replies[sock] += chunk
                else:
                    done.add(sock)
                    selector.unregister(sock)
    return [replies[sock] if sock in done else None for sock in socks]


def read_reply(sock: socket.socket, timeout: float = 10) -> bytes:
    """One response (head and Content-Length body), without waiting for the connection to close."""
    sock.settimeout(timeout)
    data = b""
    while True:
        _, sep, body = data.partition(b"\r\n\r\n")
        if sep and len(body) >= int(header_of(data, b"content-length") or 0):
            return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def status_of(reply: bytes) -> int | None:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None


def problem_of(reply: bytes) -> dict[str, Any]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower(), head
    problem: dict[str, Any] = orjson.loads(body)
    return problem


def header_of(reply: bytes, name: bytes) -> bytes | None:
    for line in reply.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def mc_request(position: str, pad: int = 0, extra_headers: bytes = b"Connection: close\r\n") -> bytes:
    """A complete, signed MetaCopier request (head and body) for a new position."""
    body = orjson.dumps({"type": "position.opened", "accountId": "a1", "position": {"id": position},
                         "pad": "x" * pad})
    head = b"".join(f"{k}: {v}\r\n".encode() for k, v in mc_sign(body).items())
    return (b"POST /hooks/metacopier HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" + head
            + extra_headers + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def assert_serves(gw: RunningGateway, position: str, within: float = 3.0) -> None:
    """A legitimate sender is answered 200 `stored`, promptly."""
    started = time.monotonic()
    with connect(gw) as sock:
        sock.sendall(mc_request(position))
        reply = read_all(sock)
    assert status_of(reply) == 200, reply[:300]
    assert orjson.loads(reply.partition(b"\r\n\r\n")[2])["events"][0]["status"] == "stored"
    assert time.monotonic() - started < within


def stored(gw: RunningGateway) -> int:
    """How many events the gateway stored."""
    return len(events(gw.app.config))


def receipts(gw: RunningGateway) -> int:
    return sqlite_receipt_count(gw.app.config)


@contextmanager
def dribbling(socks: list[socket.socket], data: bytes, interval: float) -> Iterator[None]:
    """Send `data` one byte at a time on every socket, every `interval` s, in the background."""
    stop = threading.Event()

    def run() -> None:
        for byte in (data[i:i + 1] for i in range(len(data))):
            if stop.wait(interval):
                return
            for sock in socks:
                send_quietly(sock, byte)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


# --- oversized heads --------------------------------------------------------------------------

HEAD = b"POST /hooks/metacopier HTTP/1.1\r\nHost: gw\r\n"


@pytest.mark.parametrize("shape", ["dribbled-header", "whole-head-in-one-chunk", "long-url", "8-MiB-header"])
def test_oversized_head_is_431_and_the_server_keeps_serving(make_config: Callable[..., Config], serve: Serve,
                                                           shape: str) -> None:
    gw = serve(make_config())  # max_header_bytes: 16 KiB by default
    with connect(gw) as sock:
        if shape == "dribbled-header":  # never completes: refused once 16 KiB have arrived
            send_quietly(sock, HEAD + b"X-Pad: ")
            for _ in range(64):
                if not send_quietly(sock, b"a" * 1024):
                    break
                time.sleep(0.002)
        elif shape == "whole-head-in-one-chunk":  # complete head and a body in one segment
            send_quietly(sock, mc_request("big-head", extra_headers=b"X-Pad: " + b"a" * 20_000 + b"\r\n"))
        elif shape == "long-url":
            send_quietly(sock, b"POST /hooks/" + b"m" * 100_000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        else:
            send_quietly(sock, HEAD + b"X-Pad: " + b"a" * (8 * 1024 * 1024) + b"\r\n\r\n")
        reply = read_all(sock)
    if reply or shape != "8-MiB-header":  # 8 MiB in flight: the kernel may reset before the 431 is read
        assert status_of(reply) == 431, reply[:300]
        assert problem_of(reply)["code"] == "header_too_large"
        assert header_of(reply, b"connection") == b"close"
    assert receipts(gw) == 0
    assert_serves(gw, f"after-{shape}")


def test_heads_under_the_cap_are_served_whichever_way_they_are_cut(make_config: Callable[..., Config],
                                                                 serve: Serve) -> None:
    gw = serve(make_config())
    pad = b"Connection: close\r\nX-Pad: " + b"a" * 15_000 + b"\r\n"  # a head of ~15.3 KiB, under 16 KiB
    whole = mc_request("cut-0", pad=40_000, extra_headers=pad)  # with a 40 KB body after it
    cut = whole.index(b"\r\n\r\n")
    with connect(gw) as sock:  # in one send: the head cap must not count the body
        sock.sendall(whole)
        assert status_of(read_all(sock)) == 200
    for i, split in enumerate((cut + 1, cut + 2, cut + 3)):  # the blank line split across two sends
        request = mc_request(f"cut-{i + 1}", pad=40_000, extra_headers=pad)
        with connect(gw) as sock:
            sock.sendall(request[:split])
            time.sleep(0.05)
            sock.sendall(request[split:])
            reply = read_all(sock, timeout=3)
        assert status_of(reply) == 200, (split - cut, reply[:300])
    assert stored(gw) == 4


# --- slow clients -----------------------------------------------------------------------------

CHUNKED_HEAD = HEAD + b"Transfer-Encoding: chunked\r\n" + b"".join(
    f"{k}: {v}\r\n".encode() for k, v in mc_sign(b"{}").items()) + b"\r\n"


def test_a_body_over_the_limit_sent_slowly_is_refused_within_the_timeout(make_config: Callable[..., Config],
                                                                        serve: Serve) -> None:
    gw = serve(make_config(server={"max_body_bytes": 4096, "client_timeout_seconds": 2}))
    with connect(gw) as slow, connect(gw) as faster:
        slow.sendall(CHUNKED_HEAD)
        faster.sendall(CHUNKED_HEAD)
        started = time.monotonic()
        # `slow` never reaches the limit before the timeout: 408. `faster` crosses it at 0.5 s: 413.
        for i in range(10):
            send_quietly(slow, b"20\r\n" + b"x" * 32 + b"\r\n")
            send_quietly(faster, b"400\r\n" + b"x" * 1024 + b"\r\n")
            time.sleep(0.1)
            if i == 2:
                assert_serves(gw, "while-bodies-are-slow")
        faster_reply = read_all(faster)
        while send_quietly(slow, b"1\r\nx\r\n") and time.monotonic() - started < 8:
            time.sleep(0.2)
        slow_reply = read_all(slow)
        waited = time.monotonic() - started
    assert status_of(faster_reply) == 413 and problem_of(faster_reply)["code"] == "payload_too_large"
    assert status_of(slow_reply) == 408, slow_reply[:300]
    assert problem_of(slow_reply)["code"] == "request_timeout"
    assert 1.5 < waited < 6  # the deadline, checked once a second
    assert receipts(gw) == 1  # only the legitimate request


def test_a_slow_legitimate_body_within_the_timeout_is_stored(make_config: Callable[..., Config],
                                                            serve: Serve) -> None:
    gw = serve(make_config(server={"client_timeout_seconds": 3}))
    request = mc_request("slow-but-fine")
    split = request.index(b"\r\n\r\n") + 4
    with connect(gw) as sock:
        sock.sendall(request[:split])
        body = request[split:]
        step = len(body) // 5 + 1
        for i in range(0, len(body), step):  # about 1 s for the whole body
            time.sleep(0.2)
            sock.sendall(body[i:i + step])
        reply = read_all(sock)
    assert status_of(reply) == 200, reply[:300]


def test_slowloris_heads_are_cut_off_while_others_are_served(make_config: Callable[..., Config],
                                                            serve: Serve) -> None:
    gw = serve(make_config(server={"client_timeout_seconds": 2}))
    lorises = [connect(gw) for _ in range(20)]
    silent = connect(gw)  # connects and says nothing
    started = time.monotonic()
    try:
        with dribbling(lorises, HEAD + b"X-A: " + b"b" * 200, interval=0.1):
            assert_serves(gw, "during-slowloris")
            replies = read_all_of(lorises, timeout=8)
            cut_off = time.monotonic() - started
            assert read_all_of([silent], timeout=8) == [b""]  # closed without a word
            silent_closed = time.monotonic() - started
    finally:
        for sock in [*lorises, silent]:
            sock.close()
    for reply in replies:
        assert reply is not None and status_of(reply) == 408 and problem_of(reply)["code"] == "request_timeout"
    assert 1.5 < cut_off < 6
    assert silent_closed < 6
    assert receipts(gw) == 1


def test_a_head_dribbled_after_a_served_request_is_cut_off_too(make_config: Callable[..., Config],
                                                              serve: Serve) -> None:
    # A keep-alive connection: one real request, then the start of another in the same packet,
    # then a byte at a time. Each byte resets uvicorn's own keep-alive timer; ours does not reset.
    gw = serve(make_config(server={"client_timeout_seconds": 2}))
    with connect(gw) as sock:
        started = time.monotonic()
        sock.sendall(mc_request("kept-alive", extra_headers=b"") + HEAD)
        with dribbling([sock], b"X-A: " + b"b" * 200, interval=0.1):
            replies = read_all_of([sock], timeout=8)
        waited = time.monotonic() - started
    reply = replies[0]
    assert reply is not None and status_of(reply) == 200
    second = reply[reply.index(b"HTTP/1.1 ", 10):]
    assert status_of(second) == 408 and problem_of(second)["code"] == "request_timeout"
    assert 1.5 < waited < 6


def test_many_idle_connections_neither_block_others_nor_stay_open(make_config: Callable[..., Config],
                                                                   serve: Serve) -> None:
    gw = serve(make_config(server={"client_timeout_seconds": 2}))
    idle = [connect(gw) for _ in range(300)]
    try:
        assert_serves(gw, "among-300-idle", within=2)
        assert read_all_of(idle, timeout=8) == [b""] * len(idle)  # every one closed by the server, quietly
    finally:
        for sock in idle:
            sock.close()
    assert_serves(gw, "after-300-idle")


def test_connections_beyond_the_cap_get_503_with_retry_after(make_config: Callable[..., Config],
                                                            serve: Serve) -> None:
    gw = serve(make_config(server={"max_connections": 5}))
    idle = [connect(gw) for _ in range(5)]
    try:
        with connect(gw) as extra:
            reply = read_all(extra)
    finally:
        for sock in idle:
            sock.close()
    assert status_of(reply) == 503 and problem_of(reply)["code"] == "overloaded"
    assert header_of(reply, b"retry-after") == b"1"
    wait_for(lambda: _try_serve(gw, "after-the-cap"))


def _try_serve(gw: RunningGateway, position: str) -> bool:
    with connect(gw) as sock:
        sock.sendall(mc_request(position))
        return status_of(read_all(sock)) == 200


# --- in flight --------------------------------------------------------------------------------


def test_requests_beyond_max_in_flight_get_503_then_succeed(make_config: Callable[..., Config],
                                                           serve: Serve) -> None:
    gw = serve(make_config(server={"max_in_flight": 2}))
    requests = [mc_request(f"held-{i}") for i in range(2)]
    # From two addresses: one client may hold only half of max_in_flight.
    with connect(gw, "127.0.0.2") as first, connect(gw, "127.0.0.3") as second:
        held = [first, second]
        for sock, request in zip(held, requests, strict=True):
            sock.sendall(request[:-5])  # all but the last bytes of the body: the request stays in flight
        wait_for(lambda: gw.app.ingest.in_flight == 2)
        refused = gw.post("/hooks/metacopier", b"{}", mc_sign(b"{}"))
        assert refused.status_code == 503 and refused.json()["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        for sock, request in zip(held, requests, strict=True):
            sock.sendall(request[-5:])
            reply = read_all(sock, timeout=3)
            assert status_of(reply) == 200, reply[:300]
    wait_for(lambda: gw.app.ingest.in_flight == 0)
    assert_serves(gw, "after-in-flight")
    assert stored(gw) == 3


# --- rate limit -------------------------------------------------------------------------------


class Clock:
    """Wall time plus an offset the test moves (signatures stay within their tolerance)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_rate_limit_counts_authentic_requests_only_and_refills(make_config: Callable[..., Config],
                                                              serve: Serve) -> None:
    clock = Clock()
    config = make_config(only=[source_table("metacopier", "metacopier", rate_limit=1, rate_burst=2),
                               source_table("pipsync", "pipsync")])
    gw = serve(config, clock=clock)
    # A forged flood first: it is refused 401 and leaves the real sender's bucket full.
    for _ in range(30):
        assert gw.post("/hooks/metacopier", b"{}", {"X-MetaCopier-Signature": "0" * 64}).status_code == 401
    clock.offset = 0.0

    def post_opened(position: str) -> Any:
        body = orjson.dumps({"type": "position.opened", "position": {"id": position}})
        return gw.post("/hooks/metacopier", body, mc_sign(body))

    assert [post_opened(f"r{i}").status_code for i in range(2)] == [200, 200]  # the burst
    limited = post_opened("r2")
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert limited.headers["retry-after"] == "1"
    assert "1 requests/s" in limited.json()["detail"]
    clock.offset += 1.0  # one second later: one more token
    assert post_opened("r2").status_code == 200  # the sender's retry succeeds
    assert post_opened("r3").status_code == 429
    assert stored(gw) == 3  # a refused request stored nothing
    wait_for(lambda: len(rejections(gw.app.config, code="rate_limited")) == 2, what="2 rate_limited rejections")


# --- trusted proxies --------------------------------------------------------------------------


def _via(gw: RunningGateway, position: str, forwarded: str | None) -> Any:
    body = orjson.dumps({"type": "position.opened", "position": {"id": position}})
    headers = mc_sign(body)
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    return gw.post("/hooks/metacopier", body, headers)


def _remote_of(gw: RunningGateway, request_id: str, kept_as: str) -> str | None:
    """The address stored with a request: with its events (`kept_as="events"`), or with its
    rejection (`"rejections"`, written after the answer: waited for)."""
    records = events if kept_as == "events" else rejections

    def found() -> list[str | None]:
        return [r.remote_addr for r in records(gw.app.config) if r.request_id == request_id]

    (remote_addr,) = wait_for(found, what=f"request {request_id} in the store's {kept_as}")
    return remote_addr


def test_x_forwarded_for_from_a_trusted_proxy_decides_allow_ips(make_config: Callable[..., Config],
                                                               serve: Serve) -> None:
    config = make_config(only=[source_table("metacopier", "metacopier", allow_ips=["198.51.100.0/24"])],
                         server={"trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]})
    gw = serve(config)
    ok = _via(gw, "p1", "198.51.100.7")
    assert ok.status_code == 200
    assert _remote_of(gw, ok.json()["request_id"], "events") == "198.51.100.7"
    ok = _via(gw, "p2", "203.0.113.5, 198.51.100.8, 10.1.1.1")  # through a second trusted hop
    assert _remote_of(gw, ok.json()["request_id"], "events") == "198.51.100.8"
    # The client forges the left part: the right-most untrusted address still decides.
    spoofed = _via(gw, "p3", "198.51.100.7, 203.0.113.9")
    assert spoofed.status_code == 403 and "203.0.113.9 is not in allow_ips" in spoofed.json()["detail"]
    assert _remote_of(gw, spoofed.headers["x-request-id"], "rejections") == "203.0.113.9"
    garbage = _via(gw, "p4", "198.51.100.7, not-an-address")
    assert garbage.status_code == 403
    assert _via(gw, "p5", None).status_code == 403  # the proxy itself is not an allowed sender


def test_x_forwarded_for_from_anyone_else_is_ignored(make_config: Callable[..., Config], serve: Serve) -> None:
    # No trusted proxies: uvicorn's own proxy_headers (which trusts 127.0.0.1 by default) is off too.
    config = make_config(only=[source_table("metacopier", "metacopier", allow_ips=["198.51.100.0/24"])])
    spoofed = _via(serve(config), "s1", "198.51.100.7")
    assert spoofed.status_code == 403 and "127.0.0.1 is not in allow_ips" in spoofed.json()["detail"]
    # A peer that is not in trusted_proxies may not choose its address either.
    config = make_config(only=[source_table("metacopier", "metacopier", allow_ips=["127.0.0.1"])],
                         server={"trusted_proxies": ["10.0.0.0/8"]})
    gw = serve(config)
    ok = _via(gw, "s2", "203.0.113.9")
    assert ok.status_code == 200 and _remote_of(gw, ok.json()["request_id"], "events") == "127.0.0.1"


def test_metrics_allow_ips_honours_trusted_proxies(serve: Serve, tmp_path: Path) -> None:
    config = parse_config({"sources": [source_table("metacopier", "metacopier")],
                           "store": {"path": str(tmp_path / "gateway.db")},
                           "server": {"trusted_proxies": ["127.0.0.1"]},
                           "metrics": {"allow_ips": ["192.0.2.0/24"]}}, origin="test.toml", base_dir=tmp_path)
    gw = serve(config)
    assert gw.client.get("/metrics", headers={"X-Forwarded-For": "192.0.2.10"}).status_code == 200
    assert gw.client.get("/metrics", headers={"X-Forwarded-For": "192.0.2.10, 198.51.100.1"}).status_code == 403
    assert gw.client.get("/metrics").status_code == 403  # the proxy itself


# --- other bodies -----------------------------------------------------------------------------


def test_token_endpoint_refuses_a_huge_body_without_waiting_for_it(make_config: Callable[..., Config],
                                                                  serve: Serve) -> None:
    gw = serve(make_config())
    with connect(gw) as sock:
        sock.sendall(b"POST /oauth/token HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 104857600\r\n\r\n" + b"a" * 65536)
        reply = read_reply(sock, timeout=5)
    # Before: the whole 100 MB was buffered, then refused; the client would still be waiting here.
    assert status_of(reply) == 400, reply[:300]
    assert b"too large" in reply


def test_nothing_unauthenticated_is_stored_under_mixed_abuse(make_config: Callable[..., Config],
                                                             serve: Serve) -> None:
    gw = serve(make_config(server={"client_timeout_seconds": 2, "max_body_bytes": 4096}))
    gw.app.store.rejections_per_source = 20  # type: ignore[attr-defined]
    statuses = {}
    for i in range(60):
        with connect(gw) as sock:
            kind = i % 4
            if kind == 0:  # forged signature
                sock.sendall(HEAD + b"X-MetaCopier-Signature: " + b"0" * 64 + b"\r\nContent-Length: 2\r\n\r\n{}")
            elif kind == 1:  # oversized head
                sock.sendall(HEAD + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n")
            elif kind == 2:  # oversized body from an unknown sender
                sock.sendall(HEAD + b"Content-Length: 5000\r\n\r\n" + b"x" * 5000)
            else:  # unknown source
                sock.sendall(b"POST /hooks/nope-%d HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}" % i)
            sock.shutdown(socket.SHUT_WR)
            statuses[i] = status_of(read_all(sock))
    assert statuses == {i: (401, 431, 413, 404)[i % 4] for i in range(60)}
    assert stored(gw) == receipts(gw) == 0
    wait_for(lambda: len(rejections(gw.app.config)) >= 20, what="20 rejections recorded")
    assert len(rejections(gw.app.config)) <= 40  # bounded: 20 per bucket (metacopier, unknown names)
    assert_serves(gw, "after-mixed-abuse")


# --- connections reserved for webhooks ----------------------------------------------------------


def test_connections_in_the_reserve_serve_only_hooks(make_config: Callable[..., Config], serve: Serve) -> None:
    """Read clients (API, streams, WebSocket handshakes) cannot take the last
    `reserved_hook_connections` connections: webhooks still get through (issue 13, item 4)."""
    gw = serve(make_config(server={"max_connections": 20, "reserved_hook_connections": 8}))
    idle = [connect(gw) for _ in range(12)]  # 12 open: every further connection is in the reserve
    try:
        wait_for(lambda: len(gw.server.server_state.connections) == 12)
        for request in (b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
                        b"GET /api/v1/stream HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n\r\n",
                        b"GET /api/v1/ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"):
            with connect(gw) as sock:
                sock.sendall(request)
                reply = read_all(sock)  # answered, then closed by the server
            assert status_of(reply) == 503 and problem_of(reply)["code"] == "overloaded", reply[:300]
            assert header_of(reply, b"retry-after") == b"1" and b"reserved for webhooks" in reply
        assert_serves(gw, "in-the-reserve")
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: len(gw.server.server_state.connections) == 0)
    assert gw.client.get("/healthz").status_code == 200


# --- slow-body floods ---------------------------------------------------------------------------


def _sender(gw: RunningGateway, position: str, budget: float) -> int | None:
    """A real sender: signed, retried on 5xx with backoff (MetaCopier gives up after seconds)
    until `budget` seconds have passed; the last status."""
    deadline = time.monotonic() + budget
    delay = 0.2
    status = None
    while True:
        with connect(gw) as sock:
            sock.sendall(mc_request(position))
            status = status_of(read_all(sock, timeout=budget))
        if (status is not None and status < 500) or time.monotonic() + delay > deadline:
            return status
        time.sleep(delay)
        delay *= 2


def test_a_slow_body_flood_does_not_starve_real_senders(make_config: Callable[..., Config], serve: Serve) -> None:
    """300 connections send a head and then trickle their bodies, while real senders post: the
    senders all get 200 within their retry budget (issue 13, item 2). Half the flood has no
    credential header (refused at once, before the body), half a well-formed forged one from a
    single address (it may hold only its share of max_in_flight)."""
    gw = serve(make_config(server={"max_in_flight": 64}))
    body = b'{"type": "position.opened", "position": {"id": "flood"}}' + b" " * 200
    bare = (b"POST /hooks/metacopier HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body))
    forged = (b"POST /hooks/metacopier HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n" % len(body)
              + b"X-MetaCopier-Timestamp: %d\r\n" % int(time.time() * 1000)
              + b"X-MetaCopier-Signature: " + b"ab" * 32 + b"\r\n\r\n")
    flood = [connect(gw, "127.0.0.2") for _ in range(300)]
    try:
        for i, sock in enumerate(flood):
            sock.sendall((bare if i % 2 else forged) + body[:1])
        wait_for(lambda: gw.app.ingest.in_flight >= 32, what="the forged half to hold its share")
        with dribbling(flood, body[1:], interval=0.5):
            results: dict[int, int | None] = {}

            def send_one(i: int) -> None:
                results[i] = _sender(gw, f"through-the-flood-{i}", budget=6)

            senders = [threading.Thread(target=send_one, args=(i,)) for i in range(40)]
            for thread in senders:
                thread.start()
            for thread in senders:
                thread.join(30)
            assert results == dict.fromkeys(range(40), 200)
            assert gw.app.ingest.in_flight_by_client == {"127.0.0.2": 32}  # still holding, still trickling
        bare_replies = [read_reply(sock, timeout=5) for sock in flood[1::2]]
        assert all(status_of(r) == 401 and b"missing_signature" in r for r in bare_replies)
    finally:
        for sock in flood:
            sock.close()
    assert stored(gw) == 40
