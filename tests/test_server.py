"""Graceful shutdown of the real `gateway run` process: requests in flight at SIGTERM are
answered and stored (or refused), none lost; a second signal ends the process at once."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import orjson

from tests.conftest import mc_sign, socket_inodes, start_gateway, wait_for


def start(tmp_path: Path, extra: str = "", deadline: float = 20) -> tuple[subprocess.Popen[bytes], int]:
    return start_gateway(tmp_path, extra, shutdown_timeout_seconds=deadline)


def accepted(pid: int, clients: list[socket.socket]) -> bool:
    """Whether process `pid` has accepted each of the `clients`' connections (Linux /proc): the
    server's end of each is one of its open sockets, not a connection waiting in the backlog."""
    ports = {f"{client.getsockname()[1]:04X}" for client in clients}
    held = socket_inodes(pid)
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(row[2].rsplit(":", 1)[1] in ports and row[9] in held for row in rows) == len(clients)


def read_reply(sock: socket.socket) -> bytes:
    """A whole HTTP response (head and Content-Length body), or what came before the close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def stored_ids(tmp_path: Path) -> set[int]:
    with sqlite3.connect(tmp_path / "gateway.db") as conn:
        return {row[0] for row in conn.execute("SELECT id FROM events")}


def test_sigterm_finishes_requests_in_flight_and_loses_none(tmp_path: Path) -> None:
    proc, port = start(tmp_path)
    bodies = [orjson.dumps({"type": "position.opened", "position": {"id": f"flight-{i}"}}) for i in range(20)]
    socks = []
    for body in bodies:  # each request's head and half its body are sent: in flight
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        head = "".join(f"{k}: {v}\r\n" for k, v in mc_sign(body).items())
        sock.sendall(f"POST /hooks/metacopier HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                     .encode() + body[: len(body) // 2])
        socks.append(sock)
    wait_for(lambda: accepted(proc.pid, socks), 10, "the server to accept the 20 connections")
    proc.send_signal(signal.SIGTERM)

    def refusing() -> bool:
        try:  # new connections are no longer accepted
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.TransportError:
            return True
        return False

    refused = wait_for(refusing, 10, "new connections to be refused after SIGTERM")
    answered: list[int] = []
    for sock, body in zip(socks, bodies, strict=True):
        try:
            sock.sendall(body[len(body) // 2:])
            reply = read_reply(sock)
        except OSError:
            reply = b""
        sock.close()
        if reply.startswith(b"HTTP/1.1 200"):
            answered.append(orjson.loads(reply.split(b"\r\n\r\n", 1)[1])["events"][0]["id"])
        else:
            assert reply == b"" or reply.startswith(b"HTTP/1.1 503"), reply[:100]  # refused, never a lie
    # uvicorn re-raises the signal once shut down, so the status shows SIGTERM (systemd: clean)
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert refused
    assert len(answered) == 20  # in flight at SIGTERM: all finished within the deadline
    assert set(answered) <= stored_ids(tmp_path)  # every 2xx is on disk
    log = (tmp_path / "run.log").read_text()
    assert "shutting down gracefully" in log and "Application shutdown complete" in log


def test_a_second_signal_forces_exit(tmp_path: Path) -> None:
    plugin = '[[plugins]]\nname = "stuck"\nuse = "tests.fanout_plugins:recorder"\ntimeout_seconds = 600\n' \
             '[plugins.options]\nhang = true\n'
    proc, port = start(tmp_path, plugin, deadline=120)
    acked = []
    for i in range(5):
        body = orjson.dumps({"type": "position.opened", "position": {"id": f"force-{i}"}})
        r = httpx.post(f"http://127.0.0.1:{port}/hooks/metacopier", content=body, headers=mc_sign(body))
        acked.append(r.json()["events"][0]["id"])
    proc.send_signal(signal.SIGTERM)  # graceful: would wait up to 60 s for the hanging plugin
    log = tmp_path / "run.log"  # the plugins are stopping: the first signal is being handled
    wait_for(lambda: "Waiting for application shutdown." in log.read_text(), what="the app's shutdown to begin",
             seen=lambda: log.read_text()[-2000:])
    assert proc.poll() is None
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 1
    assert time.monotonic() - started < 5
    assert set(acked) <= stored_ids(tmp_path)  # forcing loses nothing acknowledged
    with sqlite3.connect(tmp_path / "gateway.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        pending = conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'").fetchone()[0]
    assert pending == 5  # still owed to the plugin: delivered after the next start
    assert "second signal" in (tmp_path / "run.log").read_text()
