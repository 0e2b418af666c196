"""Secrets never leak: not into logs, responses, metrics, the event store, tracebacks or `repr`.

The end-to-end test runs the real `gateway run` with a config that holds a known, random secret
in every setting that takes one, drives every failure mode we know of (listed in
`test_no_secret_leaks_through_any_output`), collects every output (process output, every HTTP
response with its headers, /metrics, the SSE stream, what plugins wrote and sent, every byte of
every file under the store folder, a backup) and searches all of it for every secret in every
form it could leak in (see `leak_forms`).

How the inputs keep the search meaningful: the gateway stores what an *authenticated* sender sent
(its body and non-credential headers), on purpose. So authenticated requests carry *junk*
markers (random values that are not configured anywhere) in their bodies and custom headers, and
the test asserts that the junk IS found where events are shown: that proves the search sees the
channels that hold sender data. Configured secrets are sent only where nothing may keep them: in
requests that fail authentication (anywhere: body, query, headers, path), in the query string of
authenticated requests (never stored), and in the credential headers (stripped before storing).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import os
import secrets
import signal
import socket
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from gateway.config import ConfigError, load_config
from tests.conftest import GATEWAY, ROOT, free_port, run_gateway, wait_for

DASHBOARD = ROOT / "gateway" / "dashboard"
WINDOW = 16  # a leaked excerpt of 19+ characters contains an aligned window this long


# --- the search --------------------------------------------------------------------------------


def leak_forms(value: bytes) -> dict[bytes, str]:
    """Every byte string whose presence would reveal `value` (or enough of it to matter).

    Raw, percent-encoded, hex (both cases), excerpts (16-byte windows every 4 bytes, which any
    leaked excerpt of 19+ bytes contains, e.g. a "first 20 characters" in an error message), base64
    and base64url as they appear anywhere inside a longer encoded blob (three alignments, minus the
    edge characters that depend on neighbouring bytes: this catches a secret inside an HTTP Basic
    header or a body_base64), and SHA-1 hex (TradrAPI's credential on the wire) with its excerpts.
    Not searched: hashes of secrets that are not usable credentials (a rejected body's SHA-256 is
    kept for forensics; it would only be the SHA-256 of a secret if the body were exactly that
    secret) and HMACs computed with a secret (signatures are designed to be public).
    """
    forms: dict[bytes, str] = {}
    for form, label in ((value, "raw"), (quote(value, safe="").encode(), "percent-encoded"),
                        (value.hex().encode(), "hex"), (value.hex().upper().encode(), "HEX")):
        forms.setdefault(form, label)
    for i in range(0, len(value) - WINDOW + 1, 4):
        forms.setdefault(value[i:i + WINDOW], f"excerpt at {i}")
    for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        for shift in range(3):
            text = encode(b"\0" * shift + value)
            inner = text[4 if shift else 0:-4]
            if len(inner) >= 12:
                forms.setdefault(inner, f"{name} (alignment {shift})")
    sha1 = hashlib.sha1(value).hexdigest()
    for digest in (sha1, sha1.upper()):
        forms.setdefault(digest.encode(), "SHA-1 hex")
        for i in range(0, len(digest) - WINDOW + 1, 4):
            forms.setdefault(digest[i:i + WINDOW].encode(), f"SHA-1 hex excerpt at {i}")
    return forms


def find_leaks(channels: Mapping[str, bytes], values: Mapping[str, bytes],
               allowed: Mapping[str, tuple[str, ...]] | None = None) -> list[str]:
    """`name: form in channel` for every form of every value found in a channel, except where
    `allowed[name]` lists a prefix of that channel's name (a place the value belongs)."""
    allowed = allowed or {}
    found = []
    for name, value in values.items():
        forms = leak_forms(value)
        for channel, data in channels.items():
            if channel.startswith(allowed.get(name, ("\0",))):
                continue
            hits = sorted({label for form, label in forms.items() if form in data})
            if hits:
                found.append(f"{name}: {', '.join(hits)} in {channel}")
    return found


def test_the_search_finds_each_form_it_claims() -> None:
    value = secrets.token_urlsafe(30).encode()
    planted = {
        "raw": b"x" + value + b"y",
        "excerpt": b"got '" + value[:19] + b"...'",
        "basic": b"Authorization: Basic " + base64.b64encode(b"dash:" + value),
        "body_base64": base64.b64encode(b'{"k":"' + value + b'"}'),
        "urlsafe": base64.urlsafe_b64encode(b"ab" + value),
        "hex": value.hex().encode(),
        "sha1": b"x-webhook-secret: " + hashlib.sha1(value).hexdigest().encode(),
        "sha1 excerpt": hashlib.sha1(value).hexdigest()[5:25].encode(),
        "percent": b"?s=" + quote(b"/+" + value, safe="").encode(),
    }
    hits = find_leaks(planted, {"s": value})
    assert [hit.rsplit(" in ", 1)[1] for hit in hits] == list(planted)
    clean = {"other": secrets.token_urlsafe(400).encode(), "near": value[:15] + b"~" + value[15:30]}
    assert find_leaks(clean, {"s": value}) == []
    assert find_leaks(planted, {"s": value}, allowed={"s": ("raw", "ex", "b", "hex", "sha1", "url", "per")}) == []


def test_secret_scanner_finds_secrets_and_tradrapi_key_hashes_in_any_case() -> None:
    from gateway._secret import Secret, SecretScanner

    key, other = _token("key"), _token("other")
    scanner = SecretScanner([Secret(key), Secret(other)])
    sha1 = hashlib.sha1(key.encode()).hexdigest()
    assert scanner.found_in(f"Bearer {key}") and scanner.found_in(sha1.upper()) and scanner.found_in(other.lower())
    assert not scanner.found_in(key[:-1]) and not scanner.found_in("position.opened")
    assert scanner.redact(f"tr/{key}/{sha1.upper()}") == "tr/[secret]/[secret]"
    assert SecretScanner([]).redact(key) == key and not SecretScanner([]).found_in(key)


# --- the secrets and the config ----------------------------------------------------------------


def _token(prefix: str, size: int = 30) -> str:
    return prefix + secrets.token_urlsafe(size)


def configured_secrets() -> dict[str, str]:
    """One fresh random secret per setting that takes one (env: ones are read from the
    environment). The prefixes only make failure messages readable."""
    return {
        "mc": _token("mcHmac"),  # MetaCopier HMAC, literal
        "mc_env": _token("mcOld"),  # its rotated predecessor, env:GWT_MC_OLD
        "mc_bearer": _token("mcBearer"),  # MetaCopier bearer token
        "mc_ip": _token("mcAllowlisted"),  # a source only 192.0.2.0/24 may use
        "ps": "whsec_" + secrets.token_urlsafe(24),  # PipSync, used as is
        "ps_env": "whsec_" + secrets.token_urlsafe(24),  # env:GWT_PS_OLD
        "tr": _token("trKey"),  # TradrAPI shared key (the sender sends its SHA-1)
        "tr_env": _token("trOld"),  # env:GWT_TR_OLD
        "client": _token("client"),  # [[clients]] dash
        "client_env": _token("clientEnv"),  # [[clients]] ops, env:GWT_CLIENT
        "http_key": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),  # http plugin, base64 key
        "http_env": _token("hookEnv"),  # the other http plugin's secret, env:GWT_HOOK_SECRET
        "http_header": _token("hookHeader"),  # a static header the http plugin sends downstream
        "url_password": _token("urlPass", 18),  # credentials inside plugin URLs
        "url_token": _token("urlToken", 18),
        "exec_env": _token("execEnv"),  # an exec plugin's env option
        "plugin_key": _token("pluginKey"),  # a third-party plugin's option
    }


