"""`gateway run --workers N`: real processes, real signals, 127.0.0.1 only.

- workers SIGKILLed under concurrent retrying senders: nothing acknowledged is lost or stored
  twice, every plugin gets every event in order per entity, repeats are bounded by the
  deliveries claimed at the kills, and the supervisor restarts the workers;
- SIGHUP under steady load replaces every worker with zero failed requests, counted by the
  clients; a config made invalid on disk is refused and the workers carry on;
- SIGTERM, and Ctrl-C sent to the whole process group, drain every worker; a worker whose
  event loop stops is killed and replaced; a single process ignores SIGHUP;
- /metrics from any worker, and `[metrics] listen` served by the supervisor alone, count
  every worker's traffic exactly, a killed worker's included;
- two separate `gateway run` processes on one store never deliver an event twice;
- a socket passed as systemd does (LISTEN_FDS) is used, and connections queued while no
  process runs are answered by the next one.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.ledger_process import PROCESS_NAME
from tests import store_reads
from tests.conftest import GATEWAY, MC_SECRET, ROOT, free_port, mc_sign, run_gateway, serving, wait_for
from tests.traffic import Ledger, Sender, check_store, config_text, pending_deliveries, read_only


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (spawned interpreters; not multiprocessing's
    resource tracker)."""
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return []
    pids = []
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline and _comm(child) != PROCESS_NAME:  # not the ledger's projector
            pids.append(int(child))
    return pids


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def ledger_pids(supervisor: int) -> list[int]:
    """The supervisor's ledger projector process (gateway/ledger_process.py)."""
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return []
    return [int(child) for child in children if _comm(child) == PROCESS_NAME]


class Supervised:
    """`gateway run --workers N` as a child process, in its own process group."""

    def __init__(self, folder: Path, workers: int, server: str = "", extra: str = "") -> None:
        self.folder = folder
        self.count = workers
        self.port = free_port()
        self.config = folder / "gateway.toml"
        self.config.write_text(config_text(folder, server) + extra)
        self.log = folder / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> None:
        self.proc = run_gateway(["run", "--config", str(self.config), "--port", str(self.port), "--workers",
                                 str(self.count), "--log-format", "text", *args],
                                cwd=self.folder, port=self.port, log=self.log, start_new_session=True)
        wait_for(lambda: len(self.workers()) == self.count and self.text().count(" serving") >= self.count, 60,
                 "every worker to serve", seen=self.tail)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def workers(self) -> list[int]:
        return worker_pids(self.pid)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return "\n".join(self.text().splitlines()[-40:])

    def stop(self, sig: int = signal.SIGTERM, group: bool = False) -> int:
        assert self.proc is not None
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def supervised(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[Supervised] = []

    def make(workers: int, server: str = "", extra: str = "") -> Supervised:
        gw = Supervised(tmp_path, workers, server, extra)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.ensure_stopped()


def claims_held(db: Path) -> int:
    """Deliveries pending under a lease that still holds: what a killed worker may have been
    running, so what may be delivered again."""
    now_us = int(time.time() * 1_000_000)
    with read_only(db) as conn:
        row = conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending' AND claim_id IS NOT NULL "
                           "AND lease_until > ?", (now_us,)).fetchone()
    return int(row[0])


def test_killed_workers_lose_nothing_and_are_restarted(supervised, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    gw = supervised(3)
    gw.start()
    ledger, stop = Ledger(), threading.Event()
    threads = [Sender(i, gw.port, seed, ledger, stop, budget=3000, think=0.01) for i in range(4)]
    for thread in threads:
        thread.start()
    kills, held = 0, 0
    try:
        for _ in range(6):
            before = ledger.answers
            wait_for(lambda: ledger.answers >= before + 20, 30, "traffic")  # noqa: B023
            wait_for(lambda: ledger.in_flight > 0, 5, "a request in flight", interval=0.01)
            victim = rng.choice(gw.workers())
            os.kill(victim, signal.SIGKILL)
            kills += 1
            held += claims_held(tmp_path / "gateway.db")
            wait_for(lambda: victim not in gw.workers() and len(gw.workers()) == 3, 30,  # noqa: B023
                     "the supervisor to replace the killed worker", seen=gw.tail)
        before = ledger.answers
        wait_for(lambda: ledger.answers >= before + 20, 30, "traffic after the last kill")
    except BaseException:
        ledger.aborted = True
        raise
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not ledger.errors, f"seed {seed}: " + "\n".join(ledger.errors[:20])
    wait_for(lambda: pending_deliveries(tmp_path) == 0, 120, "fan-out to drain")
    workers = gw.workers()
    assert gw.stop() == 0, gw.tail()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived the supervisor"
    log = gw.text()
    assert log.count("was killed by SIGKILL; starting another") == kills, log
    assert log.count("Application shutdown complete") >= 3  # the last three drained
    events, redelivered = check_store(tmp_path, ledger)
    assert redelivered <= held, f"{redelivered} deliveries repeated, only {held} were claimed at the kills"
    print(f"\nworkers killed: seed {seed}, {kills} kills, {len(ledger.acked)} events in {ledger.answers} answers, "
          f"{ledger.unknown} retried, {redelivered} deliveries repeated (claims held at the kills: {held}), "
          f"{events} events checked")


def test_a_hung_worker_is_killed_and_replaced(supervised) -> None:  # type: ignore[no-untyped-def]
    """A worker whose event loop stops (here: SIGSTOP) answers nothing while it holds its share
    of the connections: past HEARTBEAT_TIMEOUT the supervisor kills it and starts another."""
    from gateway.supervisor import HEARTBEAT_TIMEOUT

    gw = supervised(2)
    gw.start()
    frozen = gw.workers()[0]
    os.kill(frozen, signal.SIGSTOP)
    stopped = time.monotonic()
    wait_for(lambda: frozen not in gw.workers() and len(gw.workers()) == 2, HEARTBEAT_TIMEOUT + 30,
             "the frozen worker to be replaced", seen=gw.tail)
    assert time.monotonic() - stopped >= HEARTBEAT_TIMEOUT - 1
    assert f"worker pid {frozen}: its event loop has not run for" in gw.text()
    assert f"worker pid {frozen} was killed by SIGKILL; starting another" in gw.text()
    assert serving(gw.port)


@dataclass
class Load:
    """Clients posting new MetaCopier events on keep-alive connections, counting every outcome."""

    port: int
    clients: int = 4
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in self.threads:
            thread.start()
        return self

    def _client(self, index: int) -> None:
        n = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=20) as http:
            while not self.stop.is_set():
                n += 1
                body = orjson.dumps({"type": "position.opened", "accountId": f"acc-{index}",
                                     "position": {"id": f"{index}-{n}", "symbol": "EURUSD", "volume": 0.1}})
                try:
                    reply = http.post("/hooks/metacopier", content=body, headers=mc_sign(body, MC_SECRET))
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self.lock:
                    if reply.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{reply.status_code} {reply.text[:200]}")
                time.sleep(0.002)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_sighup_replaces_every_worker_refusing_nothing(supervised, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = supervised(2)
    gw.start()
    load = Load(gw.port).start()
    try:
        for round_ in (1, 2):
            old = set(gw.workers())
            before = load.ok
            wait_for(lambda: load.ok >= before + 50, 30, "load before the reload")  # noqa: B023
            os.kill(gw.pid, signal.SIGHUP)
            wait_for(lambda: gw.text().count("SIGHUP: done") == round_ and not old & set(gw.workers())  # noqa: B023
                     and len(gw.workers()) == 2, 60, "every worker replaced", seen=gw.tail)
            before = load.ok
            wait_for(lambda: load.ok >= before + 50, 30, "load after the reload")  # noqa: B023
    finally:
        load.finish()
    assert load.failures == [], f"{len(load.failures)} failed of {load.ok + len(load.failures)}: {load.failures[:5]}"
    assert gw.stop() == 0, gw.tail()
    stored = store_reads.events(config_of(tmp_path))
    assert len(stored) == load.ok  # every acknowledged event, once
    print(f"\nrolling restarts: 2, {load.ok} requests answered 200, none failed or refused")


def config_of(folder: Path):  # type: ignore[no-untyped-def]
    from gateway.config import load_config

    return load_config(folder / "gateway.toml")


def test_an_invalid_config_on_sighup_keeps_the_workers(supervised, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = supervised(2)
    gw.start()
    workers = set(gw.workers())
    good = gw.config.read_text()
    gw.config.write_text(good.replace("[server]", "[server]\nmax_in_flight = -5", 1))
    os.kill(gw.pid, signal.SIGHUP)
    wait_for(lambda: "the config on disk is not valid" in gw.text(), 20, "the refusal", seen=gw.tail)
    assert "server.max_in_flight" in gw.text()
    assert set(gw.workers()) == workers and serving(gw.port)
    # A good edit then takes effect: the count follows [server] workers (no --workers given... here
    # it was given, so it stays 2 and only the workers are replaced).
    gw.config.write_text(good)
    os.kill(gw.pid, signal.SIGHUP)
    wait_for(lambda: "SIGHUP: done" in gw.text() and not workers & set(gw.workers()), 60, "the replacement",
             seen=gw.tail)
    # Ctrl-C in a terminal reaches the whole process group: one graceful drain, not a forced exit.
    assert gw.stop(signal.SIGINT, group=True) == 0, gw.tail()
    assert "exiting now" not in gw.text()
    assert gw.text().count("Application shutdown complete") >= 2


def test_workers_follow_the_config_count_on_sighup(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "gateway.toml").write_text(config_text(tmp_path, "workers = 2"))
    log = tmp_path / "gateway.log"
    proc = run_gateway(["run", "--config", str(tmp_path / "gateway.toml"), "--port", str(port), "--log-format",
                        "text"], cwd=tmp_path, port=port, log=log)
    try:
        wait_for(lambda: len(worker_pids(proc.pid)) == 2, 30, "two workers")
        (tmp_path / "gateway.toml").write_text(config_text(tmp_path, "workers = 3"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(worker_pids(proc.pid)) == 3 and "SIGHUP: done" in log.read_text(), 60, "three workers",
                 seen=lambda: log.read_text()[-2000:])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_single_process_logs_and_ignores_sighup(tmp_path: Path) -> None:
    """SIGHUP's default action ends a process: `systemctl reload` must not stop a one-worker gateway."""
    port = free_port()
    (tmp_path / "gateway.toml").write_text(config_text(tmp_path))
    log = tmp_path / "gateway.log"
    proc = run_gateway(["run", "--config", str(tmp_path / "gateway.toml"), "--port", str(port), "--log-format",
                        "text"], cwd=tmp_path, port=port, log=log)
    try:
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "a single process does not reload" in log.read_text(), 10, "the SIGHUP line")
        assert proc.poll() is None and serving(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)


METRIC = re.compile(r'^(gateway_\w+)\{([^}]*)\} ([0-9.e+-]+)$', re.MULTILINE)


def samples(text: str, name: str) -> dict[str, float]:
    """`name`'s samples by their labels, written in name order (the multiprocess collector
    sorts them; a single process keeps the order of definition)."""
    return {",".join(sorted(labels.split(","))): float(value)
            for metric, labels, value in METRIC.findall(text) if metric == name}


def post_known_traffic(port: int, tag: str, count: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for n in range(count):
            # a fresh connection each time, so the kernel spreads them over the workers
            body = orjson.dumps({"type": "position.opened", "accountId": "a",
                                 "position": {"id": f"{tag}-{n}", "symbol": "EURUSD"}})
            assert http.post("/hooks/metacopier", content=body, headers={**mc_sign(body), "Connection": "close"}
                             ).status_code == 200
        bad = http.post("/hooks/metacopier", content=b"{}", headers={"X-MetaCopier-Signature": "sha256=00",
                                                                     "X-MetaCopier-Timestamp": "1"})
        assert bad.status_code == 401


def test_metrics_count_every_worker_exactly(supervised, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = supervised(3)
    gw.start()
    post_known_traffic(gw.port, "a", 60)
    stored = 'event_type="position.opened",source="metacopier",status="stored"'

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{gw.port}/metrics", headers={"Connection": "close"}).text

    for _ in range(6):  # whichever worker answers
        text = scrape()
        assert samples(text, "gateway_events_total")[stored] == 60
        assert samples(text, "gateway_requests_total")['source="metacopier"'] == 61
        assert len(samples(text, "gateway_plugin_health")) == 3 * 3 * 3  # per worker: 3 plugins x 3 states
    # A killed worker's counts stay in the totals; its per-process gauges go.
    victim = gw.workers()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in gw.workers() and len(gw.workers()) == 3 and gw.text().count(" serving") >= 4,
             30, "a replacement", seen=gw.tail)
    post_known_traffic(gw.port, "b", 15)
    text = scrape()
    assert samples(text, "gateway_events_total")[stored] == 75
    assert f'pid="{victim}"' not in text
    # Read at each scrape (a callback gauge would not be exported): one value, the store's.
    assert re.search(r"^gateway_store_size_bytes [1-9][0-9.e+]*$", text, re.MULTILINE), text[-3000:]


def test_metrics_listen_is_served_once_by_the_supervisor(supervised, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    metrics_port = free_port()
    gw = supervised(2, extra=f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    gw.start()
    post_known_traffic(gw.port, "m", 20)
    assert httpx.get(f"http://127.0.0.1:{gw.port}/metrics").status_code == 404
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert samples(text, "gateway_events_total")[
        'event_type="position.opened",source="metacopier",status="stored"'] == 20
    assert "address already in use" not in gw.text().lower()
    owner = listening_pid(metrics_port)
    assert owner == gw.pid, f"port {metrics_port} held by pid {owner}, not the supervisor {gw.pid}"


def listening_pid(port: int) -> int | None:
    """The pid whose socket listens on 127.0.0.1:`port` (Linux /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in {f"socket:[{i}]" for i in inodes}:
                    return int(proc.name)
        except OSError:
            continue
    return None


def test_two_gateways_on_one_store_never_deliver_twice(tmp_path: Path) -> None:
    """Blue/green on one host: two `gateway run` processes, each taking half the traffic."""
    seed = random.randrange(10**6)
    (tmp_path / "gateway.toml").write_text(config_text(tmp_path))
    ports = [free_port(), free_port()]
    procs = [run_gateway(["run", "--config", str(tmp_path / "gateway.toml"), "--port", str(port), "--log-format",
                          "text"], cwd=tmp_path, port=port, log=tmp_path / f"gateway-{port}.log") for port in ports]
    ledger, stop = Ledger(), threading.Event()
    threads = [Sender(i, ports[i % 2], seed, ledger, stop, budget=150, think=0.005) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not ledger.errors, "\n".join(ledger.errors[:20])
        wait_for(lambda: pending_deliveries(tmp_path) == 0, 120, "fan-out to drain")
    finally:
        stop.set()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=60) for proc in procs]
    assert all(code in (0, -signal.SIGTERM) for code in codes)
    events, redelivered = check_store(tmp_path, ledger)
    assert redelivered == 0, f"{redelivered} deliveries repeated by two live processes"
    # Both delivered: they take turns, neither sits idle while the other does all the work.
    journal = [orjson.loads(line)["id"] for line in (tmp_path / "journal.jsonl").read_bytes().splitlines()]
    assert Counter(journal).most_common(1)[0][1] == 1 and len(journal) == events
    print(f"\ntwo gateways: {events} events, each delivered once to each matching plugin")


def test_a_socket_passed_by_systemd_is_used_and_queued_connections_survive_a_restart(tmp_path: Path) -> None:
    """systemd-style socket activation: the test holds the listening socket, as systemd does,
    and passes it as fd 3 with LISTEN_FDS/LISTEN_PID. Requests sent while no gateway runs wait in
    the kernel's queue and are answered by the next one."""
    import socket as socketlib

    listener = socketlib.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    (tmp_path / "gateway.toml").write_text(config_text(tmp_path, "port = 1"))  # never bound: the socket wins
    log = tmp_path / "gateway.log"

    def activate(*extra: str) -> subprocess.Popen[bytes]:
        # As systemd does: the socket becomes fd 3, and LISTEN_PID names the process that execs.
        argv = [GATEWAY, "run", "--config", str(tmp_path / "gateway.toml"), "--log-format", "text", *extra]
        launcher = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ.update(LISTEN_PID=str(os.getpid()), "
                    "LISTEN_FDS='1'); os.execv(sys.argv[2], sys.argv[2:])")
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-c", launcher, str(listener.fileno()), *argv], cwd=tmp_path,
                                    stdout=out, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()],
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
        wait_for(lambda: proc.poll() is None and "Application startup complete" in log.read_text() and serving(port),
                 30, "the activated gateway", seen=lambda: log.read_text()[-2000:])
        return proc

    first = activate()
    answers: list[int] = []
    assert "inherited socket" in log.read_text()
    post_known_traffic(port, "before", 5)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) in (0, -signal.SIGTERM)
    # Nobody serves now: these connect (the kernel queues them) and wait.
    lock = threading.Lock()

    def queued(n: int) -> None:
        body = orjson.dumps({"type": "position.opened", "accountId": "a", "position": {"id": f"q-{n}"}})
        try:
            status = httpx.post(f"http://127.0.0.1:{port}/hooks/metacopier", content=body, headers=mc_sign(body),
                                timeout=60).status_code
        except httpx.HTTPError as exc:
            status = -1
            print(exc)
        with lock:
            answers.append(status)

    waiting = [threading.Thread(target=queued, args=(n,)) for n in range(20)]
    for thread in waiting:
        thread.start()
    time.sleep(1.0)
    assert answers == []  # queued, not refused
    second = activate("--workers", "2")
    try:
        for thread in waiting:
            thread.join(timeout=60)
        assert answers == [200] * 20
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
        listener.close()
    assert len(store_reads.events(config_of(tmp_path))) == 25


def test_one_ledger_projector_per_host_restarted_when_killed(supervised, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The supervisor runs the ledger's projector in one process of its own, not one per worker;
    killed, it is started again and takes its lease back at once; it ends with the supervisor."""
    gw = supervised(2)
    gw.start()

    def positions() -> int:
        with read_only(tmp_path / "gateway.db") as db:
            return int(db.execute("SELECT count(*) FROM positions").fetchone()[0])

    def opened(position: str) -> None:
        body = orjson.dumps({"type": "position.opened", "position": {"id": position, "volume": 1}})
        assert httpx.post(f"http://127.0.0.1:{gw.port}/hooks/metacopier", content=body,
                          headers=mc_sign(body)).status_code == 200

    wait_for(lambda: len(ledger_pids(gw.pid)) == 1, 10, "the ledger projector", seen=gw.tail)
    [first] = ledger_pids(gw.pid)
    opened("before-kill")
    wait_for(lambda: positions() == 1, 5, "the position projected")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: ledger_pids(gw.pid) not in ([], [first]), 10, "another projector", seen=gw.tail)
    opened("after-kill")
    wait_for(lambda: positions() == 2, 5, "the position projected by the new projector")
    [second] = ledger_pids(gw.pid)
    os.kill(gw.pid, signal.SIGHUP)  # a reload: the projector takes the config on disk too
    wait_for(lambda: "SIGHUP: done" in gw.text() and ledger_pids(gw.pid) not in ([], [second]), 60,
             "a new projector after SIGHUP", seen=gw.tail)
    [second] = ledger_pids(gw.pid)
    opened("after-reload")
    wait_for(lambda: positions() == 3, 5, "the position projected after the reload")
    assert gw.stop() == 0, gw.tail()
    assert not Path(f"/proc/{second}").exists(), "the projector outlived the supervisor"
    assert "ledger projector ended (exit -9); starting another" in gw.text()
