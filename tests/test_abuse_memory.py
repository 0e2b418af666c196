"""Memory stays bounded under connection abuse: the real `gateway run` process, its VmRSS read
from /proc, while hundreds of idle connections, slow bodies and multi-megabyte heads hit it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import mc_sign, socket_inodes, start_gateway, wait_for

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """(pid, port) of a `gateway run` with a 2 s client timeout and the default limits."""
    proc, port = start_gateway(tmp_path, client_timeout_seconds=2)
    try:
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def store_one(port: int, position: str) -> None:
    body = orjson.dumps({"type": "position.opened", "position": {"id": position}})
    r = httpx.post(f"http://127.0.0.1:{port}/hooks/metacopier", content=body, headers=mc_sign(body), timeout=5)
    assert r.status_code == 200 and r.json()["events"][0]["status"] == "stored", r.text


def abuse(port: int, stop: threading.Event) -> None:
    """300 idle connections, 50 slow chunked bodies and 20 heads of 4 MiB, held until `stop`."""
    socks: list[socket.socket] = []
    try:
        for _ in range(300):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        slow = []
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /hooks/metacopier HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
            slow.append(sock)
        socks += slow
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(sock)
            with contextlib.suppress(OSError):  # refused early: that is the point
                sock.sendall(b"POST /hooks/metacopier HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * (4 * MiB))
        while not stop.wait(0.2):
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
    finally:
        for sock in socks:
            sock.close()


def test_rss_stays_bounded_under_idle_connections_slow_bodies_and_huge_heads(
        gateway_process: tuple[int, int]) -> None:
    pid, port = gateway_process
    for i in range(20):  # warm up: imports, caches, the store's first commits
        store_one(port, f"warm-{i}")
    baseline, sockets = rss(pid), len(socket_inodes(pid))
    peaks = []
    for round_ in range(2):
        stop = threading.Event()
        attacker = threading.Thread(target=abuse, args=(port, stop), daemon=True)
        attacker.start()
        peak = 0
        for i in range(15):  # 3 s of abuse: past the 2 s client timeout
            time.sleep(0.2)
            peak = max(peak, rss(pid))
            if i % 5 == 0:
                store_one(port, f"during-{round_}-{i}")  # the server keeps serving meanwhile
        stop.set()
        attacker.join(10)
        peaks.append(peak - baseline)
    wait_for(lambda: len(socket_inodes(pid)) <= sockets, what="the server to let go of the abusive connections",
             seen=lambda: len(socket_inodes(pid)))
    after = rss(pid) - baseline
    # Without the head cap, each 4 MiB head was buffered whole (80 MiB and more per round).
    assert max(peaks) < 40 * MiB, [p // MiB for p in peaks]
    assert after < 40 * MiB, after // MiB
    store_one(port, "after-abuse")
