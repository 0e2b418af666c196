"""Hostile requests against the real app over HTTP: any method, path, headers and body.

Each generated request is sent to the gateway served on 127.0.0.1, and its answer is checked
against a model of the ingest path: 404 for an unknown source, 405 for a method other than
POST, 403 outside allow_ips, 413 over the size limit, else what the source's verifier says
about the headers the server received (the last of duplicated names wins). Never a 5xx (the
store is healthy), every refusal problem+json with a known code, and afterwards the store
holds exactly the requests the model accepted: nothing unauthenticated.

Accepted events follow the dedup model: an event whose identity (its dedup key) and content (its
fingerprint) are stored is a `duplicate` of that version; one whose identity is stored with
other content is a `conflict`, stored beside the first version and pointing at it; anything else
is new. The hostile ids come from a small alphabet, so identities meet with other content often.
"""

from __future__ import annotations

import dataclasses
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import orjson
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from gateway.config import Config, parse_config
from gateway.errors import CODES, PROBLEM_CONTENT_TYPE, Rejected
from gateway.ingest import HEADER_CODES, PREFIX
from gateway.model import ParsedEvent, dedup_key
from gateway.schemes import get_scheme
from tests.conftest import MC_BODY, RunningGateway, mc_sign, ps_sign, source_table, tr_sign
from tests.hostile import BODIES, any_body
from tests.store_reads import details, events

Serve = Callable[..., RunningGateway]
MAX_BODY = 64 * 1024
SOURCES = ["metacopier", "pipsync", "tradrapi", "open", "walled"]
SCHEME_OF = {"metacopier": "metacopier", "pipsync": "pipsync", "tradrapi": "tradrapi", "open": "metacopier",
             "walled": "pipsync"}
KNOWN_HEADERS = ["X-MetaCopier-Signature", "X-Webhook-Signature", "X-MetaCopier-Timestamp",
                 "X-MetaCopier-Delivery-Attempt", "Authorization", "X-PipSync-Signature", "X-Webhook-Secret",
                 "Content-Type", "Cookie"]
# Framing headers are the HTTP client's business: junk in them makes a different request, not a hostile one.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te", "trailer",
           "keep-alive", "proxy-connection"}
# What uvicorn's HTTP parser (httptools) accepts among the methods generated here.
KNOWN_METHODS = {"GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "POST"}
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def _config(folder: Path) -> Config:
    """One source per scheme, one open to all (auth = "none"), one walled off; reads need no token."""
    sources = [source_table(name, scheme) for name, scheme in SCHEME_OF.items() if name not in ("open", "walled")]
    sources += [{"name": "open", "scheme": "metacopier", "auth": "none", "allow_ips": ["127.0.0.0/8"]},
                source_table("walled", "pipsync", allow_ips=["10.0.0.0/8"], allow_shared_secret=True)]
    data = {"sources": sources, "store": {"path": str(folder / "gateway.db")}, "api": {"public": True},
            "server": {"max_body_bytes": MAX_BODY}}
    return parse_config(data, origin="test.toml", base_dir=folder)


# --- the requests ----------------------------------------------------------------------------------

@dataclass
class HostileRequest:
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool
    signed: list[tuple[str, bytes | None]] = field(default_factory=list)  # (scheme, body) credentials sent
    sign_for: str | None = None  # explicit examples: sign for this scheme when sent
    clean: bool = False  # signed for its source, body unchanged, nothing sent after under the same names
    retry: bool = False  # send it again once accepted, as senders do


def _case(name: str) -> st.SearchStrategy[str]:
    flips = st.lists(st.booleans(), min_size=len(name), max_size=len(name))
    return flips.map(lambda fs: "".join(c.upper() if f else c.lower() for c, f in zip(name, fs, strict=True)))


exact = st.sampled_from(SOURCES)
names = st.one_of(
    exact, exact, exact,
    st.sampled_from(SOURCES).flatmap(_case),
    st.sampled_from(SOURCES).map(lambda n: "".join(f"%{b:02x}" for b in n.encode())),  # %6d%65... decodes to n
    st.sampled_from(SOURCES).map(lambda n: n[0] + quote(n[1:], safe="")),
    st.text(max_size=40).map(lambda t: quote(t, safe="")),
    st.text(max_size=20).map(lambda t: quote(t, safe="/:@!$&'()*+,;=")),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "%41", "%ff", "-"]), st.integers(60, 2000)),
    st.sampled_from(["", "%", "%zz", "%ff%fe", "%00", "%2F", "metacopier%2F", "..", "%2e%2e", "metacopier%00",
                     "metacopier%20", "%20metacopier", "metacopier.", "tradrapi;x", "\uff4detacopier"]),
)
suffixes = st.sampled_from(["", "", "", "/", "/x", "?a=b", "?" + "q" * 500, "//"])
methods = st.sampled_from(["POST"] * 14 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "post",
                                          "FOO", "P0ST"])
