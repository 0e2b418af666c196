"""POST /hooks/{source} through the real app over HTTP: every scheme, every failure mode."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.config import Config
from gateway.store import Rejection
from tests.conftest import (
    MC_BODY,
    MC_SECRET,
    MC_SECRET_NEW,
    PS_BODY,
    PS_SECRET,
    PS_SECRET_NEW,
    TR_BODY,
    TR_KEY,
    TR_KEY_NEW,
    RunningGateway,
    mc_sign,
    ps_sign,
    source_table,
    tr_sign,
    wait_for,
)
from tests.store_reads import detail, rejections, sqlite_receipt_count
from tests.store_reads import events as stored_events

Serve = Callable[[Config], RunningGateway]
ALL_SECRETS = [MC_SECRET, MC_SECRET_NEW, PS_SECRET, PS_SECRET_NEW, TR_KEY, TR_KEY_NEW]


def raw_dump(gw: RunningGateway) -> str:
    """Every byte of the SQLite file as SQL: a secret must appear nowhere, in any table."""
    with closing(sqlite3.connect(gw.app.config.store.path)) as conn:
        return "\n".join(conn.iterdump())


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["type"].endswith(code)
    assert problem["title"] and problem["detail"]
    assert problem["request_id"] == r.headers["x-request-id"]
    for secret in ALL_SECRETS:  # a detail never reveals a secret or the expected signature
        assert secret not in r.text
    return problem


def unique_mc(position: str, event: str = "position.opened") -> bytes:
    return orjson.dumps({"type": event, "accountId": "a1", "position": {"id": position, "symbol": "XAUUSD"}})


# --- success --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("source", "body", "headers", "dedup_key"),
    [
        # one occurrence: the position and its open time; the event id; the member and the platform's deal
        ("metacopier", MC_BODY, lambda: mc_sign(MC_BODY), "metacopier:position.opened:88412231@2026-11-20T10:15:01Z"),
        ("pipsync", PS_BODY, lambda: ps_sign(PS_BODY), "pipsync:trade.opened:evt_01JD3W8K2M"),
        ("tradrapi", TR_BODY, lambda: tr_sign(), "tradrapi:open_position:5561201@op-1"),
    ],
)
def test_reference_body_is_stored_then_duplicate(
    gateway: RunningGateway, source: str, body: bytes, headers: Callable[[], dict[str, str]], dedup_key: str
) -> None:
    first = gateway.post(f"/hooks/{source}", body, headers())
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "application/json"
    doc = first.json()
    assert doc["request_id"] == first.headers["x-request-id"]
    assert doc["events"] == [
        {"id": doc["events"][0]["id"], "status": "stored", "dedup_key": dedup_key, "conflicts_with": None}]
    again = gateway.post(f"/hooks/{source}", body, headers())  # signed anew: a fresh timestamp header
    assert again.status_code == 200
    assert again.json()["events"] == [
        {"id": doc["events"][0]["id"], "status": "duplicate", "dedup_key": dedup_key, "conflicts_with": None}]
    assert again.json()["request_id"] != doc["request_id"]
    assert len(stored_events(gateway.app.config)) == 1


def test_stored_row_keeps_raw_body_headers_and_fields_but_no_credentials(
    make_config: Callable[..., Config], serve: Serve
) -> None:
    gw = serve(make_config(source_table("mc-bearer", "metacopier", auth="bearer", allow_shared_secret=True)))
    r = gw.post("/hooks/tradrapi", TR_BODY, {**tr_sign(), "X-Custom": "kept"})
    assert r.status_code == 200
    token_body = unique_mc("b-1")
    r = gw.post("/hooks/mc-bearer", token_body, {"Authorization": f"Bearer {MC_SECRET}"})
    assert r.status_code == 200, r.text
    tradr, bearer = stored_events(gw.app.config)  # one event per request
    assert tradr.source == "tradrapi" and detail(gw.app.config, tradr.id).body == TR_BODY
    assert tradr.remote_addr == "127.0.0.1" and tradr.attempt == 1
    headers = dict(detail(gw.app.config, tradr.id).headers)
    assert headers["x-custom"] == "kept"
    assert "x-webhook-secret" not in headers
    assert "authorization" not in dict(detail(gw.app.config, bearer.id).headers)
    dump = raw_dump(gw)
    for secret in (TR_KEY, hashlib.sha1(TR_KEY.encode()).hexdigest(), MC_SECRET):
        assert secret not in dump
    # the entity: TradrAPI's position is the platform's ticket (platformTradeId), MetaCopier's the position id
    assert [(e.event_type, e.entity_id, e.account, e.symbol, e.status) for e in (tradr, bearer)] == [
        ("open_position", "position:t-1", "99121", "EURUSD", "stored"),
        ("position.opened", "position:b-1", "a1", "XAUUSD", "stored")]


@pytest.mark.parametrize("secret", [MC_SECRET, MC_SECRET_NEW])
def test_metacopier_rotated_secrets_alias_header_and_prefix(gateway: RunningGateway, secret: str) -> None:
    body = unique_mc(f"rot-{secret[:5]}")
    headers = mc_sign(body, secret)
    sig = headers.pop("X-MetaCopier-Signature")
    headers["X-Webhook-Signature"] = "sha256=" + sig.upper()
    r = gateway.post("/hooks/metacopier", body, headers)
    assert r.status_code == 200, r.text
    assert r.json()["events"][0]["status"] == "stored"


def test_pipsync_several_v1_any_matching(gateway: RunningGateway) -> None:
    t = str(int(time.time()))
    good = ps_sign(PS_BODY, PS_SECRET_NEW, int(t))["X-PipSync-Signature"].split("v1=")[1]
    header = f"v0=abc, v1={'0' * 64}, t={t}, v1={good}"
    r = gateway.post("/hooks/pipsync", PS_BODY, {"X-PipSync-Signature": header})
    assert r.status_code == 200, r.text


def test_tradrapi_rotated_key(gateway: RunningGateway) -> None:
    r = gateway.post("/hooks/tradrapi", TR_BODY, tr_sign(TR_KEY_NEW))
    assert r.status_code == 200


# --- authentication failures ----------------------------------------------------------

NOW_MS = lambda: int(time.time() * 1000)  # noqa: E731


@pytest.mark.parametrize(
    ("source", "body", "headers", "code", "in_detail"),
    [
        ("metacopier", MC_BODY + b" ", lambda: mc_sign(MC_BODY), "bad_signature", "does not match"),
        ("metacopier", MC_BODY, lambda: mc_sign(MC_BODY, "x" * 40), "bad_signature", "does not match"),
        ("metacopier", MC_BODY, lambda: mc_sign(MC_BODY, ts_ms=NOW_MS() - 412_000), "stale_timestamp",
         "412 s in the past; tolerance is 300 s"),
        ("metacopier", MC_BODY, lambda: mc_sign(MC_BODY, ts_ms=NOW_MS() + 900_000), "future_timestamp",
         "900 s in the future"),
        ("metacopier", MC_BODY, lambda: {}, "missing_signature", "X-MetaCopier-Signature"),
        ("metacopier", MC_BODY, lambda: {k: v for k, v in mc_sign(MC_BODY).items() if "Timestamp" not in k},
         "missing_signature", "X-MetaCopier-Timestamp"),
        ("metacopier", MC_BODY, lambda: {**mc_sign(MC_BODY), "X-MetaCopier-Signature": "zz-not-hex"},
         "malformed_signature", "64 hex"),
        ("metacopier", MC_BODY, lambda: {**mc_sign(MC_BODY), "X-MetaCopier-Timestamp": "yesterday"},
         "malformed_signature", "Unix timestamp"),
        ("pipsync", PS_BODY.replace(b"0.5", b"5.0"), lambda: ps_sign(PS_BODY), "bad_signature", "no v1"),
        ("pipsync", PS_BODY, lambda: ps_sign(PS_BODY, t=int(time.time()) - 3600), "stale_timestamp",
         "s in the past; tolerance is 300 s"),
        ("pipsync", PS_BODY, lambda: ps_sign(PS_BODY, t=int(time.time()) + 400), "future_timestamp",
         "s in the future; tolerance is 300 s"),
        ("pipsync", PS_BODY, lambda: {}, "missing_signature", "X-PipSync-Signature"),
        ("pipsync", PS_BODY, lambda: {"X-PipSync-Signature": "garbage"}, "malformed_signature", "without '='"),
        ("pipsync", PS_BODY, lambda: {"X-PipSync-Signature": f"v1={'a' * 64}"}, "malformed_signature", "no t="),
        ("tradrapi", TR_BODY, lambda: tr_sign("some-other-key-0123456789"), "bad_signature", "SHA-1"),
        ("tradrapi", TR_BODY, lambda: {"x-webhook-secret": TR_KEY}, "malformed_signature", "SHA-1"),
        ("tradrapi", TR_BODY, lambda: {}, "missing_signature", "x-webhook-secret"),
    ],
)
def test_rejections_are_precise_401s_and_store_nothing(
    gateway: RunningGateway, source: str, body: bytes, headers: Callable[[], dict[str, str]], code: str,
    in_detail: str,
) -> None:
    sent = headers()
    r = gateway.post(f"/hooks/{source}", body, sent)
    problem = assert_problem(r, 401, code)
    assert in_detail in str(problem["detail"])
    for name, value in sent.items():
        if "signature" in name.lower() and len(value) > 20:
            # the detail never echoes what the signature should have been
            assert value.split("v1=")[-1][-64:] not in str(problem["detail"])
    assert stored_events(gateway.app.config) == []
    assert sqlite_receipt_count(gateway.app.config) == 0


def test_non_latin_garbage_in_headers_is_a_401_not_a_crash(gateway: RunningGateway) -> None:
    raw = b"\xff\xfe\x00junk" * 3
    for source, name in [("metacopier", b"x-metacopier-signature"), ("pipsync", b"x-pipsync-signature"),
                         ("tradrapi", b"x-webhook-secret")]:
        r = gateway.client.post(f"/hooks/{source}", content=MC_BODY, headers=[(name, raw.replace(b"\x00", b""))])
        assert_problem(r, 401, "malformed_signature")


# --- routing, addresses, sizes ---------------------------------------------------------

def test_unknown_source_is_404(gateway: RunningGateway) -> None:
    problem = assert_problem(gateway.post("/hooks/nope", MC_BODY, mc_sign(MC_BODY)), 404, "unknown_source")
    assert "nope" in str(problem["detail"])


def test_get_on_a_hook_is_405_with_allow(gateway: RunningGateway) -> None:
    r = gateway.client.get("/hooks/metacopier")
    assert_problem(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


def test_other_paths_are_problem_json_with_request_id(gateway: RunningGateway) -> None:
    assert_problem(gateway.client.get("/nothing-here"), 404, "not_found")
    ok = gateway.client.get("/healthz")
    assert ok.status_code == 200 and ok.headers["x-request-id"]


def test_allow_ips(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(
        source_table("walled", "metacopier", allow_ips=["10.0.0.0/8", "fd00::/8"], allow_shared_secret=True),
        {"name": "open-lan", "scheme": "metacopier", "auth": "none", "allow_ips": ["127.0.0.0/8"]},
    ))
    problem = assert_problem(gw.post("/hooks/walled", MC_BODY, mc_sign(MC_BODY)), 403, "ip_denied")
    assert "127.0.0.1" in str(problem["detail"])
    r = gw.post("/hooks/open-lan", unique_mc("lan-1"))
    assert r.status_code == 200 and r.json()["events"][0]["status"] == "stored"


def _raw_request(url: str, head: bytes, chunks: list[bytes]) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(5)
        return sock.recv(65536)


def test_declared_oversize_body_is_refused_before_it_is_sent(make_config: Callable[..., Config],
                                                             serve: Serve) -> None:
    gw = serve(make_config(server={"max_body_bytes": 4096}))
    # Only the head is sent: the answer comes without the server waiting for 10 MB.
    head = (b"POST /hooks/metacopier HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10485760\r\n\r\n")
    reply = _raw_request(gw.url, head, [])
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    assert b'"code":"payload_too_large"' in reply and b"10485760 bytes" in reply


def test_streamed_oversize_body_is_refused_while_streaming(make_config: Callable[..., Config],
                                                            serve: Serve) -> None:
    gw = serve(make_config(server={"max_body_bytes": 4096}))
    # A well-formed (if wrong) credential: a request without one is refused before its body.
    head = (b"POST /hooks/tradrapi HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"x-webhook-secret: " + b"0" * 40 + b"\r\n\r\n")
    chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
    # Two 4 KiB chunks exceed the limit; the body is never terminated, so a 413 can only
    # come from the server refusing while the body is still streaming.
    reply = _raw_request(gw.url, head, [chunk, chunk])
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    assert b"payload_too_large" in reply


def test_body_at_the_limit_is_accepted(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(server={"max_body_bytes": 4096}))
    body = orjson.dumps({"type": "history.updated", "pad": "x" * 4000})
    body += b" " * (4096 - len(body))
    assert len(body) == 4096
    r = gw.post("/hooks/metacopier", body, mc_sign(body))
    assert r.status_code == 200, r.text
    too_big = body + b" "
    assert_problem(gw.post("/hooks/metacopier", too_big, mc_sign(too_big)), 413, "payload_too_large")


# --- authentic but odd bodies: quarantined, never dropped ---------------------------------

@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"\xff\xfe not utf-8", "not valid JSON"),
        (b"{\"type\": ", "not valid JSON"),
        (b"[1, 2, 3]", "JSON list"),
        (b'{"no_type": true}', "no event type"),
    ],
)
def test_authentic_odd_bodies_are_quarantined_once(gateway: RunningGateway, body: bytes, reason: str) -> None:
    r = gateway.post("/hooks/metacopier", body, mc_sign(body))
    assert r.status_code == 200, r.text
    (event,) = r.json()["events"]
    assert event["status"] == "quarantined"
    assert event["dedup_key"] == f"metacopier:-:#sha256-{hashlib.sha256(body).hexdigest()}"
    assert event["conflicts_with"] is None
    again = gateway.post("/hooks/metacopier", body, mc_sign(body))
    assert again.json()["events"][0] == {**event, "status": "duplicate"}
    (stored,) = stored_events(gateway.app.config)
    assert stored.status == "quarantined" and reason in str(stored.quarantine_reason)
    assert detail(gateway.app.config, stored.id).body == body


def test_unauthenticated_odd_bodies_are_rejected_not_quarantined(gateway: RunningGateway) -> None:
    assert_problem(gateway.post("/hooks/metacopier", b"\xff", mc_sign(b"other")), 401, "bad_signature")
    assert sqlite_receipt_count(gateway.app.config) == 0


# --- TradrAPI batches -----------------------------------------------------------------------

def tr_event(pid: int, event_type: str = "open_position", **payload: object) -> dict[str, object]:
    return {"brandId": 1, "serverId": 2, "accountId": 7, "eventType": event_type, "platform": "MT5",
            "payload": {"id": pid, "symbol": "EURUSD", **payload}}


def test_batch_members_are_deduplicated_each_on_their_own(gateway: RunningGateway) -> None:
    first = orjson.dumps({"payload": [tr_event(1), tr_event(2)], "count": 2, "attempts": 1})
    r1 = gateway.post("/hooks/tradrapi", first, tr_sign())
    assert [e["status"] for e in r1.json()["events"]] == ["stored", "stored"]
    members = [tr_event(2), tr_event(2, "close_position"), "not-an-event", tr_event(3), {"eventType": 5},
               tr_event(9, "account_updated", updatedAt=100), tr_event(9, "account_updated", updatedAt=200)]
    r2 = gateway.post("/hooks/tradrapi", orjson.dumps({"payload": members, "count": 7, "attempts": 2}),
                      tr_sign())
    events = r2.json()["events"]
    assert [e["status"] for e in events] == ["duplicate", "stored", "quarantined", "stored", "quarantined",
                                             "stored", "stored"]
    assert events[0]["id"] == r1.json()["events"][1]["id"]
    assert events[5]["dedup_key"] == "tradrapi:account_updated:9@100"
    assert events[6]["dedup_key"] == "tradrapi:account_updated:9@200"
    requests = dict.fromkeys((e.request_id, e.attempt) for e in stored_events(gateway.app.config))  # in order
    assert [attempt for _, attempt in requests] == [1, 2]


def test_batch_is_atomic_when_the_store_fails_and_tradrapi_gets_503_not_404(gateway: RunningGateway) -> None:
    db = gateway.app.config.store.path
    with sqlite3.connect(db) as conn:  # a real store fault on the 2nd member's insert
        conn.execute("CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.entity_id = 'position:666' "
                     "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
    batch = orjson.dumps({"payload": [tr_event(665), tr_event(666), tr_event(667)], "count": 3})
    r = gateway.post("/hooks/tradrapi", batch, tr_sign())
    assert_problem(r, 503, "store_unavailable")
    assert r.headers["retry-after"]
    assert stored_events(gateway.app.config) == []
    assert sqlite_receipt_count(gateway.app.config) == 0
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER boom")
    r = gateway.post("/hooks/tradrapi", batch, tr_sign())  # the sender's retry succeeds
    assert [e["status"] for e in r.json()["events"]] == ["stored", "stored", "stored"]


def test_empty_batch_is_acknowledged_with_no_events(gateway: RunningGateway) -> None:
    r = gateway.post("/hooks/tradrapi", b'{"payload": [], "count": 0}', tr_sign())
    assert r.status_code == 200 and r.json()["events"] == []


# --- durability across restarts and concurrency -------------------------------------------

def test_dedup_survives_a_restart(make_config: Callable[..., Config], serve: Serve) -> None:
    config = make_config()
    gw = serve(config)
    body = unique_mc("restart-1")
    stored = gw.post("/hooks/metacopier", body, mc_sign(body)).json()["events"][0]
    gw.__exit__()
    gw2 = serve(config)
    again = gw2.post("/hooks/metacopier", body, mc_sign(body)).json()["events"][0]
    assert again == {**stored, "status": "duplicate"}
    closed = unique_mc("restart-1", "position.closed")
    assert gw2.post("/hooks/metacopier", closed, mc_sign(closed)).json()["events"][0]["status"] == "stored"


@pytest.mark.anyio
async def test_concurrent_requests_share_group_commits(make_config: Callable[..., Config],
                                                       serve: Serve) -> None:
    import anyio

    gw = serve(make_config())
    results: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        async def one(i: int) -> None:
            body = unique_mc(f"conc-{i}")
            results.append(await client.post("/hooks/metacopier", content=body, headers=mc_sign(body)))

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
    assert [r.status_code for r in results] == [200] * 200
    ids = {r.json()["events"][0]["id"] for r in results}
    assert len(ids) == 200
    assert len(await asyncio.to_thread(stored_events, gw.app.config)) == 200  # its own event loop
    commits = gw.app.store.commits  # type: ignore[attr-defined]
    assert commits < 200, commits


def test_store_path_is_created(tmp_path: Path, make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config())
    assert Path(gw.app.config.store.path).exists()


def test_a_bug_is_a_logged_problem_json_500_and_the_server_keeps_serving(
    make_config: Callable[..., Config], serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """The one stub in this file: a real store cannot be made to raise a programming error."""
    from gateway.store.sqlite import SQLiteStore

    class BuggyStore(SQLiteStore):
        async def ingest(self, receipt, events, routes=None):  # type: ignore[no-untyped-def]
            if receipt.body.startswith(b'{"type":"position.opened","accountId":"a1","position":{"id":"bug"'):
                raise KeyError("simulated bug")
            return await super().ingest(receipt, events, routes)

    config = make_config()
    from gateway.app import GatewayApp
    from tests.conftest import RunningGateway as RG

    gw = RG(GatewayApp(config, store=BuggyStore(config.store.path))).__enter__()
    try:
        body = unique_mc("bug")
        problem = assert_problem(gw.post("/hooks/metacopier", body, mc_sign(body)), 500, "internal_error")
        assert "simulated bug" not in str(problem["detail"])
        assert "simulated bug" in caplog.text  # the traceback is in the log, not the response
        ok = unique_mc("fine")
        assert gw.post("/hooks/metacopier", ok, mc_sign(ok)).status_code == 200
    finally:
        gw.__exit__()


# --- rejection forensics ----------------------------------------------------------------------

def test_rejections_are_recorded_without_bodies_or_credentials(gateway: RunningGateway) -> None:
    body = b'{"type":"position.opened","position":{"id":"forensic-1"}}'
    headers = mc_sign(body, "wrong-secret-" + "x" * 30)
    r = gateway.post("/hooks/metacopier", body, {**headers, "Authorization": f"Bearer {MC_SECRET}"})
    assert r.status_code == 401
    gateway.post("/hooks/tradrapi", TR_BODY, {"x-webhook-secret": TR_KEY})
    gateway.post("/hooks/no-such-source", b"x" * 10, {})

    def recorded() -> list[Rejection]:
        return rejections(gateway.app.config)

    wait_for(lambda: len(recorded()) >= 3, 5, "3 rejections recorded", seen=recorded)
    first, second, third = recorded()
    assert first.request_id == r.headers["x-request-id"]
    assert (first.known_source, first.source, first.code) == (True, "metacopier", "bad_signature")
    assert first.remote_addr == "127.0.0.1"
    assert {"x-metacopier-signature", "x-metacopier-timestamp", "authorization"} <= set(first.header_names)
    assert first.body_size == len(body) and first.body_sha256 == hashlib.sha256(body).hexdigest()
    assert second.code == "malformed_signature" and second.body_size == len(TR_BODY)
    # unknown names share one bucket
    assert (third.known_source, third.source, third.code) == (False, "no-such-source", "unknown_source")
    assert third.body_size == 10 and third.body_sha256 is None  # body never read for an unknown source
    dump = raw_dump(gateway)
    for secret in (MC_SECRET, TR_KEY, headers["X-MetaCopier-Signature"]):
        assert secret not in dump
    assert "forensic-1" not in dump  # the unauthenticated body itself is never kept


def test_rejection_log_is_bounded_under_a_flood(make_config: Callable[..., Config], serve: Serve) -> None:
    gw = serve(make_config(), )
    gw.app.store.rejections_per_source = 25  # type: ignore[attr-defined]

    async def flood() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                async with sem:
                    path = "/hooks/metacopier" if i % 2 else f"/hooks/random-{i}"
                    await client.post(path, content=b"{}", headers={"X-MetaCopier-Signature": "0" * 64})

            await asyncio.gather(*(one(i) for i in range(1000)))

    asyncio.run(flood())
    gw.flush()
    kept = rejections(gw.app.config)
    buckets = Counter(r.source if r.known_source else "?" for r in kept)  # unknown names: one bucket
    assert buckets == {"metacopier": 25, "?": 25}
    assert stored_events(gw.app.config) == []
    assert sqlite_receipt_count(gw.app.config) == 0
    newest = max(r.id for r in kept)
    assert newest >= 990  # the newest are the ones kept
