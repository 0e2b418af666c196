"""Shared factories: configs, signed requests, the real app served over a socket or run as a
process, and waiting on a condition instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from gateway.app import GatewayApp
from gateway.config import Config, parse_config
from gateway.server import GatewayServer, uvicorn_config

MC_SECRET = "mc-demo-secret-0123456789abcdefghij"
MC_SECRET_NEW = "mc-rotated-secret-abcdefghijklmnopqrstuv"
PS_SECRET = "whsec_pipsync_demo_7Hq2"
PS_SECRET_NEW = "whsec_pipsync_rotated_9Xy"
TR_KEY = "tradrapi-demo-key-0123456789"
TR_KEY_NEW = "tradrapi-rotated-key-abcdefghij"

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = str(Path(sys.executable).parent / "gateway")
T = TypeVar("T")

# Every `gateway` child process runs this checkout's code, as this process does (which imports it
# from the current directory): a virtualenv shared between checkouts has its editable install
# pointing at another one, which a child would otherwise import.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT))])

# Reference bodies from shared/docs/senders.md, byte for byte.
MC_BODY = (
    b'{"type":"position.opened","timestamp":"2026-11-20T10:15:02.331Z","accountId":"6f1c2d7e-5b0a-4c1e-'
    b'9a53-2f7c8f0b9d11","position":{"id":"88412231","symbol":"EURUSD","orderType":"Buy","volume":0.5,'
    b'"openPrice":1.08512,"stopLoss":1.081,"takeProfit":1.092,"openTime":"2026-11-20T10:15:01Z",'
    b'"magicNumber":"7001"}}'
)
PS_BODY = (
    b'{"id":"evt_01JD3W8K2M","type":"trade.opened","created":1763633702,"data":{"trade_id":"tr_9f2c",'
    b'"position_id":"771203","account_id":"acc_12","platform":"ctrader","symbol":"EURUSD","side":"buy",'
    b'"lots":0.5,"price":1.08512,"sl":1.081,"tp":1.092}}'
)
TR_BODY = (
    b'{"payload":[{"brandId":12,"serverId":3,"accountId":99121,"eventType":"open_position","platform":'
    b'"MT5","payload":{"id":5561201,"platformOperationId":"op-1","platformTradeId":"t-1","symbol":'
    b'"EURUSD","openPrice":1.0851,"lots":1,"type":"BUY","balance":10000,"openedAt":"2026-11-20T10:15:'
    b'01.000Z"}}],"count":1,"attempts":1}'
)


def source_table(name: str, scheme: str, **extra: Any) -> dict[str, Any]:
    secrets = {"metacopier": [MC_SECRET, MC_SECRET_NEW], "pipsync": [PS_SECRET, PS_SECRET_NEW],
               "tradrapi": [TR_KEY, TR_KEY_NEW]}[scheme]
    return {"name": name, "scheme": scheme, "secrets": secrets, **extra}


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio only (the gateway is built on it)."""
    return "asyncio"


# --- waiting on a condition -------------------------------------------------------------------


def _timed_out(timeout: float, what: str, seen: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g} s waiting for {what}; last seen: {seen!r}")


