"""Shared factories: configs, signed requests, and the real app served over a socket."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
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
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Build a Config with one source per scheme (named after it) plus any extra sources."""

    def make(*extra_sources: dict[str, Any], server: dict[str, Any] | None = None,
             only: list[dict[str, Any]] | None = None, plugins: list[dict[str, Any]] | None = None) -> Config:
        sources = only if only is not None else [
            source_table("metacopier", "metacopier"),
            source_table("pipsync", "pipsync"),
            source_table("tradrapi", "tradrapi"),
            *extra_sources,
        ]
        data = {"sources": sources, "store": {"path": str(tmp_path / "gateway.db")},
                "server": server or {}, "plugins": plugins or []}
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
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
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