header_name = st.sampled_from(KNOWN_HEADERS).flatmap(_case) | st.text(TCHAR, min_size=1, max_size=40)
value_chars = st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f")
header_value = st.one_of(
    st.text(value_chars | st.just(" "), max_size=120).map(str.strip),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "9", "f", ",", "="]), st.integers(0, 4000)),
    st.text("0123456789abcdefABCDEF", min_size=38, max_size=66),
    st.builds(lambda t, s: f"t={t},v1={s}", st.integers(-(10**15), 10**15), st.text("0123456789abcdef", max_size=70)),
    st.sampled_from(["Bearer", "Bearer x", "sha256=", "t=,v1=", "\xff\xfe", "²", "1e3"]),
)
junk_headers = st.lists(st.tuples(header_name, header_value), max_size=6).map(
    lambda hs: [(n, v) for n, v in hs if n.lower() not in FRAMING])


@st.composite
def hostile_requests(draw: st.DrawFn) -> HostileRequest:
    name = draw(names)
    scheme = SCHEME_OF.get(name)
    body = draw(BODIES[scheme] if scheme and draw(st.booleans()) else any_body)
    headers = [(n.encode(), v.encode("latin-1")) for n, v in draw(junk_headers)]
    signed: list[tuple[str, bytes | None]] = []
    clean = False
    if scheme is not None and draw(st.booleans()):
        where = draw(st.integers(0, len(headers)))
        credential = sign(scheme, body)
        after = {n.lower() for n, _ in headers[where:]}
        clean = not after & {n for n, _ in credential}
        headers[where:where] = credential  # junk may come before or after it, even under its names
        signed.append((scheme, body))
    if draw(st.integers(0, 3)) == 0:
        # Another source's credential, or one for another body: sent last, so it is the one read.
        other, other_body = draw(st.sampled_from(["metacopier", "pipsync", "tradrapi"])), draw(any_body)
        headers += sign(other, other_body)
        signed.append((other, other_body))
        clean = False
    if draw(st.integers(0, 3)) == 0 and body:
        index = draw(st.integers(0, len(body) - 1))
        body = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1:]
        clean = False
    return HostileRequest(method=draw(methods), path=PREFIX + name + draw(suffixes), headers=headers, body=body,
                          chunked=draw(st.booleans()), signed=signed, clean=clean, retry=draw(st.booleans()))


@st.composite
def authentic_requests(draw: st.DrawFn) -> HostileRequest:
    """What a sender sends, with hostile bodies and junk headers that leave its credential alone."""
    name = draw(st.sampled_from(["metacopier", "pipsync", "tradrapi", "open"]))
    scheme = SCHEME_OF[name]
    body = draw(BODIES[scheme])
    credential = sign(scheme, body)
    taken = {n for n, _ in credential}
    headers = [(n.encode(), v.encode("latin-1")) for n, v in draw(junk_headers)]
    headers = [(n, v) for n, v in headers if n.lower() not in taken]
    where = draw(st.integers(0, len(headers)))
    headers[where:where] = credential
    path = PREFIX + draw(st.sampled_from([name, "".join(f"%{b:02X}" for b in name.encode())]))
    return HostileRequest(method="POST", path=path, headers=headers, body=body, chunked=draw(st.booleans()),
                          signed=[(scheme, body)], clean=True, retry=draw(st.booleans()))


def sign(scheme: str, body: bytes) -> list[tuple[bytes, bytes]]:
    """The credential headers of `scheme` for `body`, now."""
    headers = {"metacopier": mc_sign, "pipsync": ps_sign, "tradrapi": lambda _: tr_sign()}[scheme](body)
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def was_signed(req: HostileRequest, scheme: str) -> bool:
    """Whether we sent a credential of `scheme` valid for the body as sent (TradrAPI's fits any body)."""
    return any(s == scheme and (scheme == "tradrapi" or b == req.body) for s, b in req.signed)


# --- the model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expected:
    status: int
    code: str | None
    events: tuple[ParsedEvent, ...] = ()  # the events the verifier reads from an accepted request


def expected(config: Config, raw_path: bytes, method: str, headers: list[tuple[bytes, bytes]],
             body: bytes, chunked: bool = False) -> Expected | None:
    """What the gateway should answer; None when the path left /hooks/ (the client normalised it).
    A chunked body declares no size: what the head alone shows about the credential (missing or
    malformed) is answered first, and only then is the body found too large."""
    path = unquote(raw_path.partition(b"?")[0].decode("ascii"))  # as uvicorn decodes it
    if not path.startswith(PREFIX):
        return None
    if method not in KNOWN_METHODS:
        return Expected(400, None)  # uvicorn's parser refuses it before the app sees a request
    source = config.sources.get(path[len(PREFIX):])
    if source is None:
        return Expected(404, "unknown_source")
    if method != "POST":
        return Expected(405, "method_not_allowed")
    if not source.allows("127.0.0.1"):
        return Expected(403, "ip_denied")
    seen = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}  # the last one wins
    if len(body) > MAX_BODY:
        if chunked:
            try:
                get_scheme(source.scheme).verify(b"", seen, time.time(), dataclasses.replace(source, secrets=()))
            except Rejected as exc:
                if exc.code in HEADER_CODES:
                    return Expected(401, exc.code)
            except Exception:  # a verifier that needs the body: the size decides
                pass
        return Expected(413, "payload_too_large")
    try:
        verified = get_scheme(source.scheme).verify(body, seen, time.time(), source)
    except Rejected as exc:
        return Expected(401, exc.code)
    return Expected(200, None, verified.events)


def _send(client: httpx.Client, req: HostileRequest) -> httpx.Response | None:
    content: bytes | Iterator[bytes] = req.body
    if req.chunked:
        half = len(req.body) // 2
        content = iter([req.body[:half], req.body[half:]])
    try:
        return client.request(req.method, req.path, content=content, headers=req.headers)
    except httpx.TransportError:
        return None  # only allowed where the server refuses a body it has not read, checked by the caller


def _assert_problem(r: httpx.Response, want: Expected, head: bool) -> None:
    assert r.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert r.headers["x-request-id"]
    if head:
        return  # no body in answers to HEAD
    problem = r.json()
    assert problem["code"] in CODES
    assert CODES[problem["code"]][0] == r.status_code == problem["status"]
    assert problem["code"] == want.code, problem
    assert problem["request_id"] == r.headers["x-request-id"]
    assert problem["detail"] and problem["title"]


# --- the properties -------------------------------------------------------------------------------

