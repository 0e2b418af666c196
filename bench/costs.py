"""Where a webhook request's CPU goes: the cost table of docs/benchmarks.md.

    .venv/bin/python bench/costs.py                 # about a minute
    .venv/bin/python bench/costs.py --requests 2000 # a smoke run

Drives pre-signed MetaCopier single-event requests in process (no sockets) through the
gateway's ingest app and its real SQLite store (synchronous=FULL, a fresh file per run), 32 at
a time so that the writer forms groups as it does under load, and reads the CPU time of the
event-loop thread and of the store writer's thread (their own clocks: waiting for the disk
costs neither). Then again with one part switched off at a time. That is an experiment, done
here by patching the objects of this process, never in the gateway: the part's cost is the
difference. The minimal durable pipeline (bench/minimal_app.py) is driven the same way, and
the HTTP server's share (uvicorn's httptools protocol, with and without the gateway's guards)
is measured by feeding a protocol whole requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SECRET = "bench-metacopier-secret-0123456789abcdef"
CONCURRENCY = 32


def requests(count: int) -> list[tuple[list[tuple[bytes, bytes]], bytes]]:
    run = time.time_ns()
    out = []
    for i in range(count):
        body = orjson.dumps({"type": "position.opened", "accountId": "acc-1",
                             "position": {"id": f"{run}-{i}", "symbol": "EURUSD", "volume": 0.5}})
        ts = str(int(time.time() * 1000)).encode()
        sig = hmac.new(SECRET.encode(), ts + b"." + body, hashlib.sha256).hexdigest().encode()
        out.append(([(b"host", b"127.0.0.1:8000"), (b"user-agent", b"MetaCopier-Webhooks/1.0"),
                     (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                     (b"x-metacopier-timestamp", ts), (b"x-metacopier-signature", sig)], body))
    return out


def thread_cpu(name_prefix: str) -> Callable[[], float]:
    """A clock of the CPU time of the (one) thread whose name starts with `name_prefix`."""
    thread = next(t for t in threading.enumerate() if t.name.startswith(name_prefix))
    assert thread.ident is not None
    clock = time.pthread_getcpuclockid(thread.ident)
    return lambda: time.clock_gettime(clock)


async def drive(app: Any, reqs: list[tuple[list[tuple[bytes, bytes]], bytes]], writer: str,
                complete: bool = True) -> tuple[float, float]:
    """(event-loop µs, writer µs) of CPU per request, `CONCURRENCY` requests at a time.
    `complete`: the server marks each body as arrived with its head (as uvicorn does for most)."""
    statuses: list[int] = []

    async def one(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        scope = {"type": "http", "method": "POST", "path": "/hooks/metacopier", "headers": headers,
                 "client": ("127.0.0.1", 50000), "gateway.body_complete": complete}
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)

    writer_cpu = thread_cpu(writer)
    loop0, writer0 = time.thread_time(), writer_cpu()
    for start in range(0, len(reqs), CONCURRENCY):
        await asyncio.gather(*(one(h, b) for h, b in reqs[start:start + CONCURRENCY]))
    loop_s, writer_s = time.thread_time() - loop0, writer_cpu() - writer0
    if statuses.count(200) != len(reqs):
        raise click.ClickException(f"not every request was stored: {sorted(set(statuses))}")
    return loop_s / len(reqs) * 1e6, writer_s / len(reqs) * 1e6


@contextlib.contextmanager
def patched(obj: Any, **attrs: Any) -> Iterator[None]:
    saved = {name: getattr(obj, name) for name in attrs}
    for name, value in attrs.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)


async def _free(size: int) -> int:
    return size


class _NoSecrets:
    def found_in(self, text: str) -> bool:
        return False

    def redact(self, text: str) -> str:
        return text


class _InstantStore:
    """The store's answer without the trip to the writer (the outcomes it would give)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.next_id = 0

    async def ingest(self, receipt: Any, events: Any, routes: Any = None) -> list[Any]:
        from gateway.model import Outcome, dedup_key

        self.next_id += 1
        return [Outcome(self.next_id, "stored", dedup_key(receipt.source, e.event_type, e.named_by)) for e in events]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def verify_cost(reqs: list[Any]) -> float:
    """Event-loop µs per request of the MetaCopier verifier alone (HMAC, parse, identity, fingerprint)."""
    from gateway.config import parse_config
    from gateway.schemes import metacopier

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({"sources": [{"name": "metacopier", "scheme": "metacopier", "secret": SECRET}]},
                              origin="bench", base_dir=Path(tmp))
    source = config.sources["metacopier"]
    prepared = [({k.decode("latin-1"): v.decode("latin-1") for k, v in headers}, body) for headers, body in reqs]
    now = time.time()
    started = time.thread_time()
    for headers, body in prepared:
        metacopier.verify(body, headers, now, source)
    return (time.thread_time() - started) / len(reqs) * 1e6


