"""The gateway's benchmark: one command, one machine, every figure docs/benchmarks.md reports.

    .venv/bin/python bench/run.py            # full run (about 12 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # smoke run (seconds), as the test suite does

Runs three targets side by side, each fresh for every run, on 127.0.0.1:
- bare: a bare Starlette endpoint (bench/bare_app.py), the ceiling for this stack;
- minimal: the minimal durable pipeline (bench/minimal_app.py): verify, parse, dedup key, one
  writer thread group-committing with synchronous=FULL, answer after the commit. The
  realistic ceiling for anything that keeps the gateway's core guarantee;
- gateway: the gateway with its default durable settings (synchronous=FULL).
Drives each with wrk (Debian package) replaying pre-signed request sets and reports the
gateway's requests/s as a ratio to both; then measures fan-out lag of a jsonl plugin at a fixed
rate, the floors of the gateway's own parts for 500-event batches, and listing 100 events from
a store of 1,000,000. Writes results.json and chart.png to --out.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx
import orjson

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
MC_SECRET = "bench-metacopier-secret-0123456789abcdef"
PS_SECRET = "whsec_bench_pipsync_secret"
TR_KEY = "bench-tradrapi-key-0123456789"
CLIENT_SECRET = "bench-client-secret-0123456789"
KINDS = ("bare", "minimal", "gateway")
PG_KIND = "gateway-pg"  # the gateway on PostgreSQL (--store): a fresh schema for every run
WORKLOADS = ("metacopier", "pipsync", "tradrapi-500", "mixed-10pct-dup", "bad-signature")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL)
        return shutil.which("wrk") or "wrk"
    raise click.ClickException("wrk is needed: apt-get install wrk")


def pg_sql(url: str, statement: str) -> Any:
    """One statement's value on a connection of its own."""
    import asyncpg

    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    return asyncio.run(run())


def fresh_schema(server: str) -> str:
    """A new, empty schema on `server`; the URL that names it."""
    schema = f"bench_{int(time.time() * 1000)}_{os.getpid()}"
    pg_sql(server, f"CREATE SCHEMA {schema}")
    return f"{server}{'&' if '?' in server else '?'}search_path={schema}"


def gateway_config(folder: Path, port: int, plugins: str = "", store: str = 'path = "gateway.db"') -> Path:
    path = folder / "gateway.toml"
    # wrk opens every connection from one address, and a client may hold half of a worker's
    # share of max_in_flight: 1024 lets 128 connections through even when the kernel gives
    # most of them to one of two workers (with one worker, 256 already does).
    path.write_text(f"""
[server]
port = {port}
max_in_flight = 1024
[store]
{store}
[[sources]]
name = "metacopier"
scheme = "metacopier"
secret = "{MC_SECRET}"
[[sources]]
name = "pipsync"
scheme = "pipsync"
secret = "{PS_SECRET}"
[[sources]]
name = "tradrapi"
scheme = "tradrapi"
secret = "{TR_KEY}"
[[clients]]
id = "bench"
secret = "{CLIENT_SECRET}"
{plugins}
""")
    return path


