"""Browser security headers on `/`, `/dashboard/*` and `/api/*` (issue 13, item 10), and the
dashboard working under that policy in a real browser, with no violation reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.browser_headers import CONTENT_SECURITY_POLICY
from tests.conftest import MC_BODY, RunningGateway, mc_sign, send, source_table

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECRET = "dashboard-client-secret-01"


@pytest.fixture
def gw(make_config, serve) -> RunningGateway:  # type: ignore[no-untyped-def]
    return serve(make_config(only=[source_table("metacopier", "metacopier")],
                             clients=[{"id": "desk", "secret": SECRET, "scopes": ["events:read"]}]))


def test_pages_and_api_answers_carry_the_browser_headers(gw: RunningGateway) -> None:
    answers = [gw.client.get(path) for path in ("/", "/dashboard/app.js", "/dashboard/style.css", "/api/v1/events",
                                                "/api/v1/stats", "/api/v1/nosuch", "/api/v1/openapi.json")]
    assert [r.status_code for r in answers] == [200, 200, 200, 401, 401, 404, 200]
    for r in answers:
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, r.url
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["script-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    hook = gw.post("/hooks/metacopier", MC_BODY, mc_sign(MC_BODY))  # senders are not browsers: the lean path
    assert hook.status_code == 200 and "content-security-policy" not in hook.headers


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is installed by scripts/setup test")
def test_the_dashboard_signs_in_and_streams_under_the_policy(gw: RunningGateway) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.test_dashboard import ARGS, opened

    first = send(gw, opened("before-login"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            messages: list[str] = []
            page.on("console", lambda message: messages.append(message.text))
            page.add_init_script("document.addEventListener('securitypolicyviolation', "
                                 "e => console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI))")
            page.goto(gw.url + "/")
            page.fill("input[name=client_id]", "desk")
            page.fill("input[name=client_secret]", SECRET)
            page.click("#login button[type=submit]")
            expect(page.locator(f"tr[data-event-id='{first}']")).to_be_visible()
            expect(page.locator("#live-state")).to_have_text("● live")
            live = send(gw, opened("arrives-live"))
            expect(page.locator(f"tr[data-event-id='{live}']")).to_be_visible()
        finally:
            browser.close()
    assert not [m for m in messages if "CSP" in m or "Content Security Policy" in m], messages