def test_hostile_requests_match_the_model_and_store_nothing_unauthenticated(tmp_path: Path, serve: Serve) -> None:
    config = _config(tmp_path)
    gw = serve(config)
    accepted: set[tuple[str, bytes]] = set()  # (source, body) of every request the model accepts
    versions: dict[str, dict[bytes, int]] = {}  # dedup key -> fingerprint -> id, the first version first
    rows: dict[int, tuple[str, str, int | None]] = {}  # id -> (dedup key, status, conflicts_with) stored
    tally: dict[int, int] = {}

    @SETTINGS
    @given(req=authentic_requests() | hostile_requests())
    @example(req=HostileRequest("POST", "/hooks/metacopier", [], b'{"type":"x","ticket":' + b"[" * 300 +
                                b"]" * 300 + b"}", False, sign_for="metacopier"))
    @example(req=HostileRequest("POST", "/hooks/tradrapi", [], b'{"payload":[{"eventType":"open_position","payload"'
                                b':{"id":1}}],"attempts":18446744073709551615}', False, sign_for="tradrapi"))
    @example(req=HostileRequest("POST", "/hooks/metacopier", [], b'{"type":"position.opened","ticket":"a\\u0000b"}',
                                False, sign_for="metacopier", retry=True))
    # One position opened twice with other volumes; two members of one batch that conflict.
    @example(req=HostileRequest("POST", "/hooks/metacopier", [], b'{"type":"position.opened","ticket":"c-1",'
                                b'"volume":0.5}', False, sign_for="metacopier", retry=True))
    @example(req=HostileRequest("POST", "/hooks/metacopier", [], b'{"type":"position.opened","ticket":"c-1",'
                                b'"volume":5.0}', False, sign_for="metacopier", retry=True))
    @example(req=HostileRequest("POST", "/hooks/tradrapi", [], b'{"payload":[{"eventType":"open_position",'
                                b'"payload":{"id":"c-2","lots":1}},{"eventType":"open_position","payload":'
                                b'{"id":"c-2","lots":2}}]}', False, sign_for="tradrapi", retry=True))
    @example(req=HostileRequest("POST", "/hooks/%6d%65tacopier", [], b"{}", False))
    @example(req=HostileRequest("HEAD", "/hooks/nope", [], b"", False))
    @example(req=HostileRequest("POST", "/hooks/" + "a" * 2000, [], b"", False))
    @example(req=HostileRequest("POST", "/hooks/tradrapi", [(b"X-Webhook-Secret", b"a" * 4000)], b"{}", True))
    @example(req=HostileRequest("POST", "/hooks/open", [], b'{"payload":[' + b"1" * 70_000 + b"]}", True))
    def check(req: HostileRequest) -> None:
        if req.sign_for is not None:
            req.headers = sign(req.sign_for, req.body) + req.headers
            req.signed.append((req.sign_for, req.body))
            req.clean = True
        note(f"request: {req.method} {req.path[:300]!r} chunked={req.chunked} headers={req.headers!r:.600} "
             f"body={req.body[:200]!r} ({len(req.body)} bytes)")
        r = _send(gw.client, req)
        raw_path = httpx.URL(gw.url + req.path).raw_path if r is None else r.request.url.raw_path
        method = req.method.upper() if r is None else r.request.method  # httpx upper-cases it
        want = expected(config, raw_path, method, req.headers, req.body, req.chunked)
        if want is None:
            return
        if r is None:
            assert want.status == 413, f"transport error where {want} was expected"
            return
        tally[r.status_code] = tally.get(r.status_code, 0) + 1
        assert r.status_code < 500, r.text
        assert r.status_code == want.status, (want, r.status_code, r.text[:300])
        if want.status == 400 and want.code is None:
            assert r.text == "Invalid HTTP request received."  # uvicorn's own answer, not the gateway's
            return
        if r.status_code != 200:
            _assert_problem(r, want, head=method == "HEAD")
            # Independent of the model: an intact signed request is never refused as unauthenticated.
            assert not (req.clean and r.status_code == 401), r.text
            return
        name = unquote(raw_path.partition(b"?")[0].decode("ascii"))[len(PREFIX):]
        accepted.add((name, req.body))
        doc = r.json()
        assert doc["request_id"] == r.headers["x-request-id"]
        assert len(doc["events"]) == len(want.events)
        for event, parsed in zip(doc["events"], want.events, strict=True):
            key = dedup_key(name, parsed.event_type, parsed.named_by)
            assert event["dedup_key"] == key
            known = versions.setdefault(key, {})
            if parsed.fingerprint in known:  # this version is stored: a retry
                assert (event["id"], event["status"], event["conflicts_with"]) == (
                    known[parsed.fingerprint], "duplicate", None)
            else:  # new: a conflict when the identity is stored with other content
                first = next(iter(known.values()), None)
                status = parsed.status if first is None else "conflict"
                assert (event["status"], event["conflicts_with"]) == (status, first), (event, known)
                assert event["id"] > max(rows, default=0)  # ids only grow
                known[parsed.fingerprint] = event["id"]
                rows[event["id"]] = (key, status, first)
            # What was accepted can be read back: the event a plugin or the API would serve.
            served = gw.client.get(f"/api/v1/events/{event['id']}")
            assert served.status_code == 200, served.text[:300]
            assert served.json()["dedup_key"] == event["dedup_key"]
        if name != "open":  # auth = "none" takes anything; elsewhere a 200 means we signed it
            assert was_signed(req, SCHEME_OF[name])
        if req.retry:  # every event of a retry is a duplicate of the first copy, forever
            again = _send(gw.client, req)
            assert again is not None and again.status_code == 200, again.text[:300] if again else None
            assert [(e["id"], e["status"], e["dedup_key"], e["conflicts_with"]) for e in again.json()["events"]] == [
                (e["id"], "duplicate", e["dedup_key"], None) for e in doc["events"]]

    check()
    assert tally.get(200, 0) > 5 and sum(tally.values()) - tally.get(200, 0) > 50, tally  # both sides exercised

    # The server still serves, and the store holds exactly what the model accepted.
    assert gw.client.get("/readyz").status_code == 200
    listing = gw.client.get("/api/v1/events", params={"limit": 500})
    assert listing.status_code == 200, listing.text[:300]
    fresh = b'{"type":"position.opened","ticket":"after-the-storm"}'
    [after] = gw.post("/hooks/metacopier", fresh, mc_sign(fresh)).json()["events"]
    assert after["status"] == "stored"
    rows[after["id"]] = (after["dedup_key"], "stored", None)
    kept = details(config)
    stored = {d.event.id: (d.event.dedup_key, d.event.status, d.event.conflicts_with) for d in kept}
    with sqlite3.connect(config.store.path) as db:  # the SQLite schema itself: no column for a body
        rejected_columns = {row[1] for row in db.execute("PRAGMA table_info(rejections)")}
    assert {(d.event.source, d.body) for d in kept} <= accepted | {("metacopier", fresh)}
    assert stored == rows
    assert sum(1 for _, status, _ in rows.values() if status == "conflict") >= 2  # the examples' at least
    assert "body" not in rejected_columns  # refused bodies are never kept, only their size and hash