ENV_SECRETS = {"mc_env": "GWT_MC_OLD", "ps_env": "GWT_PS_OLD", "tr_env": "GWT_TR_OLD",
               "client_env": "GWT_CLIENT", "http_env": "GWT_HOOK_SECRET"}


def secret_values(s: Mapping[str, str]) -> dict[str, bytes]:
    values = {name: value.encode() for name, value in s.items()}
    # the http plugin's HMAC key is the base64-decoded part of its whsec_ secret
    values["http_key_bytes"] = base64.b64decode(s["http_key"].removeprefix("whsec_"))
    return values


def config_text(s: Mapping[str, str], receiver_port: int, closed_port: int, port: int = 8080) -> str:
    return f"""
[server]
port = {port}  # `gateway send` and `gateway tail` find the gateway here
max_body_bytes = 4096
shutdown_timeout_seconds = 6

[store]
path = "store/gateway.db"
busy_timeout_ms = 300

[[sources]]
name = "mc"
scheme = "metacopier"
secrets = ["{s['mc']}", "env:GWT_MC_OLD"]

[[sources]]
name = "mcb"
scheme = "metacopier"
auth = "bearer"
secret = "{s['mc_bearer']}"

[[sources]]
name = "mcip"
scheme = "metacopier"
secret = "{s['mc_ip']}"
allow_ips = ["192.0.2.0/24"]

[[sources]]
name = "ps"
scheme = "pipsync"
secrets = ["{s['ps']}", "env:GWT_PS_OLD"]

[[sources]]
name = "tr"
scheme = "tradrapi"
secrets = ["{s['tr']}", "env:GWT_TR_OLD"]

[[plugins]]
name = "journal"
use = "jsonl"
[plugins.options]
path = "journal.jsonl"

[[plugins]]
name = "hook"
use = "http"
max_attempts = 3
retry_backoff_seconds = 0.05
retry_backoff_max_seconds = 0.1
[plugins.options]
url = "http://svc:{s['url_password']}@127.0.0.1:{receiver_port}/events?token={s['url_token']}"
secret = "{s['http_key']}"
headers = {{ X-Api-Key = "{s['http_header']}" }}

[[plugins]]
name = "hook_down"
use = "http"
max_attempts = 3
retry_backoff_seconds = 0.05
retry_backoff_max_seconds = 0.1
[plugins.options]
url = "http://svc:{s['url_password']}@127.0.0.1:{closed_port}/events?token={s['url_token']}"
secret = "env:GWT_HOOK_SECRET"

[[plugins]]
name = "script"
use = "exec"
max_attempts = 2
retry_backoff_seconds = 0.05
retry_backoff_max_seconds = 0.1
[plugins.options]
command = ["sh", "-c", "cat > /dev/null; echo 'downstream refused the event' >&2; exit 75"]
env = {{ NOTIFY_TOKEN = "{s['exec_env']}" }}

[[plugins]]
name = "risk"
use = "tests.secret_plugins:risk_engine"
max_attempts = 2
retry_backoff_seconds = 0.05
retry_backoff_max_seconds = 0.1
[plugins.options]
api_key = "{s['plugin_key']}"

[[clients]]
id = "dash"
secret = "{s['client']}"
scopes = ["events:read", "deliveries:write"]

[[clients]]
id = "ops"
secret = "env:GWT_CLIENT"
"""


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --- processes and requests --------------------------------------------------------------------


def environment(s: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)  # the third-party-style plugin lives in tests/
    env.update({var: s[name] for name, var in ENV_SECRETS.items()})
    return env


def cli(outputs: dict[str, bytes], label: str, args: list[str], cwd: Path, env: Mapping[str, str]) -> str:
    proc = subprocess.run([GATEWAY, *args], cwd=cwd, env=env, capture_output=True, timeout=60)
    outputs[f"cli {label}"] = proc.stdout + b"\n" + proc.stderr
    return proc.stdout.decode() + proc.stderr.decode()


