"""The minimal durable pipeline: the realistic ceiling for a gateway on this stack.

A raw ASGI callable that gives the gateway's core guarantee and nothing more: it reads the
body, checks the sender's credential (MetaCopier's and PipSync's HMAC over `ts.body`,
TradrAPI's key hash), parses with orjson, builds a dedup key per event, and queues the request
to one writer thread. That thread runs BEGIN IMMEDIATE, one INSERT per event into a table with
a UNIQUE key, then COMMIT, in WAL with synchronous=FULL; each request is answered only after
its commit. No limits, no metrics, no logs, no plugins, no receipts: bench/run.py runs it
beside the bare app and the gateway, and docs/benchmarks.md prices the difference.

    MINIMAL_DB=/tmp/minimal.db uvicorn minimal_app:app --app-dir bench
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import queue
import sqlite3
import threading
from typing import Any

import orjson

SECRETS = {"metacopier": b"bench-metacopier-secret-0123456789abcdef", "pipsync": b"whsec_bench_pipsync_secret"}
TRADRAPI_HASH = hashlib.sha1(b"bench-tradrapi-key-0123456789").hexdigest().encode()
_jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()


def writer(path: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, body BLOB)")
    while (job := _jobs.get()) is not None:
        group = [job]
        while not _jobs.empty() and len(group) < 256:
            group.append(_jobs.get())
        db.execute("BEGIN IMMEDIATE")
        results = [[(key, db.execute("INSERT INTO events (key, body) VALUES (?, ?) ON CONFLICT DO NOTHING",
                                     (key, body)).rowcount) for key, body in events] for events, _, _ in group]
        db.execute("COMMIT")
        for (_, loop, future), stored in zip(group, results, strict=True):
            loop.call_soon_threadsafe(future.set_result, stored)


def verify(name: str, headers: dict[bytes, bytes], body: bytes) -> list[tuple[str, bytes]] | None:
    """The events of an authentic request as (dedup key, body), or None."""
    if name == "tradrapi":
        if not hmac.compare_digest(headers.get(b"x-webhook-secret", b""), TRADRAPI_HASH):
            return None
        batch = orjson.loads(body)["payload"]
        return [(f"tradrapi:{m['eventType']}:{m['payload']['id']}", orjson.dumps(m)) for m in batch]
    if name == "metacopier":
        ts, sig = headers.get(b"x-metacopier-timestamp", b""), headers.get(b"x-metacopier-signature", b"")
    elif name == "pipsync":
        parts = dict(p.split(b"=", 1) for p in headers.get(b"x-pipsync-signature", b"").split(b",") if b"=" in p)
        ts, sig = parts.get(b"t", b""), parts.get(b"v1", b"")
    else:
        return None
    expected = hmac.new(SECRETS[name], ts + b"." + body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, sig):
        return None
    event = orjson.loads(body)
    if name == "pipsync":
        return [(f"pipsync:{event['type']}:{event['id']}", body)]
    return [(f"metacopier:{event['type']}:{event['position']['id']}", body)]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            threading.Thread(target=writer, args=(os.environ.get("MINIMAL_DB", "minimal.db"),),
                             name="minimal-writer", daemon=True).start()
            await send({"type": "lifespan.startup.complete"})
        _jobs.put(None)
        await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    events = verify(scope["path"].removeprefix("/hooks/"), dict(scope["headers"]), body)
    if events is None:
        status, answer = 401, orjson.dumps({"code": "bad_signature"})
    else:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        _jobs.put((events, loop, future))
        stored = await future
        status, answer = 200, orjson.dumps({"events": [{"status": "stored" if new else "duplicate", "dedup_key": key}
                                                       for key, new in stored]})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