class _Quiet:
    def inc(self, amount: float = 1) -> None: ...


def gateway_run(folder: Path, reqs: list[Any], off: str, plugin: bool) -> tuple[float, float]:
    from gateway import ingest
    from gateway.config import parse_config
    from gateway.ingest import IngestApp
    from gateway.metrics import Metrics
    from gateway.store import open_store

    data: dict[str, Any] = {"sources": [{"name": "metacopier", "scheme": "metacopier", "secret": SECRET}],
                            "store": {"path": str(folder / "gateway.db")}}
    if plugin:  # the outbox rows are written in the event's transaction; no runner reads them here
        data["plugins"] = [{"name": "journal", "use": "jsonl", "options": {"path": str(folder / "journal.jsonl")}}]
    config = parse_config(data, origin="bench", base_dir=folder)
    store = open_store(config.store)
    metrics = Metrics()
    store.observe(metrics)
    app = IngestApp(config, store, metrics=metrics)

    async def run() -> tuple[float, float]:
        await store.open()
        try:
            if off == "secondary indexes":
                await store._write(lambda db: [db.execute(f"DROP INDEX {name}") for name in (  # type: ignore[attr-defined]
                    "events_source", "events_receipt", "events_type", "events_account", "events_symbol",
                    "events_received", "events_unidentified")])
            return await drive(app, reqs, "store-writer", complete=not off.startswith("body on its way"))
        finally:
            await store.close()

    switches: dict[str, contextlib.AbstractContextManager[Any]] = {
        "in-flight cap and byte budget": patched(app, _admit=id, _leave=id,
                                                 budget=SimpleNamespace(acquire=_free, release=id)),
        "request id and log contextvar": patched(ingest, new_request_id=lambda: "0123456789abcdef",
                                                 logs=SimpleNamespace(request_id=SimpleNamespace(set=id))),
        "secret scanner": patched(app, secrets=_NoSecrets()),
        "header capture and credential stripping": patched(app, _kept_headers=lambda headers: []),
        "metrics": patched(app, _observe=lambda *a: None, _requests={"metacopier": _Quiet()}),
        "response building": patched(ingest, answer=lambda request_id, outcomes: b"{}"),
        "store handoff (queue, futures, wake-ups)": patched(app, store=_InstantStore(store)),
    }
    with switches.get(off, contextlib.nullcontext()):
        return asyncio.run(run())


def minimal_run(folder: Path, reqs: list[Any]) -> tuple[float, float]:
    import os

    os.environ["MINIMAL_DB"] = str(folder / "minimal.db")
    import minimal_app

    async def run() -> tuple[float, float]:
        started = asyncio.Event()
        lifespan: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        await lifespan.put({"type": "lifespan.startup"})

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        task = asyncio.create_task(minimal_app.app({"type": "lifespan"}, lifespan.get, send))
        await started.wait()
        await asyncio.sleep(0.1)  # the writer thread has opened its connection
        try:
            return await drive(minimal_app.app, reqs, "minimal-writer")
        finally:
            await lifespan.put({"type": "lifespan.shutdown"})
            await task

    return asyncio.run(run())


