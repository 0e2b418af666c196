"""Two gateway instances on one PostgreSQL database behind a real nginx (issue 16).

Concurrent retrying senders of all three schemes post through nginx, which balances over both
instances and sends a request that found one gone to the other. One instance is SIGKILLed and
restarted several times under load. Afterwards: every acknowledged event is stored exactly
once, every plugin got every event in order per entity (an `http` plugin's receiver, a small
server in the test, among them), and the repeats are bounded by the claims held at the kills.
The same event posted to both instances at once is stored once, and a token from one instance
is good on the other.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.config import load_config
from tests import store_reads
from tests.conftest import (
    MC_SECRET,
    free_port,
    mc_sign,
    postgres_schema,
    postgres_sql,
    run_gateway,
    wait_for,
)
from tests.nginx import nginx
from tests.traffic import Ledger, Sender, check_store, config_text, pending_deliveries

RECEIVER_KEY = b"receiver-signing-key-0123456789ab"
RECEIVER = """
[[plugins]]
name = "receiver"
use = "http"
retry_backoff_seconds = 0.05
retry_backoff_max_seconds = 0.2
[plugins.options]
url = "http://127.0.0.1:{port}/events"
secret = "whsec_{secret}"
"""


class Receiver(BaseHTTPRequestHandler):
    """The downstream service of an `http` plugin: checks each delivery's Standard Webhooks
    signature and records the event ids in the order they arrive."""

    received: list[int]
    refused: list[str]

    def do_POST(self) -> None:
        declared = int(self.headers["content-length"])
        body = self.rfile.read(declared)
        if len(body) < declared:  # its sender was killed while sending: nobody waits for the answer
            self.send_response(400)
            self.end_headers()
            return
        signed = f"{self.headers['webhook-id']}.{self.headers['webhook-timestamp']}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(RECEIVER_KEY, signed, hashlib.sha256).digest()).decode()
        if self.headers["webhook-signature"] != expected:
            self.refused.append(self.headers["webhook-id"])
            self.send_response(401)
        else:
            self.received.append(orjson.loads(body)["id"])
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


CLIENT = '\n[[clients]]\nid = "desk"\nsecret = "desk-secret-0123456789abcdef0123"\nscopes = ["events:read"]\n'


class Instance:
    """One `gateway run` on the shared database, restarted on the same port after a kill."""

    def __init__(self, folder: Path, config: Path, name: str) -> None:
        self.folder, self.config, self.name = folder, config, name
        self.port = free_port()
        self.log = folder / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = run_gateway(["run", "--config", str(self.config), "--port", str(self.port), "--log-format",
                                 "text"], cwd=self.folder, port=self.port, log=self.log)

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def claims_held(url: str) -> int:
    now_us = int(time.time() * 1_000_000)
    rows = postgres_sql(url, "SELECT count(*) FROM deliveries WHERE status = 'pending' AND claim_id IS NOT NULL"
                             f" AND lease_until > {now_us}")
    return int(rows[0][0])


@pytest.mark.parametrize("balancer_config", ["site", "balancer"])
def test_two_instances_behind_nginx_lose_nothing_when_one_is_killed(tmp_path: Path, balancer_config: str) -> None:
    """Behind the TLS site turned into an upstream (deploy/README.md's multi-host recipe) and
    behind compose.postgres.yaml's balancer."""
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    received: list[int] = []
    refused: list[str] = []
    handler = type("Handler", (Receiver,), {"received": received, "refused": refused})
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    plugin = RECEIVER.format(port=receiver.server_port, secret=base64.b64encode(RECEIVER_KEY).decode())
    with postgres_schema() as url, contextlib.ExitStack() as cleanup:
        cleanup.callback(receiver.server_close)
        config = tmp_path / "gateway.toml"
        config.write_text(config_text(tmp_path, store=f'url = "{url}"') + plugin + CLIENT)
        instances = [Instance(tmp_path, config, "a"), Instance(tmp_path, config, "b")]
        try:
            for instance in instances:
                instance.start()
            with nginx(tmp_path / "nginx", [i.port for i in instances], balancer_config) as balancer:
                port = int(balancer.rsplit(":", 1)[1])
                ledger, stop = Ledger(proxied=True), threading.Event()
                same_event_at_once(instances, ledger)
                token_from_one_works_on_the_other(instances)
                senders = [Sender(i, port, seed, ledger, stop, budget=3000, think=0.01) for i in range(4)]
                for sender in senders:
                    sender.start()
                kills, held = 0, 0
                try:
                    for _ in range(4):
                        before = ledger.answers
                        wait_for(lambda: ledger.answers >= before + 20, 30, "traffic")  # noqa: B023
                        victim = rng.choice(instances)
                        victim.kill()
                        kills += 1
                        held += claims_held(url)
                        time.sleep(rng.uniform(0.2, 1.0))  # the other instance takes everything meanwhile
                        victim.start()
                    before = ledger.answers
                    wait_for(lambda: ledger.answers >= before + 20, 30, "traffic after the last restart")
                except BaseException:
                    ledger.aborted = True
                    raise
                finally:
                    stop.set()
                    for sender in senders:
                        sender.join(timeout=120)
                assert not ledger.errors, f"seed {seed}: " + "\n".join(ledger.errors[:20])
                wait_for(lambda: pending_deliveries(tmp_path) == 0, 120, "fan-out to drain")
        finally:
            codes = [instance.stop() for instance in instances]
        assert all(code in (0, -signal.SIGTERM) for code in codes), codes
        receiver.shutdown()
        assert not refused, f"deliveries with a wrong signature: {refused[:5]}"
        events, redelivered = check_store(tmp_path, ledger, {"receiver": received})
        assert redelivered <= held, f"{redelivered} deliveries repeated; {held} claims were held at the kills"
        print(f"\ntwo instances behind nginx ({balancer_config}): seed {seed}, {kills} kills, "
              f"{len(ledger.acked)} events in "
              f"{ledger.answers} answers, {ledger.unknown} retried by the senders, {redelivered} deliveries "
              f"repeated (claims held at the kills: {held}), {events} events checked")


def same_event_at_once(instances: list[Instance], ledger: Ledger) -> None:
    """One MetaCopier event posted to both instances at the same moment: stored once (and
    entered in the senders' ledger, which the final checks read)."""
    def post(instance: Instance, body: bytes) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{instance.port}/hooks/metacopier", content=body,
                          headers=mc_sign(body, MC_SECRET), timeout=10)

    for n in range(10):
        body = orjson.dumps({"type": "position.opened", "accountId": "a", "position": {"id": f"twice-{n}"}})
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(post, instances, [body, body]))
        assert [r.status_code for r in replies] == [200, 200]
        outcomes = [r.json()["events"][0] for r in replies]
        assert sorted(o["status"] for o in outcomes) == ["duplicate", "stored"], outcomes
        assert outcomes[0]["id"] == outcomes[1]["id"]
        ledger.generated.add(outcomes[0]["dedup_key"])
        ledger.acked[outcomes[0]["dedup_key"]] = outcomes[0]["id"]


def token_from_one_works_on_the_other(instances: list[Instance]) -> None:
    """The signing key lives in the database: a token from one instance is good on the other."""
    a, b = (f"http://127.0.0.1:{i.port}" for i in instances)
    granted = httpx.post(f"{a}/oauth/token", data={"grant_type": "client_credentials", "client_id": "desk",
                                                   "client_secret": "desk-secret-0123456789abcdef0123"})
    assert granted.status_code == 200, granted.text
    token = granted.json()["access_token"]
    listed = httpx.get(f"{b}/api/v1/events?limit=1", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200, listed.text


def local_cluster(url: str) -> tuple[str, str] | None:
    """(version, name) of the Debian cluster serving `url` on this machine, if this process may
    restart it (root, pg_ctlcluster); else None."""
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None or "127.0.0.1" not in url:
        return None
    port = url.split("127.0.0.1:", 1)[1].split("/", 1)[0]
    for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == port:
            return version, name
    return None


def test_a_database_restart_gets_503_meanwhile_and_recovers_by_itself(tmp_path: Path) -> None:
    """PostgreSQL restarts under load: the gateway answers 503 `store_unavailable` while it is
    away, never a 2xx for an event it did not store, and takes events again once it is back,
    without a restart of its own."""
    with postgres_schema() as url:
        cluster = local_cluster(url)
        if cluster is None:
            pytest.skip("restarting PostgreSQL needs root and the local Debian cluster (scripts/postgres)")
        config = tmp_path / "gateway.toml"
        config.write_text(config_text(tmp_path, store=f'url = "{url}"'))
        gateway = Instance(tmp_path, config, "gw")
        gateway.start()
        acked: dict[str, int] = {}
        statuses: list[int] = []
        stop = threading.Event()

        def send() -> None:
            n = 0
            with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=20) as http:
                while not stop.is_set():
                    n += 1
                    body = orjson.dumps({"type": "position.opened", "accountId": "a", "position": {"id": f"r-{n}"}})
                    try:
                        reply = http.post("/hooks/metacopier", content=body, headers=mc_sign(body, MC_SECRET))
                    except httpx.HTTPError:
                        statuses.append(-1)
                        continue
                    statuses.append(reply.status_code)
                    if reply.status_code == 200:
                        outcome = reply.json()["events"][0]
                        acked[outcome["dedup_key"]] = outcome["id"]
                    else:
                        assert reply.status_code == 503 and reply.json()["code"] == "store_unavailable", reply.text
                    time.sleep(0.005)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            wait_for(lambda: statuses.count(200) >= 50, 30, "traffic before the restart")
            subprocess.run(["pg_ctlcluster", *cluster, "restart"], check=True, timeout=120)
            restarted = len(statuses)
            wait_for(lambda: statuses[restarted:].count(200) >= 50, 60, "traffic after the restart",
                     seen=lambda: gateway.log.read_text()[-2000:])
        finally:
            stop.set()
            sender.join(timeout=30)
        assert gateway.proc is not None and gateway.proc.poll() is None  # never restarted
        assert gateway.stop() in (0, -signal.SIGTERM)
        stored = {e.dedup_key: e.id for e in store_reads.events(load_config(config))}
        assert {k: stored.get(k) for k in acked} == acked  # every 200 was stored, under its id
        print(f"\ndatabase restart: {statuses.count(200)} answered 200, {statuses.count(503)} 503, "
              f"{statuses.count(-1)} without an answer")
