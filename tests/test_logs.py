"""Logs of a real `gateway run`: JSON lines off a terminal, the request id on request lines,
one line per rejection with its code, and never a secret or a signature."""

from __future__ import annotations

import logging

import orjson
import pytest

from gateway import logs
from tests.conftest import MC_BODY, MC_SECRET, TR_BODY, TR_KEY, mc_sign, tr_sign
from tests.test_server import start


def test_json_logs_carry_request_ids_codes_and_no_secrets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import hashlib
    import signal

    import httpx

    proc, port = start(tmp_path, f'[[sources]]\nname = "tr"\nscheme = "tradrapi"\nsecret = "{TR_KEY}"\n')
    url = f"http://127.0.0.1:{port}"
    wrong = mc_sign(MC_BODY, "not-the-secret-" + "z" * 30)
    headers = {**wrong, "Authorization": f"Bearer {MC_SECRET}"}
    r1 = httpx.post(f"{url}/hooks/metacopier", content=MC_BODY, headers=headers)
    r2 = httpx.post(f"{url}/hooks/tr", content=TR_BODY, headers={"x-webhook-secret": TR_KEY})
    ok = httpx.post(f"{url}/hooks/tr", content=TR_BODY, headers=tr_sign())
    assert (r1.status_code, r2.status_code, ok.status_code) == (401, 401, 200)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    text = (tmp_path / "run.log").read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    rejected = [line for line in lines if line["msg"] == "request rejected"]
    assert [(r["code"], r["request_id"]) for r in rejected] == [
        ("bad_signature", r1.headers["x-request-id"]), ("malformed_signature", r2.headers["x-request-id"])]
    assert rejected[0]["source"] == "metacopier" and rejected[0]["remote"] == "127.0.0.1"
    for secret in (MC_SECRET, TR_KEY, hashlib.sha1(TR_KEY.encode()).hexdigest(), wrong["X-MetaCopier-Signature"]):
        assert secret not in text


def test_text_format_for_terminals_includes_the_request_id() -> None:
    record = logging.LogRecord("gateway.ingest", logging.WARNING, __file__, 1, "request rejected", None, None)
    record.code = "bad_signature"
    token = logs.request_id.set("abc123")
    try:
        line = logs.TextFormatter().format(record)
        data = orjson.loads(logs.JsonFormatter().format(record))
    finally:
        logs.request_id.reset(token)
    assert "request rejected [abc123] code=bad_signature" in line
    assert data["request_id"] == "abc123" and data["code"] == "bad_signature" and data["level"] == "warning"


def test_uvicorn_lines_carry_no_color_message_nor_ansi_escapes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """uvicorn's own lines ("Started server process", "Uvicorn running on") come with a
    `color_message` extra holding ANSI escapes: neither format may show it (issue 13, item 21)."""
    import signal

    proc, _ = start(tmp_path)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    lines = [orjson.loads(line) for line in (tmp_path / "run.log").read_text().splitlines() if line.strip()]
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert not [line for line in lines if "color_message" in line or "\x1b" in orjson.dumps(line).decode()]
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Started server process [%d]", (42,), None)
    record.color_message = "Started server process [\x1b[36m%d\x1b[0m]"
    for formatter in (logs.TextFormatter(), logs.JsonFormatter()):
        text = formatter.format(record)
        assert "Started server process [42]" in text and "\x1b" not in text and "color_message" not in text


@pytest.mark.parametrize("formatter", [logs.JsonFormatter(), logs.TextFormatter()])
def test_a_token_a_client_put_in_a_url_never_reaches_the_log(formatter: logging.Formatter) -> None:
    # what uvicorn logs for a WebSocket or HTTP request: the path with its query string
    token = "eyJ0eXAi.secret-token-value"
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", f"/api/v1/ws?source=mc&access_token={token}&x=1", "1.1",
                                400), None)
    line = formatter.format(record)
    assert token not in line
    assert "access_token=[redacted]" in line and "source=mc" in line and "&x=1" in line


def test_a_rejection_flood_is_logged_within_a_budget(gateway, caplog) -> None:  # type: ignore[no-untyped-def]
    """Every rejection is answered and counted; the log gets at most a burst of lines and then a
    few a second, each saying how many it held back: a flood cannot fill the disk through it."""
    import time

    from gateway.ingest import REJECTION_LINES_BURST, REJECTION_LINES_PER_SECOND

    caplog.set_level(logging.WARNING, logger="gateway.ingest")
    wrong = mc_sign(MC_BODY, "not-the-secret-" + "z" * 30)
    started = time.monotonic()
    statuses = [gateway.post("/hooks/metacopier", MC_BODY, wrong).status_code for _ in range(300)]
    elapsed = time.monotonic() - started
    assert statuses == [401] * 300
    lines = [r for r in caplog.records if r.getMessage() == "request rejected"]
    assert REJECTION_LINES_BURST <= len(lines) <= REJECTION_LINES_BURST + REJECTION_LINES_PER_SECOND * elapsed + 1
    time.sleep(2 / REJECTION_LINES_PER_SECOND)  # a token back
    assert gateway.post("/hooks/metacopier", MC_BODY, wrong).status_code == 401
    lines = [r for r in caplog.records if r.getMessage() == "request rejected"]
    held_back = sum(r.suppressed for r in lines)  # type: ignore[attr-defined]
    assert held_back == 301 - len(lines) > 0  # every rejection is a line, or counted by a later one
    metrics = gateway.client.get("/metrics").text
    assert 'gateway_rejections_total{code="bad_signature",source="metacopier"} 301.0' in metrics