def protocol_cost(count: int, guarded: bool) -> float:
    """Event-loop µs per request of uvicorn's httptools protocol (with the gateway's guards or
    without), for whole requests on one keep-alive connection to an app that answers at once."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from gateway.config import ServerConfig
    from gateway.server import uvicorn_config

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

        def write(self, data: bytes) -> None: ...
        def is_closing(self) -> bool: return False
        def close(self) -> None: ...
        def pause_reading(self) -> None: ...
        def resume_reading(self) -> None: ...
        def set_write_buffer_limits(self, *a: Any) -> None: ...

    headers, body = requests(1)[0]
    head = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    raw = b"POST /hooks/metacopier HTTP/1.1\r\n" + head + b"\r\n" + body

    async def run() -> float:
        config = uvicorn_config(app, ServerConfig(), host="127.0.0.1", port=0, log_level="warning")
        if not guarded:
            config.http = HttpToolsProtocol
        config.load()
        protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={},  # type: ignore[call-arg]
                                              _loop=asyncio.get_running_loop())
        protocol.connection_made(Transport())
        started = time.thread_time()
        for _ in range(count):
            protocol.data_received(raw)
            while protocol.cycle is not None and not protocol.cycle.response_complete:
                await asyncio.sleep(0)
        return (time.thread_time() - started) / count * 1e6

    return asyncio.run(run())


ADDED = ("with one plugin (routes, outbox rows)", "body on its way (head-only credential check)")
PARTS = ("store handoff (queue, futures, wake-ups)", "in-flight cap and byte budget", "request id and log contextvar",
         "secret scanner", "header capture and credential stripping", "metrics", "response building",
         "secondary indexes")


@click.command()
@click.option("--requests", "count", type=int, default=20_000, show_default=True)
@click.option("--repeat", type=int, default=3, show_default=True, help="Runs per row; the median is shown.")
def main(count: int, repeat: int) -> None:
    """Print the hot path's cost table: CPU µs per MetaCopier request, by part."""
    rows: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeat):
        for part in ("gateway", *PARTS, *ADDED):
            with tempfile.TemporaryDirectory(prefix="gateway-costs-") as tmp:
                reqs = requests(count)
                result = gateway_run(Path(tmp), reqs, part, plugin=part.startswith("with one plugin"))
            rows.setdefault(part, []).append(result)
        with tempfile.TemporaryDirectory(prefix="gateway-costs-") as tmp:
            rows.setdefault("minimal pipeline", []).append(minimal_run(Path(tmp), requests(count)))
        rows.setdefault("verify and parse (HMAC, identity, fingerprint)", []).append(
            (verify_cost(requests(count)), 0.0))
        for guarded in (False, True):
            rows.setdefault(f"http protocol{' (guarded)' if guarded else ''}", []).append(
                (protocol_cost(count, guarded), 0.0))
    median = {part: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
              for part, runs in rows.items()}
    base_loop, base_writer = median["gateway"]
    click.echo(f"{'CPU µs per request':48} {'event loop':>10} {'writer':>8}  {'part costs':>10}")
    for part, (loop_us, writer_us) in median.items():
        line = f"{part:48} {loop_us:10.1f} {writer_us:8.1f}"
        if part in PARTS:
            line += f"  {base_loop - loop_us:+10.1f} {base_writer - writer_us:+8.1f}"
        elif part in ADDED:
            line += f"  {loop_us - base_loop:+10.1f} {writer_us - base_writer:+8.1f}"
        click.echo(line)
    plain, guarded_us = median["http protocol"][0], median["http protocol (guarded)"][0]
    click.echo(f"{'guarded protocol':48} {guarded_us - plain:+10.1f}")


if __name__ == "__main__":
    main()