def start_logging_json(config: Path, port: int, log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    return run_gateway(["run", "--config", str(config), "--port", str(port), "--log-format", "json"],
                       cwd=config.parent, port=port, log=log, env=env)


def dump(response: httpx.Response) -> bytes:
    head = f"{response.status_code} {response.reason_phrase}\n" + "".join(
        f"{k}: {v}\n" for k, v in response.headers.multi_items())
    return head.encode() + b"\n" + response.content


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes no HTTP client would, and read whatever comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def mc_headers(body: bytes, secret: str, ts_ms: int | None = None) -> dict[str, str]:
    ts = str(int(time.time() * 1000) if ts_ms is None else ts_ms)
    mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-MetaCopier-Timestamp": ts, "X-MetaCopier-Signature": mac, "Content-Type": "application/json"}


def ps_v1(body: bytes, secret: str, t: int) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


class Receiver(http.server.ThreadingHTTPServer):
    """The local service the `hook` plugin posts to: records every request; refuses PipSync events
    with a 400 (a permanent failure), accepts the rest."""

    daemon_threads = True

    def __init__(self) -> None:
        self.captured: list[bytes] = []
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.captured.append(self.requestline.encode() + b"\n" + bytes(self.headers) + body)
        refuse = b'"source":"ps"' in body
        self.send_response(400 if refuse else 204)
        reply = b"this receiver takes no PipSync events" if refuse else b""
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def wait_until_settled(client: httpx.Client, token: str) -> None:
    """Until no delivery is pending (each plugin has delivered or dead-lettered everything)."""

    def pending() -> httpx.Response:
        return client.get("/api/v1/deliveries", params={"status": "pending", "limit": 1},
                          headers={"Authorization": f"Bearer {token}"})

    def settled() -> bool:
        r = pending()
        return r.status_code == 200 and not r.json()["deliveries"]

    wait_for(settled, 40, "every delivery to be delivered or dead-lettered", seen=lambda: pending().text, interval=0.1)


# --- the end-to-end test -----------------------------------------------------------------------


def test_no_secret_leaks_through_any_output(tmp_path: Path, receiver: Receiver) -> None:
    s = configured_secrets()
    junk = {"body": _token("junkBody"), "header": _token("junkHeader")}  # sender data: stored on purpose
    wrong = {"mc": _token("wrongMc"), "ps": "whsec_" + secrets.token_urlsafe(20), "tr": _token("wrongTr"),
             "client": _token("wrongClient")}  # secrets of nobody: a forged or misconfigured sender
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # nothing listens here once closed
    port = free_port()
    config = write_private(tmp_path / "gateway.toml", config_text(s, receiver.server_address[1], closed_port, port))
    env = environment(s)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "run.log"
    outputs: dict[str, bytes] = {}
    counter = iter(range(10**6))

    def keep(label: str, response: httpx.Response) -> httpx.Response:
        outputs[f"http {next(counter):03d} {label}"] = dump(response)
        return response

    check = cli(outputs, "check-config", ["check-config", "--config", str(config)], tmp_path, env)
    assert ": OK:" in check and "warning" not in check  # mode 0600: no permission warning
    proc = start_logging_json(config, port, log, env)
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            def post(label: str, path: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
                return keep(label, http.post(path, content=body, headers=dict(headers)))

            now = int(time.time())
            # -- authenticated requests: junk in body and custom headers (stored); configured
            #    secrets only in the query string (never stored) and in credential headers (stripped)
            mc_body = orjson.dumps({"type": "position.opened", "note": junk["body"],
                                    "position": {"id": "p-1", "symbol": "EURUSD"}})
            r = post("mc valid", f"/hooks/mc?token={s['mc']}", mc_body,
                     {**mc_headers(mc_body, s["mc"]), "X-Trace": junk["header"]})
            assert r.status_code == 200 and r.json()["events"][0]["status"] == "stored", r.text
            junk_event = r.json()["events"][0]["id"]
            assert post("mc duplicate", "/hooks/mc", mc_body, mc_headers(mc_body, s["mc"])).json()[
                "events"][0]["status"] == "duplicate"
            body = orjson.dumps({"type": "position.closed", "position": {"id": "p-1"}})
            assert post("mc rotated secret", "/hooks/mc", body, mc_headers(body, s["mc_env"])).status_code == 200
            body = b'{"type": "position.opened", not json'
            assert post("mc quarantined", "/hooks/mc", body, mc_headers(body, s["mc"])).json()[
                "events"][0]["status"] == "quarantined"
            body = orjson.dumps({"type": "position.opened", "position": {"id": "b-1"}})
            assert post("mcb bearer, also copied by a proxy", "/hooks/mcb", body, {
                "Authorization": f"Bearer {s['mc_bearer']}",
                "X-Forwarded-Authorization": f"Bearer {s['mc_bearer']}"}).status_code == 200
            body = orjson.dumps({"type": "trade.opened", "id": "evt_1", "data": {"position_id": "771"}})
            sig = f"t={now},v1={ps_v1(body, wrong['ps'], now)},v1={ps_v1(body, s['ps_env'], now)}"
            assert post("ps valid (second v1)", "/hooks/ps", body, {"X-PipSync-Signature": sig}).status_code == 200
            tr_body = orjson.dumps({"payload": [
                {"eventType": "open_position", "accountId": 9, "payload": {"id": 1, "symbol": "EURUSD"}},
                {"eventType": "balance_operation", "accountId": 9, "payload": {"id": 2}}], "count": 2})
            tr_sha1 = hashlib.sha1(s["tr"].encode()).hexdigest()
            assert post("tr valid", "/hooks/tr", tr_body, {"x-webhook-secret": tr_sha1}).status_code == 200
            body = orjson.dumps({"eventType": "account_created", "payload": {"id": 3}})
            # a proxy that copies the credential into a header of its own: the copy is a credential too
            r = post("tr rotated key, credential copied by a proxy", "/hooks/tr", body, {
                "x-webhook-secret": hashlib.sha1(s["tr_env"].encode()).hexdigest().upper(),
                "X-Original-Webhook-Secret": hashlib.sha1(s["tr_env"].encode()).hexdigest()})
            assert r.status_code == 200, r.text

            # -- requests that fail: configured secrets anywhere (nothing of them may be kept)
            leaky = orjson.dumps({"type": "position.opened", "secret": s["mc"], "token": s["mc_bearer"],
                                  "position": {"id": "x-1"}})
            cases: list[tuple[str, str, bytes, dict[str, str], int]] = [
                ("mc signed with a wrong secret, secrets in body, query and a custom header",
                 f"/hooks/mc?secret={s['mc']}", leaky, {**mc_headers(leaky, wrong["mc"]), "X-Debug": s["mc"]}, 401),
                ("mc the secret itself as the signature", "/hooks/mc", leaky,
                 {"X-MetaCopier-Timestamp": str(now * 1000), "X-MetaCopier-Signature": s["mc"]}, 401),
                ("mc the secret as sha256= signature", "/hooks/mc", leaky,
                 {"X-MetaCopier-Timestamp": str(now * 1000), "X-Webhook-Signature": "sha256=" + s["mc"]}, 401),
                ("mc no signature, secret in body", "/hooks/mc", f"secret={s['mc']}".encode(), {}, 401),
                ("mc no timestamp", "/hooks/mc", leaky, {"X-MetaCopier-Signature": "0" * 64}, 401),
                ("mc the secret as the timestamp", "/hooks/mc", leaky,
                 {"X-MetaCopier-Timestamp": s["mc"], "X-MetaCopier-Signature": "a" * 64}, 401),
                ("mc stale timestamp, right secret", "/hooks/mc", leaky,
                 mc_headers(leaky, s["mc"], (now - 3600) * 1000), 401),
                ("mc timestamp in the future, right secret", "/hooks/mc", leaky,
                 mc_headers(leaky, s["mc"], (now + 3600) * 1000), 401),
                ("mcb wrong bearer token", "/hooks/mcb", leaky, {"Authorization": f"Bearer {wrong['mc']}"}, 401),
                ("mcb the token without Bearer", "/hooks/mcb", leaky, {"Authorization": s["mc_bearer"]}, 401),
                ("mcb the token as Basic", "/hooks/mcb", leaky,
                 {"Authorization": "Basic " + base64.b64encode(f"x:{s['mc_bearer']}".encode()).decode()}, 401),
                ("mcb the token in another header", "/hooks/mcb", leaky, {"X-Api-Key": s["mc_bearer"]}, 401),
                ("mcip right signature, address not allowed", "/hooks/mcip", leaky, mc_headers(leaky, s["mc_ip"]), 403),
                ("ps the secret itself as the header", "/hooks/ps", leaky, {"X-PipSync-Signature": s["ps"]}, 401),
                ("ps the secret as v1", "/hooks/ps", leaky, {"X-PipSync-Signature": f"t={now},v1={s['ps']}"}, 401),
                ("ps the secret as t", "/hooks/ps", leaky,
                 {"X-PipSync-Signature": f"t={s['ps']},v1={'0' * 64}"}, 401),
                ("ps the secret as v0 beside a wrong v1", "/hooks/ps", leaky,
                 {"X-PipSync-Signature": f"t={now},v0={s['ps']},v1={ps_v1(leaky, wrong['ps'], now)}"}, 401),
                ("ps two t", "/hooks/ps", leaky, {"X-PipSync-Signature": f"t={now},t={s['ps']},v1={'0' * 64}"}, 401),
                ("ps signed with a wrong secret", "/hooks/ps", leaky,
                 {"X-PipSync-Signature": f"t={now},v1={ps_v1(leaky, wrong['ps'], now)}"}, 401),
                ("ps stale, right secret", "/hooks/ps", leaky,
                 {"X-PipSync-Signature": f"t={now - 3600},v1={ps_v1(leaky, s['ps'], now - 3600)}"}, 401),
                ("tr the key itself instead of its SHA-1", "/hooks/tr", tr_body, {"x-webhook-secret": s["tr"]}, 401),
                ("tr SHA-1 of a wrong key", "/hooks/tr", tr_body,
                 {"x-webhook-secret": hashlib.sha1(wrong["tr"].encode()).hexdigest()}, 401),
                ("tr the right SHA-1 in the wrong header, key in body", "/hooks/tr", s["tr"].encode(),
                 {"X-Api-Key": tr_sha1}, 401),
                ("tr the SHA-1 plus a character", "/hooks/tr", tr_body, {"x-webhook-secret": tr_sha1 + "0"}, 401),
                ("unknown source named by a secret", f"/hooks/{s['mc']}", leaky, mc_headers(leaky, s["mc"]), 404),
                ("secret after the source name", f"/hooks/tr/{s['tr']}", tr_body, {"x-webhook-secret": tr_sha1}, 404),
                ("client secret as a source name", f"/hooks/{s['client']}?k={s['client_env']}", b"{}", {}, 404),
                ("oversized body announced", "/hooks/mc", leaky * 100, mc_headers(leaky * 100, s["mc"]), 413),
            ]
            for label, path, body, headers, status in cases:
                r = post(label, path, body, headers)
                assert r.status_code == status, (label, r.status_code, r.text)
            r = keep("GET with a secret in the query", http.get(f"/hooks/mc?secret={s['mc']}"))
            assert r.status_code == 405

            def chunks() -> Iterator[bytes]:
                for _ in range(50):
                    yield leaky

            r = keep("oversized body streamed (chunked)", http.post("/hooks/mc", content=chunks(),
                                                                  headers=mc_headers(leaky, s["mc"])))
            assert r.status_code == 413
            # what no client library sends: malformed framing and headers, secrets inside
            for i, raw in enumerate([
                f"POST /hooks/mc HTTP/1.1\r\nHost: x\r\nContent-Length: {s['mc']}\r\n\r\n".encode(),
                f"POST /hooks/ps HTTP/1.1\r\nHost: x\r\nX-PipSync-Signature {s['ps']}\r\n\r\n".encode(),
                f"POST /hooks/{s['tr']} HTTP/1.1 junk\r\nHost: x\r\n\r\n".encode(),
                b"POST /hooks/tr HTTP/1.1\r\nHost: x\r\nx-webhook-secret: " + s["tr"].encode() + b"\x01\r\n\r\n",
                f"POST /hooks/mc HTTP/1.1\r\nHost: x\r\n{s['mc']}: 1\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
                f"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{s['client']}".encode(),
            ]):
                outputs[f"raw {i}"] = raw_exchange(port, raw)

            # -- the store cannot commit: another process holds the write lock
            with sqlite3.connect(tmp_path / "store" / "gateway.db", timeout=10) as lock:
                lock.execute("BEGIN IMMEDIATE")
                body = orjson.dumps({"type": "position.opened", "position": {"id": "locked-1"}})
                r = post("store locked", f"/hooks/mc?token={s['mc']}", body, mc_headers(body, s["mc"]))
                lock.rollback()
            assert r.status_code == 503, r.text

            # -- the token endpoint and the read API
            form = {"grant_type": "client_credentials", "client_id": "dash"}
            token_cases: list[tuple[str, dict[str, str], tuple[str, str] | None, int]] = [
                ("token form wrong secret", {**form, "client_secret": wrong["client"]}, None, 400),
                ("token form another client's secret", {**form, "client_secret": s["client_env"]}, None, 400),
                ("token form a source secret", {**form, "client_secret": s["mc"]}, None, 400),
                ("token form secret as client id", {**form, "client_id": s["client"], "client_secret": "x"},
                 None, 400),
                ("token Basic wrong secret", {"grant_type": "client_credentials"}, ("dash", wrong["client"]), 401),
                ("token right secret, bad grant", {**form, "grant_type": s["client"], "client_secret": s["client"]},
                 None, 400),
                ("token right secret, bad scope", {**form, "client_secret": s["client"], "scope": s["client_env"]},
                 None, 400),
            ]
            for label, data, basic, status in token_cases:
                r = keep(label, http.post("/oauth/token", data=data, auth=basic))
                assert r.status_code == status, (label, r.text)
            r = keep("token garbled Basic", http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                                      headers={"Authorization": f"Basic {s['client']}!"}))
            assert r.status_code == 401
            r = keep("token-ok form", http.post("/oauth/token", data={**form, "client_secret": s["client"]}))
            assert r.status_code == 200, r.text
            token = r.json()["access_token"]
            r = keep("token-ok Basic", http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                                 auth=("ops", s["client_env"])))
            assert r.status_code == 200, r.text
            tokens = {"token_dash": token.encode(), "token_ops": r.json()["access_token"].encode()}
            auth = {"Authorization": f"Bearer {token}"}
            for label, headers in [
                ("api client secret as token", {"Authorization": f"Bearer {s['client']}"}),
                ("api source secret as token", {"Authorization": f"Bearer {s['mc']}"}),
                ("api Basic instead of a token", {"Authorization": "Basic " + base64.b64encode(
                    f"dash:{s['client']}".encode()).decode()}),
                ("api tampered token", {"Authorization": f"Bearer {token[:-2]}xx"}),
                ("api no token", {}),
            ]:
                assert keep(label, http.get("/api/v1/events", headers=headers)).status_code == 401
            r = keep("api cursor forged from a secret", http.get(
                "/api/v1/events", params={"cursor": s["client"]}, headers=auth))
            assert r.status_code == 400
            r = keep("api bad parameters", http.get("/api/v1/events", params={"since": s["mc"], "limit": s["mc"]},
                                                    headers=auth))
            assert r.status_code == 400
            r = keep("sse token is a client secret", http.get(
                "/api/v1/stream", headers={"Authorization": f"Bearer {s['client']}"}))
            assert r.status_code == 401
            r = keep("sse token in the URL", http.get("/api/v1/stream", params={"access_token": token}))
            assert r.status_code == 400  # refused, and (like every output here) never echoed

            wait_until_settled(http, token)
            dead = keep("api dead deliveries", http.get("/api/v1/deliveries", params={"status": "dead"},
                                                        headers=auth)).json()["deliveries"]
            assert {d["plugin"] for d in dead} == {"hook", "hook_down", "script", "risk"}, dead
            r = keep("api retry a dead delivery", http.post(f"/api/v1/deliveries/{dead[0]['id']}/retry",
                                                            headers=auth))
            assert r.status_code == 202
            replayed = cli(outputs, "replay", ["replay", "--config", str(config), "--plugin", "hook_down", "--dead"],
                           tmp_path, env)
            assert "queued again" in replayed
            wait_until_settled(http, token)

            for label, path in [("events", "/api/v1/events?limit=1000"), ("stats", "/api/v1/stats"),
                                ("deliveries", "/api/v1/deliveries?limit=1000"),
                                ("rejections", "/api/v1/rejections?limit=1000"), ("openapi", "/api/v1/openapi.json")]:
                assert keep(f"api {label}", http.get(path, headers=auth)).status_code == 200
            events = orjson.loads(outputs[next(k for k in outputs if k.endswith("api events"))].split(b"\n\n", 1)[1])
            for event in events["events"]:
                assert keep(f"api event {event['id']}", http.get(f"/api/v1/events/{event['id']}",
                                                                 headers=auth)).status_code == 200
            rejections = http.get("/api/v1/rejections?limit=1000", headers=auth).json()["rejections"]
            assert len(rejections) >= len(cases) + 3
            for label, path in [("metrics", "/metrics"), ("healthz", "/healthz"), ("readyz", "/readyz"),
                                ("dashboard", "/"), ("not found", f"/api/v1/{s['mc']}")]:
                keep(label, http.get(path))
            for asset in sorted(DASHBOARD.iterdir()):
                assert keep(f"dashboard {asset.name}", http.get(f"/dashboard/{asset.name}")).status_code == 200

            # the live stream: every event from the start (then hang up), and a resume position
            # too large for SQLite (an internal error today: its traceback is searched as well)
            sse = b""
            with http.stream("GET", "/api/v1/stream", params={"since": "0"}, headers=auth) as stream:
                for chunk in stream.iter_bytes():
                    sse += chunk
                    if sse.count(b"event: event") >= len(events["events"]):
                        break
            outputs["sse"] = sse
            assert sse.count(b"event: event") == len(events["events"])
            try:
                with http.stream("GET", "/api/v1/stream", params={"since": "9" * 30}, headers=auth,
                                 timeout=5) as stream:
                    outputs["sse overflow"] = b"".join(stream.iter_bytes())
            except httpx.HTTPError as exc:
                outputs["sse overflow"] = str(exc).encode()

        # -- the command line against the running gateway and its store
        for label, args in [
            ("events", ["events", "--limit", "1000"]), ("events --json", ["events", "--json", "--limit", "1000"]),
            ("deliveries", ["deliveries", "--limit", "1000"]),
            ("deliveries --json", ["deliveries", "--json", "--limit", "1000"]),
            ("send mc", ["send", "mc"]), ("send mcb", ["send", "mcb"]), ("send tr", ["send", "tr"]),
            ("send ps", ["send", "ps", "--event", "trade.closed"]),
            ("tail", ["tail", "--client", "dash", "--since", "0", "--count", "3"]),
            ("backup", ["backup", str(tmp_path / "backup.db")]),
        ]:
            cli(outputs, label, [*args, "--config", str(config)], tmp_path, env)
        # a client whose secret the gateway does not know: tail says so and stops (no retry loop)
        wrong_client = write_private(tmp_path / "wrong-client.toml", config.read_text().replace(s["client"],
                                                                                             wrong["client"]))
        refused = cli(outputs, "tail wrong secret", ["tail", "--config", str(wrong_client), "--client", "dash",
                                                     "--count", "1"], tmp_path, env)
        assert "the gateway refused client 'dash'" in refused and "invalid_client" in refused, refused
        assert outputs["cli events --json"].count(b'"dedup_key"') == len(events["events"]) == 8
        assert b"200 OK" in outputs["cli send mcb"] and b"200 OK" in outputs["cli send tr"]
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful shutdown: plugins stop (one raises), last commit
        proc.wait(timeout=30)

    outputs["run log"] = log.read_bytes()
    outputs["journal.jsonl"] = (tmp_path / "journal.jsonl").read_bytes()
    outputs["backup.db"] = (tmp_path / "backup.db").read_bytes()
    outputs["receiver"] = b"\n".join(receiver.captured)
    store_files = sorted(p for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert {p.name for p in store_files} >= {"gateway.db", "api-signing.key"}
    for path in store_files:
        outputs[f"store {path.name}"] = path.read_bytes()
    api_key = (tmp_path / "store" / "api-signing.key").read_bytes()

    # the failure modes really happened (so their outputs are in what is searched)
    run_log = outputs["run log"].decode()
    codes = {orjson.loads(line).get("code") for line in run_log.splitlines() if line.startswith("{")}
    assert {"bad_signature", "malformed_signature", "missing_signature", "stale_timestamp", "future_timestamp",
            "ip_denied", "unknown_source", "method_not_allowed", "payload_too_large",
            "store_unavailable"} <= codes, codes
    assert "dead-lettered" in run_log and "retrying" in run_log
    assert "Traceback (most recent call last)" in run_log  # the plugin that fails to stop
    assert "risk engine refused the session close" in run_log
    # positive controls: what an authenticated sender sent is found where events are shown,
    # so the search below does see these channels
    detail = next(v for k, v in outputs.items() if k.endswith(f"api event {junk_event}"))
    stored = b"".join(data for channel, data in outputs.items() if channel.startswith("store "))
    for channel, data in [("store", stored), *((c, outputs[c]) for c in (
            "cli events --json", "sse", "journal.jsonl", "receiver", "backup.db"))]:
        assert find_leaks({channel: data}, {"junk": junk["body"].encode()}), channel
    assert find_leaks({"detail": detail}, {"junk": junk["body"].encode()})  # inside body_base64
    assert junk["header"].encode() in detail
    # the plugin's static header and URL credentials went where they belong
    assert s["http_header"].encode() in outputs["receiver"] and s["url_token"].encode() in outputs["receiver"]
    assert find_leaks({"receiver": outputs["receiver"]}, {"url_password": s["url_password"].encode()})

    leaks = find_leaks(outputs, {**secret_values(s), **tokens, "api-signing.key": api_key},
                       allowed={"token_dash": ("http", "cli tail"), "token_ops": ("http",),
                                "http_header": ("receiver",), "url_password": ("receiver",),
                                "url_token": ("receiver",), "api-signing.key": ("store api-signing.key",)})
    # the access tokens are only in the token endpoint's answers (and what the test itself sent)
    token_hits = [hit for hit in find_leaks(outputs, tokens) if " in http " in hit]
    assert all("token-ok" in hit for hit in token_hits), token_hits
    assert leaks == [], "\n".join(leaks)


# --- repr, str and config errors ---------------------------------------------------------------


def test_config_and_plugin_objects_never_show_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.plugins.loader import load_plugins

    s = configured_secrets()
    config_path = write_private(tmp_path / "gateway.toml", config_text(s, 1, 2))
    for name, var in ENV_SECRETS.items():
        monkeypatch.setenv(var, s[name])
    config = load_config(config_path)
    plugins = load_plugins(config)
    shown = "\n".join([
        repr(config), str(config), repr(config.sources), repr(config.api), repr(config.plugins),
        *(repr(c) for c in config.api.clients.values()), *(str(c) for c in config.api.clients.values()),
        *(repr(src) for src in config.sources.values()), *(repr(secret) for src in config.sources.values()
                                                            for secret in src.secrets),
        *(f"{secret}" for src in config.sources.values() for secret in src.secrets),
        *(repr(p) for p in config.plugins), *(str(p) for p in config.plugins),
        repr(plugins), *(str(p) for p in plugins.values()), repr(config.literal_secrets), repr(config.warnings),
    ]).encode()
    assert b"Secret('**********')" in shown and b"trKey" not in shown
    assert find_leaks({"repr": shown}, secret_values(s)) == []
    # the secrets are really there (so the assertion above means something)
    assert config.sources["tr"].secrets[1].reveal() == s["tr_env"]
    assert config.plugins[1].options["secret"] == s["http_key"]
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(config.sources["mc"].secrets[0])


def broken_configs(s: Mapping[str, str]) -> dict[str, str]:
    """Configs with a mistake next to (or in) a secret. Each secret used here is its own, so a
    hit names the case."""
    mc_source = '[[sources]]\nname = "mc"\nscheme = "metacopier"\n'
    return {
        "unterminated string": f'{mc_source}secret = "{s["mc"]}\n',
        "unquoted secret": f"{mc_source}secret = {s['mc_bearer']}\n",
        "key without value": f'{mc_source}secret = "{s["mc_ip"]}"\n{s["mc_env"]}\n',
        "secret too short": f'{mc_source}secret = "{s["tr"][:20]}"\n',
        "tradrapi key too long": f'[[sources]]\nname = "t"\nscheme = "tradrapi"\nsecret = "{s["tr_env"] * 4}"\n',
        "secret and secrets": f'{mc_source}secret = "{s["ps"]}x{s["ps"]}"\nsecrets = ["{s["ps_env"]}x{s["ps_env"]}"]\n',
        "secret as a list": f'{mc_source}secret = ["{s["exec_env"]}x{s["exec_env"]}"]\n',
        "secret as a table": f'{mc_source}secret = {{ value = "{s["plugin_key"]}x{s["plugin_key"]}" }}\n',
        "misspelt key": f'{mc_source}secrte = "{s["http_env"]}x{s["http_env"]}"\n',
        "bearer secret too short": f'{mc_source}auth = "bearer"\nsecret = "{s["url_token"][:12]}"\n',
        "auth none with secrets": f'{mc_source}auth = "none"\nallow_ips = ["10.0.0.0/8"]\n'
                                  f'secret = "{s["url_password"]}x{s["url_password"]}"\n',
        "client secret too short": f'{mc_source}secret = "env:GWT_MC_OLD"\n'
                                   f'[[clients]]\nid = "dash"\nsecret = "{s["client"][:15]}"\n',
        "client id is the secret": f'{mc_source}secret = "env:GWT_MC_OLD"\n'
                                   f'[[clients]]\nid = "{s["client_env"]}!"\nsecret = "{s["client_env"]}"\n',
        "client secrets key": f'{mc_source}secret = "env:GWT_MC_OLD"\n'
                              f'[[clients]]\nid = "dash"\nsecrets = ["{s["client"]}x{s["client"]}"]\n',
        "plugin options not a table": f'{mc_source}secret = "env:GWT_MC_OLD"\n'
                                      f'[[plugins]]\nname = "h"\nuse = "http"\noptions = "{s["http_key"]}"\n',
        "http secret not base64": f'{mc_source}secret = "env:GWT_MC_OLD"\n[[plugins]]\nname = "h"\nuse = "http"\n'
                                  f'[plugins.options]\nurl = "http://127.0.0.1:1/"\n'
                                  f'secret = "whsec_!{s["http_header"]}"\n',
        "http unknown option": f'{mc_source}secret = "env:GWT_MC_OLD"\n[[plugins]]\nname = "h"\nuse = "http"\n'
                               f'[plugins.options]\nurl = "http://127.0.0.1:1/"\nsigning_secret = "{s["ps"]}"\n',
        "http url invalid": f'{mc_source}secret = "env:GWT_MC_OLD"\n[[plugins]]\nname = "h"\nuse = "http"\n'
                            f'[plugins.options]\nurl = "http://u:{s["ps_env"]}@127.0.0.1:x{s["ps_env"]}/"\n'
                            f'secret = "{s["ps_env"]}"\n',
        "exec env not strings": f'{mc_source}secret = "env:GWT_MC_OLD"\n[[plugins]]\nname = "x"\nuse = "exec"\n'
                                f'[plugins.options]\ncommand = ["true"]\nenv = {{ A = "{s["exec_env"]}", B = 1 }}\n',
        "custom plugin refuses": f'{mc_source}secret = "env:GWT_MC_OLD"\n[[plugins]]\nname = "r"\n'
                                 f'use = "tests.secret_plugins:risk_engine"\n[plugins.options]\n'
                                 f'api_key = "{s["plugin_key"][:10]}"\n',
        "env variable missing": f'{mc_source}secrets = ["{s["mc"]}", "env:GWT_NOT_SET"]\n',
    }


def test_check_config_names_keys_never_secret_values(tmp_path: Path) -> None:
    s = configured_secrets()
    env = environment(s)
    outputs: dict[str, bytes] = {}
    errors: dict[str, str] = {}
    for i, (label, text) in enumerate(broken_configs(s).items()):
        path = write_private(tmp_path / f"broken-{i}.toml", text)
        out = cli(outputs, label, ["check-config", "--config", str(path)], tmp_path, env)
        assert "config error" in out and str(path) in out, (label, out)
        errors[label] = out
        try:  # the same problem in process: str, repr and the chained cause of the exception
            config = load_config(path, environ={"GWT_MC_OLD": s["mc_env"]})
            from gateway.plugins.loader import load_plugins
            load_plugins(config)
        except ConfigError as exc:
            chain = [exc, exc.__cause__, exc.__context__]
            outputs[f"exception {label}"] = "\n".join(f"{e!s}\n{e!r}" for e in chain if e is not None).encode()
        else:
            raise AssertionError(f"{label}: no ConfigError")
    # shorter secrets (cut to what the case needs) are searched whole
    values = {**secret_values(s), "tr[:20]": s["tr"][:20].encode(), "client[:15]": s["client"][:15].encode(),
              "url_token[:12]": s["url_token"][:12].encode(), "plugin_key[:10]": s["plugin_key"][:10].encode()}
    leaks = find_leaks(outputs, values)
    assert leaks == [], "\n".join(leaks)
    # ... while each error still says which key is wrong
    assert "secrets[0]: is 20 characters" in errors["secret too short"]
    assert "plugins[0] (h).options" in errors["plugin options not a table"]
    assert "clients[0] (dash).secret: must be at least 16 characters" in errors["client secret too short"]
    assert "GWT_NOT_SET" in errors["env variable missing"]


# --- the config file's permissions -------------------------------------------------------------


def test_world_readable_config_with_literal_secrets_is_warned_about(tmp_path: Path) -> None:
    s = configured_secrets()
    env = environment(s)
    literal = config_text(s, 1, 2)
    env_only = """
[store]
path = "store/gateway.db"
[[sources]]
name = "mc"
scheme = "metacopier"
secrets = ["env:GWT_MC_OLD"]
[[clients]]
id = "ops"
secret = "env:GWT_CLIENT"
"""
    outputs: dict[str, bytes] = {}
    for name, text, mode, warned in [("private", literal, 0o600, False), ("group", literal, 0o640, True),
                                     ("world", literal, 0o604, True), ("env-only", env_only, 0o644, False)]:
        path = write_private(tmp_path / f"{name}.toml", text, mode)
        out = cli(outputs, name, ["check-config", "--config", str(path)], tmp_path, env)
        assert ": OK:" in out, out
        lines = [line for line in out.splitlines() if "warning" in line]
        if warned:
            assert len(lines) == 1, out
            assert str(path) in lines[0] and f"chmod 600 {path}" in lines[0], lines
            assert f"{mode:o}"[-3:] in lines[0]
        else:
            assert lines == [], out
        assert stat.S_IMODE(path.stat().st_mode) == mode  # only reported, never changed
    # `gateway run` logs it at start
    path = tmp_path / "world.toml"
    log = tmp_path / "run.log"
    port = free_port()
    proc = start_logging_json(path, port, log, env)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    warnings = [orjson.loads(line) for line in log.read_text().splitlines()
                if line.startswith("{") and orjson.loads(line)["level"] == "warning"]
    assert any(str(path) in w["msg"] and "chmod 600" in w["msg"] for w in warnings), warnings
    outputs["run log"] = log.read_bytes()
    assert find_leaks(outputs, secret_values(s)) == []


def test_permission_check_counts_literal_secrets_of_every_kind(tmp_path: Path) -> None:
    mc = '[[sources]]\nname = "mc"\nscheme = "metacopier"\nsecret = "env:GWT_MC_OLD"\n'
    environ = {"GWT_MC_OLD": "m" * 40}
    literal_kinds = {
        "source": '[[sources]]\nname = "p"\nscheme = "pipsync"\nsecret = "whsec_literal"\n',
        "client": '[[clients]]\nid = "c"\nsecret = "0123456789abcdef"\n',
        "plugin option": '[[plugins]]\nname = "h"\nuse = "http"\n[plugins.options]\nurl = "http://127.0.0.1:1/"\n'
                         'secret = "literal-signing-secret"\n',
        "plugin header": '[[plugins]]\nname = "h"\nuse = "http"\n[plugins.options]\nurl = "http://127.0.0.1:1/"\n'
                         'secret = "env:GWT_MC_OLD"\nheaders = { Authorization = "Bearer abc" }\n',
        "exec env": '[[plugins]]\nname = "x"\nuse = "exec"\n[plugins.options]\ncommand = ["true"]\n'
                    'env = { API_TOKEN = "abc" }\n',
        "url credentials": '[[plugins]]\nname = "h"\nuse = "http"\n[plugins.options]\n'
                           'url = "http://u:pw@127.0.0.1:1/"\nsecret = "env:GWT_MC_OLD"\n',
    }
    for kind, extra in literal_kinds.items():
        path = write_private(tmp_path / "c.toml", mc + extra, 0o644)
        config = load_config(path, environ=environ)
        assert len(config.warnings) == 1 and "chmod 600" in config.warnings[0], (kind, config.warnings)
        path.chmod(0o600)
        assert load_config(path, environ=environ).warnings == (), kind
    path = write_private(tmp_path / "c.toml", mc + '[[plugins]]\nname = "h"\nuse = "http"\n[plugins.options]\n'
                         'url = "http://127.0.0.1:1/hook"\nsecret = "env:GWT_MC_OLD"\n', 0o644)
    assert load_config(path, environ=environ).warnings == ()
    # the warning names the keys, never the values
    warning = load_config(write_private(tmp_path / "d.toml", mc + literal_kinds["source"] + literal_kinds["client"],
                                        0o644), environ=environ).warnings[0]
    assert "sources[1] (p).secrets[0], clients[0] (c).secret" in warning and "0644" in warning
    assert "whsec_literal" not in warning and "0123456789abcdef" not in warning