def test_deep_body_is_served_back_by_the_api(make_config: Callable[..., Config], serve: Serve) -> None:
    """The regression the verifier properties found, end to end: a 300-level body listed and fetched."""
    config = make_config(server={"max_body_bytes": MAX_BODY})
    gw = serve(config)
    body = b'{"type":"position.opened","ticket":"deep-1","x":' + b"[" * 300 + b"]" * 300 + b"}"
    r = gw.post("/hooks/metacopier", body, mc_sign(body))
    assert r.status_code == 200 and r.json()["events"][0]["status"] == "quarantined"
    (event,) = events(config)
    reason = event.quarantine_reason
    assert reason is not None
    assert "nested deeper than 200 levels" in reason
    from gateway.model import load_payload
    assert load_payload(body) is None  # what the API and plugins hand on, instead of failing to serialise


# --- hostile connections do not hold up the others ----------------------------------------------

def _open(url: str, data: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(data)
    return sock


def test_half_sent_and_oversized_requests_do_not_stop_others(make_config: Callable[..., Config],
                                                             serve: Serve) -> None:
    """Connections stuck mid-request, or refused as too large, leave the server serving everyone else."""
    gw = serve(make_config(server={"max_body_bytes": 4096}))
    stuck = [
        _open(gw.url, b"POST /hooks/metacopier HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n{\"type\":"),
        _open(gw.url, b"POST /hooks/pipsync HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{"),
        _open(gw.url, b"POST /hooks/tradrapi HTTP/1.1\r\nHost: x\r\nX-Webhook-Secret: " + b"a" * 3000),
        _open(gw.url, b"POST /hooks/" + b"n" * 5000),
    ]
    try:
        big = _open(gw.url, b"POST /hooks/metacopier HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000
                    + b"\r\n\r\n")
        reply = big.recv(4096)
        assert reply.startswith(b"HTTP/1.1 4") or reply == b"", reply[:80]  # refused by the server, not a 5xx
        big.close()
        for i in range(5):
            body = orjson.dumps({"type": "position.opened", "ticket": f"meanwhile-{i}"})
            r = gw.post("/hooks/metacopier", body, mc_sign(body))
            assert r.status_code == 200 and r.json()["events"][0]["status"] == "stored"
        assert gw.post("/hooks/metacopier", MC_BODY, {}).status_code == 401
    finally:
        for sock in stuck:
            sock.close()