class Target:
    """A server process on 127.0.0.1, started fresh and stopped after each run."""

    def __init__(self, kind: str, folder: Path, plugins: str = "", workers: int = 1,
                 store_url: str | None = None) -> None:
        """`workers` > 1: uvicorn's own supervisor for bare and minimal, `gateway run
        --workers` for the gateway; each worker process is a full copy of the target.
        `store_url`: the gateway's PostgreSQL store (kind PG_KIND)."""
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        env = None
        if kind in ("bare", "minimal"):
            cmd = [PYTHON, "-m", "uvicorn", f"{kind}_app:app", "--port", str(self.port), "--log-level", "warning",
                   "--no-access-log", "--app-dir", str(HERE), "--workers", str(workers)]
            env = {**os.environ, "MINIMAL_DB": str(folder / "minimal.db")}
        else:
            store = f'url = "{store_url}"' if store_url else 'path = "gateway.db"'
            cmd = [PYTHON, "-m", "gateway", "run", "--config", str(gateway_config(folder, self.port, plugins, store)),
                   "--log-format", "json", "--workers", str(workers)]
        self.log = (folder / f"{kind}.log").open("wb")
        self.proc = subprocess.Popen(cmd, cwd=folder, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while not self._answers() or (workers > 1 and not self._all_serving(kind)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (folder / f"{kind}.log").read_text()[-500:]
                raise click.ClickException(f"{kind} did not start: {log}") from None
            time.sleep(0.05)

    def _all_serving(self, kind: str) -> bool:
        """Every worker serves: the gateway's supervisor says so; uvicorn's says nothing at
        log level warning, so its workers get a second once they are all running."""
        if kind.startswith("gateway"):
            return b"workers serving" in (self.folder / f"{kind}.log").read_bytes()
        time.sleep(1.0)
        return True

    def _answers(self) -> bool:
        """Whether an HTTP request gets an answer (a supervisor's socket accepts before its
        workers serve)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                return conn.recv(16).startswith(b"HTTP/")
        except OSError:
            return False

    def processes(self) -> list[int]:
        """The target's processes: the server and, under a supervisor, its workers (Linux /proc)."""
        found, queue = [], [self.proc.pid]
        while queue:
            pid = queue.pop()
            found.append(pid)
            try:
                queue += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                continue
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every live process of the target."""
        ticks = 0
        for pid in self.processes():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """The sum of the processes' peak resident sizes."""
        total = 0.0
        for pid in self.processes():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            total += sum(int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:"))
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def mc_line(body: bytes, secret: str = MC_SECRET) -> str:
    ts = str(int(time.time() * 1000))
    sig = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {"X-MetaCopier-Timestamp": ts, "X-MetaCopier-Signature": sig, "Content-Type": "application/json"}
    return f"/hooks/metacopier\t{json.dumps(headers, separators=(',', ':'))}\t{body.decode()}\n"


def ps_line(body: bytes) -> str:
    t = str(int(time.time()))
    sig = hmac.new(PS_SECRET.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {"X-PipSync-Signature": f"t={t},v1={sig}", "Content-Type": "application/json"}
    return f"/hooks/pipsync\t{json.dumps(headers, separators=(',', ':'))}\t{body.decode()}\n"


def request_file(workload: str, folder: Path, count: int) -> Path:
    """Signed just before use: timestamps stay inside the default 300 s tolerance."""
    path = folder / f"{workload}.tsv"
    run = time.time_ns()
    with path.open("w") as fh:
        for i in range(count):
            if workload == "pipsync":
                body = orjson.dumps({"id": f"evt_{run}_{i}", "type": "trade.opened",
                                     "data": {"position_id": f"{run}-{i}", "symbol": "EURUSD", "lots": 0.5}})
                fh.write(ps_line(body))
                continue
            position = f"{run}-{i}"
            if workload == "mixed-10pct-dup" and i % 10 == 9:
                position = f"{run}-{i - 5}"  # a sender's retry of an event sent just before
            body = orjson.dumps({"type": "position.opened", "accountId": "acc-1",
                                 "position": {"id": position, "symbol": "EURUSD", "volume": 0.5}})
            fh.write(mc_line(body, "wrong-secret-for-the-flood-000000000000" if workload == "bad-signature"
                             else MC_SECRET))
    return path


def wrk(binary: str, port: int, connections: int, seconds: float, args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
         "-s", str(HERE / "requests.lua"), f"http://127.0.0.1:{port}", "--", *args],
        capture_output=True, text=True, timeout=seconds + 120)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise click.ClickException(f"wrk failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    data: dict[str, Any] = json.loads(line[6:])
    seconds_run = data["duration_us"] / 1e6
    data["rps"] = data["requests"] / seconds_run
    return data


def load_run(binary: str, kind: str, workload: str, connections: int, seconds: float, folder: Path,
             requests_file: Path | None, workers: int = 1, pg_server: str | None = None) -> dict[str, Any]:
    store_url = fresh_schema(pg_server) if kind == PG_KIND and pg_server else None
    target = Target(kind, folder / f"{kind}-{workload}-{connections}-w{workers}", workers=workers,
                    store_url=store_url)
    try:
        args = ["tradrapi", hashlib.sha1(TR_KEY.encode()).hexdigest(), "500"] if workload == "tradrapi-500" \
            else ["file", str(requests_file)]
        cpu = target.cpu_seconds()
        result = wrk(binary, target.port, connections, seconds, args)
        result["cpu_s_per_1k_requests"] = (target.cpu_seconds() - cpu) / max(1, result["requests"]) * 1000
        result["peak_rss_mb"] = target.peak_rss_mb()
        result["workers"] = workers
        if kind == "gateway":
            db = target.folder / "gateway.db"
            with sqlite3.connect(db) as conn:
                result["events_stored"] = conn.execute("SELECT count(*) FROM events").fetchone()[0]
                result["rejections_kept"] = conn.execute("SELECT count(*) FROM rejections").fetchone()[0]
        elif kind == "minimal":
            with sqlite3.connect(target.folder / "minimal.db") as conn:
                result["events_stored"] = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        elif store_url is not None:
            result["events_stored"] = pg_sql(store_url, "SELECT count(*) FROM events")
            result["rejections_kept"] = pg_sql(store_url, "SELECT count(*) FROM rejections")
    finally:
        target.stop()
        if store_url is not None:
            pg_sql(store_url.split("?")[0], f"DROP SCHEMA {store_url.rsplit('=', 1)[1]} CASCADE")
    per_request = 500 if workload == "tradrapi-500" else 1
    result["events_per_s"] = result["rps"] * per_request
    return result


def opened(run: int, n: int) -> dict[str, Any]:
    return {"eventType": "open_position", "brandId": 1, "serverId": 2, "platform": "MT5",
            "payload": {"id": f"{run}-{n}", "symbol": "EURUSD"}}


def opened_then_closed(run: int, n: int) -> dict[str, Any]:
    """Positions opened and closed in turn, as the ledger sees them: every event folds a position."""
    position = f"{run}-{n // 2}"
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if n % 2 == 0:
        return {"eventType": "open_position", "brandId": 1, "serverId": 2, "platform": "MT5", "accountId": 7,
                "payload": {"id": position, "symbol": "EURUSD", "type": "BUY", "lots": 1, "openedAt": at}}
    return {"eventType": "close_position", "brandId": 1, "serverId": 2, "platform": "MT5", "accountId": 7,
            "payload": {"id": position, "symbol": "EURUSD", "type": "BUY", "lots": 1, "closedAt": at}}


async def paced(port: int, rate: int, seconds: float, batch: int,
                make: Callable[[int, int], dict[str, Any]] = opened) -> int:
    """Send `rate` events/s as TradrAPI batches of `batch`, on a fixed schedule."""
    header = {"x-webhook-secret": hashlib.sha1(TR_KEY.encode()).hexdigest()}
    sent = 0
    run = time.time_ns()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        start = time.monotonic()
        tasks = []
        while time.monotonic() - start < seconds:
            events = [make(run, sent + k) for k in range(batch)]
            tasks.append(asyncio.create_task(client.post("/hooks/tradrapi", content=orjson.dumps(
                {"payload": events, "count": batch}), headers=header)))
            sent += batch
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
        for response in await asyncio.gather(*tasks):
            assert response.status_code == 200, response.text
    return sent


def histogram_quantile(text: str, name: str, q: float) -> float:
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= q * total:
            if bound == float("inf"):
                return previous_bound
            share = (q * total - previous_count) / max(count - previous_count, 1e-9)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return previous_bound


def fanout_lag(folder: Path, rate: int, seconds: float) -> dict[str, Any]:
    plugin = '[[plugins]]\nname = "journal"\nuse = "jsonl"\n[plugins.options]\npath = "journal.jsonl"\n'
    target = Target("gateway", folder / "fanout", plugin)
    try:
        sent = asyncio.run(paced(target.port, rate, seconds, batch=50))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = httpx.get(f"http://127.0.0.1:{target.port}/metrics").text
            delivered = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                            if line.startswith('gateway_deliveries_total{outcome="delivered"'))
            if delivered >= sent:
                break
            time.sleep(0.2)
        lines = sum(1 for _ in (target.folder / "journal.jsonl").open("rb"))
        return {"rate_events_per_s": rate, "seconds": seconds, "events": sent, "journal_lines": lines,
                "p50_s": histogram_quantile(metrics, "gateway_delivery_latency_seconds", 0.5),
                "p99_s": histogram_quantile(metrics, "gateway_delivery_latency_seconds", 0.99),
                "peak_rss_mb": target.peak_rss_mb()}
    finally:
        target.stop()


def ledger_lag(folder: Path, rate: int, seconds: float) -> dict[str, Any]:
    """The position ledger's lag at `rate` events/s: from each event's receipt to its entry in the
    ledger (both times are in the store), once the projector has caught up."""
    target = Target("gateway", folder / "ledger")
    try:
        sent = asyncio.run(paced(target.port, rate, seconds, batch=50, make=opened_then_closed))
        store = target.folder / "gateway.db"
        deadline = time.monotonic() + 60
        with sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True) as db:
            while time.monotonic() < deadline:
                checkpoint, latest = db.execute(
                    "SELECT checkpoint, (SELECT max(id) FROM events) FROM ledger_state").fetchone()
                if checkpoint >= latest:
                    break
                time.sleep(0.1)
            lags = sorted(row[0] / 1e6 for row in db.execute(
                "SELECT l.projected_at - e.received_at FROM ledger_entries l JOIN events e ON e.id = l.event_id"))
            positions = db.execute("SELECT count(*) FROM positions WHERE state = 'closed'").fetchone()[0]
        return {"rate_events_per_s": rate, "seconds": seconds, "events": sent, "entries": len(lags),
                "closed_positions": positions, "p50_s": lags[len(lags) // 2], "p99_s": lags[int(len(lags) * 0.99)],
                "max_s": lags[-1], "peak_rss_mb": target.peak_rss_mb()}
    finally:
        target.stop()


def listing(folder: Path, events: int, samples: int) -> dict[str, Any]:
    """Time GET /api/v1/events?limit=100 against a store of `events` events."""
    from gateway.config import StoreConfig
    from gateway.store import open_store

    target_folder = folder / "listing"
    target_folder.mkdir(parents=True, exist_ok=True)
    db = target_folder / "gateway.db"

    async def create() -> None:
        store = open_store(StoreConfig(path=db))
        await store.open()
        await store.close()

    asyncio.run(create())
    now = int(time.time() * 1e6)
    body = b'{"type":"position.opened","accountId":"acc-1","position":{"id":"1","symbol":"EURUSD"}}'
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO receipts (id, request_id, source, received_at, remote_addr, attempt, headers,"
                         " body, sent_at, latency_us) VALUES (?,?,?,?,?,?,?,?,?,?)",
                         [(i, f"r{i}", "metacopier", now - i * 1000, "127.0.0.1", 1, b"[]", body, now - i * 1000 - i,
                           1000 + i) for i in range(1, 1001)])
        types = ("position.opened", "position.closed", "history.updated", "trade.opened")
        symbols = ("EURUSD", "XAUUSD", "BTCUSD", "GBPUSD", "USDJPY")
        conn.executemany(
            "INSERT INTO events (id, receipt_id, source, scheme, event_type, entity_id, dedup_key, fingerprint,"
            " status, account, symbol, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", (
                (i, i % 1000 + 1, src, src, types[i % 4], f"position:{i}", f"{src}:{types[i % 4]}:{i}",
                 i.to_bytes(32, "big"), "stored", f"acc-{i % 5000}", symbols[i % 5], now - (events - i) * 1000)
                for i in range(1, events + 1) for src in (("metacopier", "pipsync", "tradrapi")[i % 3],)))
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    target = Target("gateway", target_folder)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{target.port}", timeout=30) as client:
            token = client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "bench",
                                                       "client_secret": CLIENT_SECRET}).json()["access_token"]
            results = {}
            for name, query in (("unfiltered", ""), ("source", "&source=pipsync"), ("type glob", "&type=position.*"),
                                ("symbol", "&symbol=XAUUSD"), ("account", "&account=acc-42"),
                                ("entity", f"&entity=position:{events // 2}")):
                latencies = []
                for _ in range(samples):
                    started = time.perf_counter()
                    r = client.get(f"/api/v1/events?limit=100{query}", headers={"Authorization": f"Bearer {token}"})
                    latencies.append((time.perf_counter() - started) * 1000)
                    assert r.status_code == 200, r.text
                    if not query:
                        assert len(r.json()["events"]) == min(100, events)
                latencies.sort()
                results[name] = {"p50_ms": statistics.median(latencies),
                                 "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}
            overview = {}
            for window in ("15m", "7d"):  # the console's landing tab, every event of the store in its window
                latencies = []
                for _ in range(max(3, samples // 20)):
                    started = time.perf_counter()
                    r = client.get(f"/api/v1/overview?window={window}", headers={"Authorization": f"Bearer {token}"})
                    latencies.append((time.perf_counter() - started) * 1000)
                    assert r.status_code == 200, r.text
                latencies.sort()
                overview[window] = {"p50_ms": statistics.median(latencies), "max_ms": latencies[-1]}
        return {"events": events, "samples": samples, "queries": results, "overview": overview}
    finally:
        target.stop()


def floors(folder: Path, groups: int) -> dict[str, Any]:
    """What the gateway's own parts cost without HTTP, one core each: the bound for batches.

    - verify: the TradrAPI verifier splitting 500-event batches (the event loop's share);
    - store: the writer's transaction (dedup lookup, inserts into every index, COMMIT with
      fsync) for groups of 500 new events on a fresh store (the writer thread's share).
    """
    from gateway.config import parse_config
    from gateway.model import ParsedEvent
    from gateway.schemes import tradrapi
    from gateway.store import Receipt
    from gateway.store.committer import Ingest
    from gateway.store.sqlite._writer import connect, transaction

    config = parse_config({"sources": [{"name": "tradrapi", "scheme": "tradrapi", "secret": TR_KEY}]},
                          origin="bench", base_dir=folder)
    source = config.sources["tradrapi"]
    headers = {"x-webhook-secret": hashlib.sha1(TR_KEY.encode()).hexdigest()}
    bodies = [orjson.dumps({"payload": [
        {"brandId": 1, "serverId": 2, "accountId": k % 97, "eventType": "open_position", "platform": "MT5",
         "payload": {"id": f"floor-{g}-{k}", "symbol": "EURUSD", "lots": 1, "openPrice": 1.0851}}
        for k in range(500)], "count": 500, "attempts": 1}) for g in range(groups)]
    conn = connect(folder / "floor.db", "FULL", 5000)
    loop = asyncio.new_event_loop()
    verify_s = store_s = 0.0
    try:
        for g, body in enumerate(bodies):  # one batch at a time, as the gateway holds them
            started = time.perf_counter()
            events: tuple[ParsedEvent, ...] = tradrapi.verify(body, headers, time.time(), source).events
            verify_s += time.perf_counter() - started
            receipt = Receipt(request_id=f"floor-{g}", source="tradrapi", scheme="tradrapi", received_at=time.time(),
                              remote_addr="127.0.0.1", attempt=1, headers=[], body=body)
            started = time.perf_counter()
            transaction(conn, [Ingest(receipt, events, None, loop.create_future())])
            store_s += time.perf_counter() - started
    finally:
        conn.close()
        loop.close()
    events_total = groups * 500
    return {"events": events_total, "verify_events_per_s": events_total / verify_s,
            "store_events_per_s": events_total / store_s,
            "serial_events_per_s": events_total / (verify_s + store_s)}


def summarise(runs: list[dict[str, Any]]) -> None:
    """Add each run's ratios to the other targets of its (workload, connections, workers), and
    print them; with several worker counts, also the gateway's CPU per request against one worker."""
    def key(run: dict[str, Any], kind: str, workers: int | None = None) -> tuple[str, str, int, int]:
        return kind, run["workload"], run["connections"], run.get("workers", 1) if workers is None else workers

    by = {key(r, r["kind"]): r for r in runs}
    click.echo("workload         conns workers  minimal/bare  gateway/bare  gateway/minimal  p99 gateway/minimal  "
               "gateway CPU s/1k req")
    for run in runs:
        if run["kind"] != "bare":
            run["ratio_to_bare"] = run["rps"] / by[key(run, "bare")]["rps"]
        if run["kind"] == PG_KIND:
            run["ratio_to_sqlite"] = run["events_per_s"] / by[key(run, "gateway")]["events_per_s"]
            click.echo(f"{run['workload']:16} {run['connections']:5} {run.get('workers', 1):7}  gateway on "
                       f"PostgreSQL / on SQLite: {run['ratio_to_sqlite']:.2f} (events/s), p99 "
                       f"{run['p99_us'] / 1000:.2f} ms vs {by[key(run, 'gateway')]['p99_us'] / 1000:.2f} ms")
    for run in runs:
        if run["kind"] == "gateway":
            minimal = by[key(run, "minimal")]
            run["ratio_to_minimal"] = run["rps"] / minimal["rps"]
            run["p99_ratio_to_minimal"] = run["p99_us"] / max(1, minimal["p99_us"])
            one = by.get(key(run, "gateway", 1))
            if one is not None and run.get("workers", 1) > 1:
                run["cpu_ratio_to_one_worker"] = run["cpu_s_per_1k_requests"] / one["cpu_s_per_1k_requests"]
                run["rps_ratio_to_one_worker"] = run["rps"] / one["rps"]
            click.echo(f"{run['workload']:16} {run['connections']:5} {run.get('workers', 1):7}  "
                       f"{minimal['ratio_to_bare']:12.2f}  {run['ratio_to_bare']:12.2f}  "
                       f"{run['ratio_to_minimal']:15.2f}  {run['p99_ratio_to_minimal']:19.2f}  "
                       f"{run['cpu_s_per_1k_requests']:8.3f}"
                       + (f" (x{run['cpu_ratio_to_one_worker']:.2f} of 1 worker)" if "cpu_ratio_to_one_worker" in run
                          else ""))


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["load"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8))
    workloads = sorted({r["workload"] for r in runs}, key=WORKLOADS.index)
    counts = sorted({r.get("workers", 1) for r in runs})
    for workload in workloads:
        for kind, style in (("gateway", "-o"), ("minimal", ":s"), ("bare", "--x")):
            for workers in counts:
                points = sorted(((r["connections"], r) for r in runs if r["workload"] == workload
                                 and r["kind"] == kind and r.get("workers", 1) == workers), key=lambda p: p[0])
                if not points:
                    continue
                xs = [c for c, _ in points]
                label = f"{kind} {workload}" + (f", {workers} workers" if len(counts) > 1 else "")
                top.plot(xs, [r["events_per_s"] for _, r in points], style, label=label)
                if kind != "bare":
                    bottom.plot(xs, [r["p99_us"] / 1000 for _, r in points], style, label=label)
    for axis, label in ((top, "events/s"), (bottom, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("connections")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    top.set_yscale("log")
    bottom.set_yscale("log")
    fig.suptitle(f"Gateway vs the minimal durable pipeline and bare Starlette, {results['machine']['cores']} cores "
                 f"({results['started']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=HERE / "results", show_default=True)
@click.option("--quick", is_flag=True, help="A smoke run: tiny load, seconds.")
@click.option("--seconds", type=float, default=8.0, show_default=True, help="Per load run.")
@click.option("--connections", default="1,8,32,128", show_default=True)
@click.option("--workloads", default=",".join(WORKLOADS), show_default=True)
@click.option("--workers", "worker_counts", default="1", show_default=True,
              help="Worker processes per target, a list: e.g. 1,2 runs every load with 1 and with 2.")
@click.option("--store", "pg_server", metavar="postgresql://...",
              help="Also run the gateway on this PostgreSQL server (target gateway-pg; a fresh schema per run), "
                   "side by side with the SQLite store.")
def main(out: Path, quick: bool, seconds: float, connections: str, workloads: str, worker_counts: str,
         pg_server: str | None) -> None:
    """Benchmark the gateway against a bare Starlette app and the minimal durable pipeline."""
    binary = ensure_wrk()
    levels = [1, 8] if quick else [int(c) for c in connections.split(",")]
    seconds = 1.0 if quick else seconds
    chosen = [w for w in workloads.split(",") if w in WORKLOADS]
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": quick,
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                    "wrk": subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.split("\n")[0]},
        "load": [],
    }
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        folder = Path(tmp)
        for workload in chosen:
            count = 2000 if quick else 150_000
            requests_file = None if workload == "tradrapi-500" else request_file(workload, folder, count)
            for level in levels:
                for workers in (int(w) for w in worker_counts.split(",")):
                    for kind in (*KINDS, PG_KIND) if pg_server else KINDS:
                        run = load_run(binary, kind, workload, level, seconds, folder, requests_file, workers,
                                       pg_server)
                        run.update(kind=kind, workload=workload, connections=level)
                        results["load"].append(run)
                        click.echo(f"{workload:16} c={level:<3} w={workers} {kind:7} {run['rps']:9.0f} req/s "
                                   f"{run['events_per_s']:9.0f} ev/s  p50 {run['p50_us'] / 1000:6.2f} ms  "
                                   f"p99 {run['p99_us'] / 1000:6.2f} ms  p99.9 {run['p999_us'] / 1000:6.2f} ms  "
                                   f"cpu {run['cpu_s_per_1k_requests']:.3f} s/1k  rss {run['peak_rss_mb']:5.0f} MB  "
                                   f"non2xx {run['non2xx']}")
        summarise(results["load"])
        results["fanout"] = fanout_lag(folder, rate=500 if quick else 5000, seconds=1 if quick else 10)
        click.echo(f"fan-out lag at {results['fanout']['rate_events_per_s']} ev/s: "
                   f"p50 {results['fanout']['p50_s'] * 1000:.1f} ms, p99 {results['fanout']['p99_s'] * 1000:.1f} ms")
        results["ledger"] = ledger_lag(folder, rate=500 if quick else 5000, seconds=1 if quick else 10)
        lag = results["ledger"]
        click.echo(f"ledger lag at {lag['rate_events_per_s']} ev/s ({lag['entries']} entries, "
                   f"{lag['closed_positions']} positions closed): p50 {lag['p50_s'] * 1000:.1f} ms, "
                   f"p99 {lag['p99_s'] * 1000:.1f} ms, max {lag['max_s'] * 1000:.1f} ms")
        results["floors"] = floors(folder, groups=4 if quick else 200)
        f = results["floors"]
        click.echo(f"floors for 500-event batches, no HTTP: verify {f['verify_events_per_s']:,.0f} ev/s, "
                   f"store {f['store_events_per_s']:,.0f} ev/s, both in series {f['serial_events_per_s']:,.0f} ev/s")
        results["listing"] = listing(folder, events=10_000 if quick else 1_000_000, samples=20 if quick else 200)
        for name, figures in results["listing"]["queries"].items():
            click.echo(f"list 100 of {results['listing']['events']} ({name}): p50 {figures['p50_ms']:.2f} ms "
                       f"p99 {figures['p99_ms']:.2f} ms")
        for window, figures in results["listing"]["overview"].items():
            click.echo(f"overview of {results['listing']['events']} events, window {window}: "
                       f"p50 {figures['p50_ms']:.0f} ms, max {figures['max_ms']:.0f} ms")
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    chart(results, out / "chart.png")
    click.echo(f"wrote {out / 'results.json'} and {out / 'chart.png'}")


if __name__ == "__main__":
    main()