def wait_for(check: Callable[[], T], timeout: float = 10.0, what: str = "condition", *,
             seen: Callable[[], object] | None = None, interval: float = 0.02) -> T:
    """Poll `check` until it returns something truthy, and return that. On timeout, fail naming
    `what` was awaited and what was seen: `seen()` if given, else the check's last result."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, seen() if seen else result)
        time.sleep(interval)
    return result


async def wait_for_async(check: Callable[[], T], timeout: float = 10.0, what: str = "condition", *,
                         seen: Callable[[], object] | None = None, interval: float = 0.02) -> T:
    """`wait_for` inside an event loop: polls without blocking the loop."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, seen() if seen else result)
        await asyncio.sleep(interval)
    return result


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Build a Config with one source per scheme (named after it) plus any extra sources, or
    `only` the sources given; other sections (`clients`, `api`, ...) as keywords."""

    def make(*extra_sources: dict[str, Any], server: dict[str, Any] | None = None,
             only: list[dict[str, Any]] | None = None, plugins: list[dict[str, Any]] | None = None,
             **sections: Any) -> Config:
        sources = only if only is not None else [
            source_table("metacopier", "metacopier"),
            source_table("pipsync", "pipsync"),
            source_table("tradrapi", "tradrapi"),
            *extra_sources,
        ]
        data = {"sources": sources, "store": {"path": str(tmp_path / "gateway.db")},
                "server": server or {}, "plugins": plugins or [], **sections}
        return parse_config(data, origin="test.toml", base_dir=tmp_path)

    return make


def mc_sign(body: bytes, secret: str = MC_SECRET, ts_ms: int | None = None) -> dict[str, str]:
    ts = str(int(time.time() * 1000) if ts_ms is None else ts_ms)
    sig = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-MetaCopier-Timestamp": ts, "X-MetaCopier-Signature": sig, "X-MetaCopier-Delivery-Attempt": "1"}


def ps_sign(body: bytes, secret: str = PS_SECRET, t: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if t is None else t)
    sig = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-PipSync-Signature": f"t={ts},v1={sig}"}


def tr_sign(key: str = TR_KEY) -> dict[str, str]:
    return {"x-webhook-secret": hashlib.sha1(key.encode()).hexdigest()}


class RunningGateway:
    """The real ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: GatewayApp) -> None:
        self.app = app
        # the same uvicorn settings and limits as `gateway run`
        config = uvicorn_config(app, app.config.server, host="127.0.0.1", port=0, log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = GatewayServer(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningGateway:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 10, "the gateway to start", interval=0.01)
        if not self.server.started:
            raise RuntimeError("gateway did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(path, content=body, headers=headers or {})

    def flush(self) -> None:
        """Return once every write queued so far is committed (rejections are written after
        their answer): /readyz commits a write through the store's one writer, which commits
        in queue order."""
        r = self.client.get("/readyz")
        assert r.json()["checks"]["store"] == "ok", r.text


def send(gw: RunningGateway, body: bytes | Mapping[str, Any], source: str = "metacopier") -> int:
    """POST `body` (JSON-encoded if not bytes) to a MetaCopier-scheme source, signed; assert it
    is accepted and return the id of its (first) event."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    r = gw.post(f"/hooks/{source}", data, mc_sign(data))
    assert r.status_code == 200, f"/hooks/{source} answered {r.status_code}: {r.text}"
    event_id: int = r.json()["events"][0]["id"]
    return event_id


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningGateway]]:
    """Start the gateway for a config; every server started is stopped at the end."""
    started: list[RunningGateway] = []

    def start(config: Config, **app_options: Any) -> RunningGateway:
        gw = RunningGateway(GatewayApp(config, **app_options)).__enter__()
        started.append(gw)
        return gw

    yield start
    for gw in reversed(started):
        if gw.thread.is_alive():
            gw.__exit__()


@pytest.fixture
def gateway(make_config: Callable[..., Config], serve: Callable[[Config], RunningGateway]) -> RunningGateway:
    """The gateway with one source per scheme, named after the scheme."""
    return serve(make_config())


# --- `gateway run` as a child process ---------------------------------------------------------


POSTGRES_ENV = "GATEWAY_TEST_POSTGRES_URL"


def postgres_url() -> str:
    """The PostgreSQL server the tests use: GATEWAY_TEST_POSTGRES_URL, which scripts/test sets
    from scripts/postgres. Without one the test is skipped, saying how to get one, except under
    CI (set by .ci/run), where a missing server fails it."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    message = (f"no PostgreSQL: set {POSTGRES_ENV}=postgresql://user:password@host/db, or run scripts/test as "
               "root on Debian (scripts/postgres provisions one)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def postgres_sql(url: str, *statements: str) -> list[Any]:
    """Run statements on a connection of their own (from sync code); the last one's rows."""
    import concurrent.futures

    import asyncpg

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            rows: list[Any] = []
            for statement in statements:
                rows = await conn.fetch(statement)
            return rows
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema on the test server, dropped afterwards; yields the URL that names it
    (`?search_path=`, which asyncpg passes on to the server as a setting)."""
    server = postgres_url()
    schema = f"t_{secrets.token_hex(6)}"
    postgres_sql(server, f"CREATE SCHEMA {schema}")
    try:
        yield f"{server}{'&' if '?' in server else '?'}search_path={schema}"
    finally:
        postgres_sql(server, f"DROP SCHEMA {schema} CASCADE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving(port: int) -> bool:
    """Whether a gateway on 127.0.0.1:`port` answers /healthz."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def run_gateway(args: Sequence[str], *, cwd: Path, port: int, log: Path, env: Mapping[str, str] | None = None,
                timeout: float = 30, **popen: Any) -> subprocess.Popen[bytes]:
    """Start `gateway <args>` (tests/ importable, so its plugins load), its output appended to
    `log`; return once it answers /healthz on `port`. If it exits or the deadline passes first,
    kill it and fail with its log."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([GATEWAY, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env=env if env is not None else {**os.environ, "PYTHONPATH": str(ROOT)}, **popen)

    def output() -> str:
        return log.read_text(errors="replace")[-3000:]

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}:\n{output()}")
        return serving(port)

    try:
        wait_for(up, timeout, f"gateway {' '.join(args)} to answer /healthz", seen=output)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def start_gateway(folder: Path, extra: str = "", **server: float) -> tuple[subprocess.Popen[bytes], int]:
    """`gateway run` on a free port with `folder`/gateway.toml: `server` as [server] settings, the
    store in gateway.db, one MetaCopier source and `extra` TOML; its output in run.log."""
    port = free_port()
    settings = "".join(f"{key} = {value}\n" for key, value in server.items())
    (folder / "gateway.toml").write_text(f"""
[server]
port = {port}
{settings}[store]
path = "gateway.db"
[[sources]]
name = "metacopier"
scheme = "metacopier"
secret = "{MC_SECRET}"
{extra}
""")
    proc = run_gateway(["run", "--config", str(folder / "gateway.toml")], cwd=folder, port=port, log=folder / "run.log")
    return proc, port


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds open (Linux /proc): listeners and connections."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes
