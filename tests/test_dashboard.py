"""The dashboard in a real browser: Debian's chromium driven by playwright (no browser
download). Signs in, sees a live event arrive, opens its payload, reads the rejection log and
retries a dead delivery."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from gateway.config import Config
from tests.conftest import RunningGateway, send, source_table, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECRET = "dashboard-client-secret-01"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is installed by scripts/setup test")


@pytest.fixture
def gw(make_config: Callable[..., Config], serve: Callable[..., RunningGateway]) -> RunningGateway:
    return serve(make_config(
        only=[source_table("metacopier", "metacopier")],
        plugins=[{"name": "crm", "use": "tests.fanout_plugins:recorder", "options": {"permanent": True}}],
        clients=[{"id": "desk", "secret": SECRET, "scopes": ["events:read", "deliveries:write"]}],
    ))


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        yield context.new_page()
        context.close()
        browser.close()


def opened(position: str, symbol: str = "XAUUSD") -> dict[str, Any]:
    return {"type": "position.opened", "accountId": "acc-7", "position": {"id": position, "symbol": symbol}}


def test_dashboard_live_feed_detail_rejections_and_retry(gw: RunningGateway, page: Page, tmp_path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    external: list[str] = []
    page.on("request", lambda req: None if req.url.startswith(gw.url) else external.append(req.url))
    first = send(gw, opened("before-login"))
    page.goto(gw.url + "/")
    page.fill("input[name=client_id]", "desk")
    page.fill("input[name=client_secret]", "wrong-secret-000000")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("wrong secret")
    page.fill("input[name=client_secret]", SECRET)
    page.click("#login button[type=submit]")
    expect(page.locator(f"tr[data-event-id='{first}']")).to_be_visible()
    expect(page.locator("#live-state")).to_have_text("● live")

    live = send(gw, opened("arrives-live", "BTCUSD"))  # pushed through the SSE stream, no reload
    row = page.locator(f"tr[data-event-id='{live}']")
    expect(row).to_be_visible()
    expect(row).to_contain_text("arrives-live")
    row.click()
    expect(page.get_by_test_id("payload")).to_contain_text('"symbol": "BTCUSD"')
    expect(page.get_by_test_id("event-detail")).to_contain_text("crm")
    page.screenshot(path=str(tmp_path / "events.png"))

    gw.post("/hooks/metacopier", b"{}", {"X-MetaCopier-Signature": "0" * 64})
    gw.flush()  # rejections are written after their answer
    page.click("nav button[data-tab=rejections]")
    expect(page.get_by_test_id("rejections")).to_contain_text("missing_signature")
    expect(page.get_by_test_id("rejections")).to_contain_text("X-MetaCopier-Timestamp header is missing")

    page.click("nav button[data-tab=deliveries]")  # the crm plugin dead-lettered both events
    dead_row = page.locator(f"#delivery-rows tr:has(td:nth-child(2):text-is('{live}'))")

    def dead_row_listed() -> int:  # the list is loaded once: reload it until the dead letter is in
        if not dead_row.count():
            page.select_option("#delivery-status", "pending")
            page.select_option("#delivery-status", "dead")
        return dead_row.count()

    wait_for(dead_row_listed, 10, f"event {live}'s dead delivery in the list", interval=0.2)
    expect(dead_row).to_contain_text("dead")
    expect(page.get_by_test_id("plugin-summary")).to_contain_text("2 dead")
    gw.app.plugins["crm"].permanent = False  # type: ignore[attr-defined]  # the CRM is fixed
    dead_row.locator("button[data-retry]").click()
    expect(page.locator("#status")).to_contain_text("queued again")
    page.select_option("#delivery-status", "delivered")
    expect(page.locator(f"#delivery-rows tr:has(td:nth-child(2):text-is('{live}'))")).to_contain_text("delivered")
    page.screenshot(path=str(tmp_path / "deliveries.png"))
    assert errors == [] and external == []


def test_dashboard_session_cookie_and_signing_in_again_when_the_session_ends(
    make_config: Callable[..., Config], serve: Callable[..., RunningGateway], page: Page
) -> None:
    offset = [0.0]
    gw = serve(make_config(only=[source_table("metacopier", "metacopier")],
                           clients=[{"id": "desk", "secret": SECRET, "scopes": ["events:read"]}]),
               clock=lambda: time.time() + offset[0])
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    page.goto(gw.url + "/")
    page.fill("input[name=client_id]", "desk")
    page.fill("input[name=client_secret]", SECRET)
    offset[0] = -(gw.app.config.api.token_ttl_seconds - 8)  # a session that ends 8 to 9 s from now
    page.click("#login button[type=submit]")
    expect(page.locator("#live-state")).to_have_text("● live")
    offset[0] = 0.0
    (cookie,) = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"], cookie["secure"]) == \
        ("gateway_session", True, "Strict", "/api/", False)  # Secure only over TLS: this is plain http
    assert page.evaluate("document.cookie") == ""  # no script can read it
    page.reload()  # the session survives a reload: no sign-in form
    expect(page.locator("#live-state")).to_have_text("● live")
    expect(page.locator("#login")).to_be_hidden()
    first = send(gw, opened("in-session"))
    expect(page.locator(f"tr[data-event-id='{first}']")).to_be_visible()

    # the stream ends by itself when the token expires, and the dashboard says so
    expect(page.locator("#login")).to_be_visible(timeout=20_000)
    expect(page.locator("#login-error")).to_contain_text("token_expired")
    expect(page.locator("#login-error")).to_contain_text("sign in again")
    late = send(gw, opened("after-expiry"))

    page.fill("input[name=client_id]", "desk")
    page.fill("input[name=client_secret]", SECRET)
    page.click("#login button[type=submit]")
    expect(page.locator(f"tr[data-event-id='{late}']")).to_be_visible()
    expect(page.locator("#live-state")).to_have_text("● live")
    assert errors == []
    assert not [url for url in urls if "access_token" in url or cookie["value"] in url]
