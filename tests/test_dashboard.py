"""The console (issue 18) in a real browser: Debian's chromium driven by playwright (no browser is
ever downloaded). One gateway, fed by all three senders over the last hour, serves the read-only
checks: every tab loads with no console error and no request leaving the gateway, the overview's
numbers equal the store's, paging and search find an old event, a position's timeline, no
sideways scrolling from 360 px up. Retrying, counting 1,500 deliveries, the session's end, public
mode and a fresh embedded default get gateways of their own.

Screenshots of each tab at 1440 px are written under the test's tmp_path; with
GATEWAY_DASHBOARD_SCREENSHOTS=1 they also replace docs/dashboard/*.png."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from gateway.app import GatewayApp
from gateway.config import Config, parse_config
from gateway.schemes import pipsync, tradrapi
from tests.conftest import (
    ROOT,
    RunningGateway,
    free_port,
    mc_sign,
    ps_sign,
    run_gateway,
    send,
    source_table,
    tr_sign,
    wait_for,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECRET = "dashboard-client-secret-01"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TABS = ("overview", "events", "positions", "deliveries", "rejections")
WIDTHS = (360, 800, 1440, 1920)
SHOTS_ENV = "GATEWAY_DASHBOARD_SCREENSHOTS"
DOCS_SHOTS = ROOT / "docs" / "dashboard"
ACCOUNT = "6f1c2d7e-5b0a-4c1e-9a53-2f7c8f0b9d11"  # a UUID account, as MetaCopier sends
NEEDLE_ACCOUNT = "acc-needle-7f3a"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is installed by scripts/setup test")


def opened(position: str, symbol: str = "XAUUSD") -> dict[str, Any]:
    return {"type": "position.opened", "accountId": "acc-7", "position": {"id": position, "symbol": symbol}}


# --- a gateway fed over the last hour ---------------------------------------------------------


@dataclass
class Desk:
    """The shared gateway and what was sent to it."""

    gw: RunningGateway
    needle: int = 0  # the oldest event, on the second page
    quarantined_hex: int = 0  # a body that is not UTF-8
    quarantined_text: int = 0
    conflict: int = 0
    ids: dict[str, list[int]] = field(default_factory=dict)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.gw.app.config.store.path}?mode=ro", uri=True)


def iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def mc_position(kind: str, position: str, volume: float, at: float, *, account: str = ACCOUNT,
                symbol: str = "EURUSD", price: float = 1.08512) -> bytes:
    details: dict[str, Any] = {"id": position, "symbol": symbol, "orderType": "Buy", "volume": volume}
    if kind == "position.opened":
        details |= {"openPrice": price, "openTime": iso(at)}
    else:
        details |= {"openPrice": 1.08512, "closePrice": price, "closeTime": iso(at), "profit": round(volume * 120, 2)}
    return orjson.dumps({"type": kind, "timestamp": iso(at), "accountId": account, "position": details})


class Feeder:
    """Sends signed requests as if `minutes` ago: the gateway's clock is moved back for each."""

    def __init__(self, gw: RunningGateway, offset: list[float]) -> None:
        self.gw, self.offset = gw, offset

    def at(self, minutes: float) -> float:
        self.offset[0] = -60 * minutes
        return time.time() + self.offset[0]

    def metacopier(self, minutes: float, body: bytes | None = None, **position: Any) -> list[int]:
        now = self.at(minutes)
        data = body if body is not None else mc_position(at=now, **position)
        r = self.gw.post("/hooks/metacopier", data, mc_sign(data, ts_ms=int(now * 1000)))
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()["events"]]

    def pipsync(self, minutes: float, body: bytes) -> list[int]:
        now = self.at(minutes)
        r = self.gw.post("/hooks/pipsync", body, ps_sign(body, t=int(now)))
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()["events"]]

    def tradrapi(self, minutes: float, body: bytes) -> list[int]:
        self.at(minutes)
        r = self.gw.post("/hooks/tradrapi", body, tr_sign())
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()["events"]]

    def refused(self, minutes: float, path: str, headers: dict[str, str]) -> None:
        self.at(minutes)
        assert self.gw.post(path, b'{"type": "position.opened"}', headers).status_code >= 400


def feed(desk: Desk, offset: list[float]) -> None:
    """About 150 events from the three senders over the last hour, with quarantined bodies, a
    conflict, a position opened and closed in two parts, a close without its open, and refused
    requests."""
    f = Feeder(desk.gw, offset)
    [desk.needle] = f.metacopier(55, kind="position.opened", position="needle-1", volume=2.0, account=NEEDLE_ACCOUNT,
                                 symbol="GBPJPY", price=187.25)
    for minutes in range(52, 0, -2):
        f.tradrapi(minutes + 0.5, tradrapi.sample("open_position", count=4))
        if minutes % 4 == 0:
            f.metacopier(minutes, kind="position.opened", position=f"m{minutes}", volume=0.1 * (minutes % 7 + 1))
        if minutes % 6 == 0:
            f.pipsync(minutes + 1, pipsync.sample("trade.opened", position=f"p{minutes}"))
    desk.ids["42"] = [*f.metacopier(30, kind="position.opened", position="42", volume=1.0),
                      *f.metacopier(20, kind="position.closed", position="42", volume=0.4, price=1.0871),
                      *f.metacopier(10, kind="position.closed", position="42", volume=0.6, price=1.0893)]
    first = f.at(26)
    f.metacopier(26, mc_position("position.opened", "77", 0.5, first))
    [desk.conflict] = f.metacopier(25, mc_position("position.opened", "77", 0.7, first))  # other content
    f.pipsync(15, pipsync.sample("trade.closed", position="lost"))
    [desk.quarantined_hex] = f.metacopier(12, b"\xff\xfe\x00\x01 not UTF-8 \x80\x81")
    [desk.quarantined_text] = f.pipsync(8, b"this is not JSON")
    f.tradrapi(1, tradrapi.sample("balance_operation", count=2))
    f.refused(40, "/hooks/metacopier", {"X-MetaCopier-Signature": "0" * 64})
    f.refused(33, "/hooks/pipsync", {"X-PipSync-Signature": "t=1,v1=" + "0" * 64})
    f.refused(21, "/hooks/nosuch", {})
    f.refused(4, "/hooks/tradrapi", {"x-webhook-secret": "0" * 40})
    f.refused(3, "/hooks/metacopier", {"X-MetaCopier-Signature": "0" * 64})
    offset[0] = 0.0
    desk.gw.flush()


def bearer(gw: RunningGateway) -> dict[str, str]:
    r = gw.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "desk",
                                              "client_secret": SECRET})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def api(gw: RunningGateway, path: str, **params: Any) -> Any:
    r = gw.client.get(path, params=params, headers=bearer(gw))
    assert r.status_code == 200, r.text
    return r.json()


def caught_up(gw: RunningGateway) -> bool:
    """The ledger has projected every event, and every delivery has ended."""
    ledger = api(gw, "/api/v1/positions", limit=1)["ledger"]
    pending = sum(p["pending"] for p in api(gw, "/api/v1/deliveries/summary")["plugins"])
    return bool(ledger["checkpoint"] >= ledger["latest_event_id"] and pending == 0)


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    folder = tmp_path_factory.mktemp("desk")
    offset = [0.0]
    config = parse_config({
        "sources": [source_table("metacopier", "metacopier"), source_table("pipsync", "pipsync"),
                    source_table("tradrapi", "tradrapi")],
        "store": {"path": str(folder / "gateway.db")},
        "plugins": [{"name": "crm", "use": "tests.fanout_plugins:recorder"},
                    {"name": "archive", "use": "tests.fanout_plugins:recorder", "sources": ["pipsync"],
                     "options": {"permanent": True}}],
        "clients": [{"id": "desk", "secret": SECRET, "scopes": ["events:read", "deliveries:write"]}],
    }, origin="test.toml", base_dir=folder)
    with RunningGateway(GatewayApp(config, clock=lambda: time.time() + offset[0])) as gw:
        desk = Desk(gw)
        feed(desk, offset)
        wait_for(lambda: caught_up(gw), 20, "the ledger and the deliveries to catch up")
        yield desk


# --- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


class Console:
    """A page on the gateway that records console errors, page errors and every request that
    goes anywhere but the gateway."""

    # A refused sign-in is a 400, which Chromium reports as a failed resource load.
    EXPECTED = re.compile(r"Failed to load resource: the server responded with a status of 400")

    def __init__(self, page: Page, base: str) -> None:
        self.page, self.base = page, base
        self.errors: list[str] = []
        self.outside: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("request", lambda req: None if req.url.startswith(base + "/") else self.outside.append(req.url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        where = message.location.get("url", "")
        if self.EXPECTED.match(message.text) and where == f"{self.base}/api/v1/session":
            return
        self.errors.append(f"{message.text} ({where})")

    def sign_in(self, client: str = "desk", secret: str = SECRET) -> None:
        self.page.goto(self.base + "/")
        self.page.fill("input[name=client_id]", client)
        self.page.fill("input[name=client_secret]", secret)
        self.page.click("#login button[type=submit]")
        expect(self.page.locator("#main")).to_be_visible()

    def tab(self, name: str) -> None:
        self.page.click(f"#tab-{name}")
        expect(self.page.locator(f"#tab-{name}")).to_have_attribute("aria-selected", "true")
        expect(self.page.locator(f"#{name}")).to_be_visible()
        expect(self.page.locator(f"#{name} .grid, #{name} .empty, #{name} .panel").first).to_be_visible()

    def sideways(self) -> list[str]:
        """What scrolls sideways: the page, or the details panel."""
        found = self.page.evaluate("""() => {
            const out = [];
            const root = document.documentElement;
            if (root.scrollWidth > root.clientWidth) out.push(`page ${root.scrollWidth} > ${root.clientWidth}`);
            for (const node of document.querySelectorAll('#drawer:not([hidden]) .drawer-body, #drawer pre'))
                if (node.scrollWidth > node.clientWidth + 1)
                    out.push(`${node.className} ${node.scrollWidth} > ${node.clientWidth}`);
            return out;
        }""")
        return list(found)

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.outside == [], self.outside


@pytest.fixture
def console(chromium: Browser) -> Iterator[Callable[..., Console]]:
    contexts = []

    def open_console(base: str, scheme: str = "light") -> Console:
        """A page at 1440 x 900 px on the gateway at `base`."""
        context = chromium.new_context(viewport={"width": 1440, "height": 900}, color_scheme=scheme)  # type: ignore[arg-type]
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        contexts.append(context)
        return Console(context.new_page(), base)

    yield open_console
    for context in contexts:
        context.close()


def screenshot(page: Page, folder: Path, name: str, *, full_page: bool = False) -> None:
    """Into `folder`; with GATEWAY_DASHBOARD_SCREENSHOTS=1 also into docs/dashboard/, in 256
    colours (a third of the size, no visible loss on a console's flat colours)."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    if os.environ.get(SHOTS_ENV) == "1":
        from PIL import Image

        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as shot:
            shot.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                DOCS_SHOTS / path.name, optimize=True)


def number(text: str) -> float:
    found = re.search(r"-?[\d,]+(\.\d+)?", text)
    assert found, text
    return float(found.group().replace(",", ""))


# --- the shared gateway's checks ----------------------------------------------------------------


def test_every_tab_loads_with_no_console_error_and_no_outside_request(
        desk: Desk, console: Callable[..., Console], tmp_path: Path) -> None:
    c = console(desk.gw.url)
    page = c.page
    page.goto(desk.gw.url + "/")
    expect(page.locator("link[rel=icon]")).to_have_attribute("href", "/dashboard/favicon.svg")
    icon = desk.gw.client.get("/dashboard/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    page.fill("input[name=client_id]", "desk")
    page.fill("input[name=client_secret]", "wrong-secret-000000")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("wrong secret")
    c.sign_in()

    # the overview lands first, its charts drawn, the latest events live
    expect(page.locator("#tab-overview")).to_have_attribute("aria-selected", "true")
    for source in ("metacopier", "pipsync", "tradrapi"):
        expect(page.locator(f".source[data-source={source}] svg.chart rect.bar").first).to_be_attached()
    expect(page.get_by_test_id("kpi-dead")).to_contain_text("need a retry")
    expect(page.locator("#live-state")).to_have_text("● live")
    live = send(desk.gw, opened("arrives-live"))
    expect(page.locator(f"#overview-latest tr[data-event-id='{live}']")).to_be_visible()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    screenshot(page, shots, "overview", full_page=True)

    c.tab("events")
    expect(page.locator(f"#event-list tr[data-event-id='{live}']")).to_be_visible()
    late = send(desk.gw, opened("on-the-events-tab", "BTCUSD"))  # pushed by the stream, no reload
    expect(page.locator(f"#event-list tr[data-event-id='{late}']")).to_contain_text("BTCUSD")
    screenshot(page, shots, "events")
    page.goto(f"{desk.gw.url}/#/events/{desk.quarantined_hex}")  # a link to one event opens it
    expect(page.get_by_test_id("quarantine-reason")).to_be_visible()
    screenshot(page, shots, "event-detail")
    page.click("#drawer-close")

    c.tab("positions")
    page.locator("[data-open-position='42']").first.click()
    expect(page.get_by_test_id("timeline")).to_be_visible()
    screenshot(page, shots, "positions")
    page.keyboard.press("Escape")
    expect(page.locator("#drawer")).to_be_hidden()

    c.tab("deliveries")
    expect(page.locator("#plugin-summary [data-plugin=archive] [data-count=dead]")).to_have_text(re.compile(r"^[1-9]"))
    expect(page.get_by_test_id("delivery-table")).to_be_visible()
    screenshot(page, shots, "deliveries")
    c.tab("rejections")
    expect(page.get_by_test_id("rejection-table")).to_contain_text("unknown_source")
    screenshot(page, shots, "rejections")

    # dark mode: the same page in the other colour scheme
    dark = console(desk.gw.url, scheme="dark")
    dark.sign_in()
    expect(dark.page.locator(".source[data-source=metacopier] svg.chart").first).to_be_visible()
    background = "getComputedStyle(document.body).backgroundColor"
    assert page.evaluate(background) != dark.page.evaluate(background)
    screenshot(dark.page, shots, "overview-dark", full_page=True)
    dark.assert_clean()
    assert {p.name for p in shots.iterdir()} == {f"{n}.png" for n in (*TABS, "event-detail", "overview-dark")}
    c.assert_clean()


def test_keyboard_reaches_and_operates_every_tab_and_status_messages_clear(
        desk: Desk, console: Callable[..., Console]) -> None:
    c = console(desk.gw.url)
    c.sign_in()
    page = c.page
    expect(page.locator("#tab-overview")).to_be_focused()  # signed in: the keyboard is on the tabs
    page.keyboard.press("Shift+Tab")  # before them, only the skip link
    expect(page.locator("a.skip")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#tab-overview")).to_be_focused()
    outline = "getComputedStyle(document.activeElement).outlineStyle"
    assert page.evaluate(outline) == "solid"  # the focus is visible
    for key, tab in (("ArrowRight", "events"), ("ArrowRight", "positions"), ("End", "rejections"),
                     ("ArrowRight", "overview"), ("ArrowLeft", "rejections"), ("Home", "overview"),
                     ("ArrowRight", "events")):
        page.keyboard.press(key)
        expect(page.locator(f"#tab-{tab}")).to_be_focused()
        expect(page.locator(f"#tab-{tab}")).to_have_attribute("aria-selected", "true")
        expect(page.locator(f"#{tab}")).to_be_visible()
    # an event opens with Enter on its id, and Escape gives the focus back to it
    first = page.locator("#event-list button[data-open-event]").first
    first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#drawer")).to_be_visible()
    expect(page.locator("#drawer-close")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#drawer")).to_be_hidden()
    expect(first).to_be_focused()  # back where it was

    # a status message (copying) is gone once another tab is shown
    page.goto(f"{desk.gw.url}/#/events/{desk.needle}")
    page.get_by_test_id("copy-json").click()
    expect(page.locator("#status")).to_contain_text("Copied the event as JSON")
    copied = orjson.loads(page.evaluate("navigator.clipboard.readText()"))
    assert copied["id"] == desk.needle and copied["account"] == NEEDLE_ACCOUNT and "body_base64" not in copied
    page.keyboard.press("Escape")
    page.click("#tab-positions")
    expect(page.locator("#status")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("")

    # signing out ends the session for good: a reload shows the sign-in page
    page.click("#sign-out")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#login-error")).to_contain_text("You have signed out")
    page.reload()
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    c.assert_clean()


def test_no_sideways_scrolling_from_360_px_and_details_keep_their_width(
        desk: Desk, console: Callable[..., Console]) -> None:
    c = console(desk.gw.url)
    c.sign_in()
    page = c.page
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for tab in TABS:
            c.tab(tab)
            wait_for(lambda: c.sideways() == [], 3, f"{tab} at {width} px not to scroll sideways", seen=c.sideways)
        # the quarantined event's entity is a SHA-256 fallback, 71 characters without a space
        page.goto(f"{desk.gw.url}/#/events/{desk.quarantined_hex}")
        expect(page.get_by_test_id("raw-body")).to_be_visible()
        assert c.sideways() == [], (width, "event detail")
        drawer = page.locator("#drawer").bounding_box()
        assert drawer is not None
        assert drawer["width"] >= min(width, 600)  # never a sliver
        table = page.locator("#event-list table").bounding_box()
        assert table is not None and table["x"] + table["width"] <= width
        page.goto(f"{desk.gw.url}/#/positions/metacopier/{ACCOUNT}/42")
        expect(page.get_by_test_id("timeline")).to_be_visible()
        assert c.sideways() == [], (width, "position detail")
        page.keyboard.press("Escape")
    c.assert_clean()


def overview_counts(page: Page, testid: str, key: str) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for card in page.locator(".source").all():
        for item in card.get_by_test_id(testid).all():  # "Refused elsewhere" names each item's source
            source = item.get_attribute("data-source") or card.get_attribute("data-source") or ""
            found[(source, item.get_attribute(f"data-{key}") or "")] = int(number(item.inner_text().split()[-1]))
    return found


def test_the_overviews_numbers_equal_the_stores(desk: Desk, console: Callable[..., Console]) -> None:
    c = console(desk.gw.url)
    c.sign_in()
    page = c.page
    page.check("#overview-window input[value='24h']", force=True)
    expect(page.get_by_test_id("overview-updated")).to_contain_text("15-minute steps")
    with contextlib.closing(desk.db()) as db:
        events = {(s, st): n for s, st, n in db.execute("SELECT source, status, count(*) FROM events GROUP BY 1, 2")}
        rejections = {(s, code): n for s, code, n in
                      db.execute("SELECT source, code, count(*) FROM rejections GROUP BY 1, 2")}
        deliveries = {(p, st): n for p, st, n in
                      db.execute("SELECT plugin, status, count(*) FROM deliveries GROUP BY 1, 2")}
    shown = overview_counts(page, "events-count", "status")
    assert {k: v for k, v in shown.items() if v} == events
    assert overview_counts(page, "rejections-count", "code") == rejections
    def kpi(name: str) -> float:
        return number(page.get_by_test_id(f"kpi-{name}").locator(".kpi-value").inner_text())

    assert kpi("events") == sum(events.values())
    assert kpi("rejections") == sum(rejections.values())
    assert kpi("dead") == sum(n for (_, status), n in deliveries.items() if status == "dead") > 0
    for plugin in ("crm", "archive"):
        cells = page.locator(f"[data-testid=overview-plugins] tr[data-plugin={plugin}] td")
        assert (number(cells.nth(1).inner_text()), number(cells.nth(3).inner_text())) == \
            (deliveries.get((plugin, "pending"), 0), deliveries.get((plugin, "dead"), 0))

    # the hour's chart: one bar a minute, each as tall as that minute's events
    page.check("#overview-window input[value='1h']", force=True)
    expect(page.get_by_test_id("overview-updated")).to_contain_text("1-minute steps")
    overview = api(desk.gw, "/api/v1/overview", window="1h")
    for source, by_status in overview["events"].items():
        if source not in ("metacopier", "pipsync", "tradrapi"):
            continue
        chart = page.locator(f".source[data-source={source}] svg.chart").first
        titles = chart.locator("rect.bar title").all_text_contents()
        for status, counts in by_status.items():
            drawn = sum(number(t.rsplit(":", 1)[1]) for t in titles if f"· {status}:" in t)
            assert drawn == sum(counts), (source, status)
        shown_latency = page.locator(f".source[data-source={source}] [data-testid=latency] strong").inner_text()
        latency = number(shown_latency) * (1000 if shown_latency.endswith(" s") else 1)
        expected = overview["latency_p99_ms"][source]
        assert expected is not None and abs(latency - expected) <= max(0.051, expected * 0.01), shown_latency
    c.assert_clean()


def test_paging_reaches_an_event_older_than_the_first_hundred_and_search_finds_it(
        desk: Desk, console: Callable[..., Console]) -> None:
    c = console(desk.gw.url)
    c.sign_in()
    page = c.page
    c.tab("events")
    needle = page.locator(f"#event-list tr[data-event-id='{desk.needle}']")
    expect(page.locator("#event-list tr[data-event-id]")).to_have_count(100)
    expect(needle).to_have_count(0)
    pager = page.locator("#event-pager")
    while not needle.count():
        pager.get_by_test_id("older").click()
        expect(pager.get_by_test_id("page")).not_to_contain_text("Page 1:")
    expect(pager.get_by_test_id("page")).to_contain_text("Page 2: events 101\u2013")
    expect(needle).to_contain_text("GBPJPY")
    expect(needle.locator("td[data-label=Side]")).to_have_text("buy")
    expect(needle.locator("td[data-label=Volume]")).to_have_text("2")
    expect(needle.locator("td[data-label=Price]")).to_have_text("187.25")
    pager.get_by_test_id("newer").click()
    expect(pager.get_by_test_id("page")).to_contain_text("Page 1: events 1\u2013100")

    def search(**fields: str) -> None:
        page.click("#event-filters button[type=reset]")
        for name, value in fields.items():
            page.fill(f"#event-filters [name={name}]", value)
        page.click("#event-filters button[type=submit]")

    search(account=NEEDLE_ACCOUNT)
    expect(page.locator("#event-list tr[data-event-id]")).to_have_count(1)
    expect(needle).to_be_visible()
    search(entity="needle-1")  # a position id: the entity position:needle-1
    expect(page.locator("#event-list tr[data-event-id]")).to_have_count(1)
    expect(needle).to_be_visible()
    later = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    search(source="metacopier", since=later)
    expect(page.get_by_test_id("event-table")).to_have_text("No event matches this search.")
    start = (datetime.now(UTC) - timedelta(minutes=58)).strftime("%Y-%m-%dT%H:%M:%S")
    end = (datetime.now(UTC) - timedelta(minutes=50)).strftime("%Y-%m-%dT%H:%M:%S")
    search(since=start, until=end)
    expect(page.locator("#event-list tr[data-event-id]").last).to_have_attribute("data-event-id", str(desk.needle))

    # the conflict badge, and quarantined bodies shown as sent
    search(entity="77")
    expect(page.locator(f"#event-list tr[data-event-id='{desk.conflict}']")).to_contain_text("conflict ≠ #")
    page.goto(f"{desk.gw.url}/#/events/{desk.quarantined_hex}")
    detail = page.get_by_test_id("event-detail")
    expect(detail.get_by_test_id("quarantine-reason")).to_contain_text("Quarantined: ")
    expect(detail.get_by_test_id("raw-body")).to_contain_text("00000000  ff fe 00 01 20 6e 6f 74")
    expect(detail.get_by_test_id("raw")).to_contain_text("as hex (not UTF-8)")
    expect(detail.get_by_test_id("headers")).to_contain_text("x-metacopier-timestamp")
    expect(detail.get_by_test_id("payload")).to_have_count(0)
    expect(detail).not_to_contain_text("null")
    page.goto(f"{desk.gw.url}/#/events/{desk.quarantined_text}")
    expect(page.get_by_test_id("raw-body")).to_have_text("this is not JSON")
    expect(page.get_by_test_id("raw")).to_contain_text("as text (UTF-8)")
    page.get_by_test_id("copy-raw").click()
    assert page.evaluate("navigator.clipboard.readText()") == "this is not JSON"
    c.assert_clean()


def test_a_positions_timeline_shows_its_open_and_closes_and_anomalies_are_acknowledged(
        desk: Desk, console: Callable[..., Console]) -> None:
    c = console(desk.gw.url)
    c.sign_in()
    page = c.page
    c.tab("positions")
    row = page.locator(f"tr[data-position='metacopier/{ACCOUNT}/42']")
    expect(row).to_have_attribute("data-state", "closed")
    row.locator("button[data-open-position]").click()
    timeline = page.get_by_test_id("timeline")
    expect(timeline.locator("li")).to_have_count(3)
    expect(timeline.locator("li").nth(0)).to_have_attribute("data-kind", "position.opened")
    expect(timeline.locator("li").nth(0)).to_contain_text("Opened 1 lots buy at 1.08512")
    expect(timeline.locator("li").nth(1)).to_contain_text("Closed 0.4 lots at 1.0871")
    expect(timeline.locator("li").nth(2)).to_contain_text("Closed 0.6 lots at 1.0893")
    assert [int(x) for x in timeline.locator("li").evaluate_all("els => els.map(e => e.dataset.eventId)")] == \
        desk.ids["42"]
    expect(page.get_by_test_id("position-facts")).to_contain_text("closed")
    timeline.locator(f"[data-open-event='{desk.ids['42'][0]}']").click()  # each entry opens its event
    expect(page.locator("#tab-events")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_test_id("event-detail")).to_contain_text(f"Event {desk.ids['42'][0]}: position.opened")
    page.get_by_test_id("open-position").click()  # and an event leads back to its position
    expect(page.get_by_test_id("timeline").locator("li")).to_have_count(3)
    page.keyboard.press("Escape")

    # the close whose open never came: an open anomaly, acknowledged with a note
    lost = page.locator("#anomaly-list tr[data-kind=close_without_open]")
    expect(lost).to_contain_text("lost")
    lost.locator("button[data-ack]").click()
    page.fill("#confirm-note", "the open went missing in the vendor's outage")
    page.click("#confirm-ok")
    expect(page.locator("#status")).to_contain_text("acknowledged")
    expect(page.locator("#anomaly-list tr[data-kind=close_without_open]")).to_have_count(0)
    page.select_option("#anomaly-filters [name=open]", "")
    page.click("#anomaly-filters button[type=submit]")
    expect(lost).to_contain_text("the open went missing in the vendor's outage")
    c.assert_clean()


# --- gateways of their own ----------------------------------------------------------------------


def test_retry_all_brings_dead_deliveries_back_to_delivered(
        make_config: Callable[..., Config], serve: Callable[..., RunningGateway],
        console: Callable[..., Console]) -> None:
    gw = serve(make_config(
        only=[source_table("metacopier", "metacopier")],
        plugins=[{"name": "crm", "use": "tests.fanout_plugins:recorder", "options": {"permanent": True}}],
        clients=[{"id": "desk", "secret": SECRET, "scopes": ["events:read", "deliveries:write"]}],
    ))
    sent = [send(gw, opened(f"r{n}")) for n in range(3)]
    c = console(gw.url)
    c.sign_in()
    page = c.page
    c.tab("deliveries")
    card = page.locator("#plugin-summary [data-plugin=crm]")
    expect(card.locator("[data-count=dead]")).to_have_text("3 dead")  # refreshed live until all are dead
    expect(page.locator("#delivery-list tr[data-status=dead]")).to_have_count(3)
    expect(page.get_by_test_id("delivery-table")).to_contain_text("this event is refused")
    card.locator("button[data-retry-all]").click()
    expect(page.get_by_test_id("confirm")).to_contain_text("Retry all 3 dead deliveries of crm?")
    page.click("#confirm button[value=cancel]")  # asked first: nothing happens without a yes
    expect(page.locator("#status")).to_have_text("")
    gw.app.plugins["crm"].permanent = False  # type: ignore[attr-defined]  # the CRM is fixed
    card.locator("button[data-retry-all]").click()
    page.click("#confirm-ok")
    expect(page.locator("#status")).to_contain_text("crm: 3 dead deliveries queued again")
    expect(card.locator("[data-count=delivered]")).to_have_text("3 delivered")
    expect(card.locator("[data-count=dead]")).to_have_text("0 dead")
    expect(card.locator("button[data-retry-all]")).to_be_disabled()
    rows = page.locator("#delivery-list tr[data-status=delivered]")
    expect(rows).to_have_count(3)
    assert sorted(int(t.strip("#")) for t in rows.locator("td[data-label=Event]").all_inner_texts()) == sent
    c.assert_clean()


def test_delivery_counts_are_the_stores_with_1500_deliveries(
        make_config: Callable[..., Config], serve: Callable[..., RunningGateway],
        console: Callable[..., Console]) -> None:
    gw = serve(make_config(
        only=[source_table("tradrapi", "tradrapi")],
        plugins=[{"name": "crm", "use": "tests.fanout_plugins:recorder"},
                 {"name": "refuses", "use": "tests.fanout_plugins:recorder", "options": {"permanent": True}}],
        clients=[{"id": "desk", "secret": SECRET, "scopes": ["events:read"]}],
    ))
    for _ in range(15):
        body = tradrapi.sample("open_position", count=100)
        assert gw.post("/hooks/tradrapi", body, tr_sign()).status_code == 200

    def settled() -> bool:
        plugins = {p["plugin"]: p for p in api(gw, "/api/v1/deliveries/summary")["plugins"]}
        return plugins["crm"]["delivered"] == 1500 and plugins["refuses"]["dead"] == 1500

    wait_for(settled, 60, "1,500 deliveries per plugin to end")
    c = console(gw.url)
    c.sign_in()
    c.tab("deliveries")
    crm = c.page.locator("#plugin-summary [data-plugin=crm]")
    refuses = c.page.locator("#plugin-summary [data-plugin=refuses]")
    expect(crm.locator("[data-count=delivered]")).to_have_text("1,500 delivered")
    expect(crm.locator("[data-count=dead]")).to_have_text("0 dead")
    expect(refuses.locator("[data-count=dead]")).to_have_text("1,500 dead")
    expect(refuses.locator("[data-count=delivered]")).to_have_text("0 delivered")
    c.page.select_option("#delivery-status", "dead")
    expect(c.page.locator("#delivery-list tr[data-delivery-id]")).to_have_count(200)  # a page, not the count
    expect(c.page.locator("#delivery-list tr[data-status=delivered]")).to_have_count(0)
    c.assert_clean()


def test_the_session_survives_a_reload_and_ends_with_a_message_when_its_token_expires(
        make_config: Callable[..., Config], serve: Callable[..., RunningGateway],
        console: Callable[..., Console]) -> None:
    offset = [0.0]
    gw = serve(make_config(only=[source_table("metacopier", "metacopier")],
                           clients=[{"id": "desk", "secret": SECRET, "scopes": ["events:read"]}]),
               clock=lambda: time.time() + offset[0])
    c = console(gw.url)
    page = c.page
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    page.goto(gw.url + "/")
    page.fill("input[name=client_id]", "desk")
    page.fill("input[name=client_secret]", SECRET)
    offset[0] = -(gw.app.config.api.token_ttl_seconds - 6)  # a session that ends 6 s from now
    page.click("#login button[type=submit]")
    expect(page.locator("#live-state")).to_have_text("● live")
    offset[0] = 0.0
    (cookie,) = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"], cookie["secure"]) == \
        ("gateway_session", True, "Strict", "/api/", False)  # Secure only over TLS: this is plain http
    assert page.evaluate("document.cookie") == ""  # no script can read it
    c.tab("events")
    page.reload()  # the session survives a reload, on the same tab
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#tab-events")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#live-state")).to_have_text("● live")
    first = send(gw, opened("in-session"))
    expect(page.locator(f"#event-list tr[data-event-id='{first}']")).to_be_visible()

    # it ends by itself when the token expires, and the page says so
    expect(page.locator("#login")).to_be_visible(timeout=15_000)
    expect(page.locator("#login-error")).to_contain_text("token_expired")
    expect(page.locator("#login-error")).to_contain_text("sign in again")
    late = send(gw, opened("after-expiry"))
    c.sign_in()
    page.click("#tab-events")
    expect(page.locator(f"#event-list tr[data-event-id='{late}']")).to_be_visible()
    expect(page.locator("#live-state")).to_have_text("● live")
    assert not [url for url in urls if "access_token" in url or cookie["value"] in url]
    c.assert_clean()


def test_public_mode_skips_the_sign_in_and_no_client_says_how_to_add_one(
        make_config: Callable[..., Config], serve: Callable[..., RunningGateway],
        console: Callable[..., Console]) -> None:
    public = serve(make_config(only=[source_table("metacopier", "metacopier")], api={"public": True}))
    event = send(public, opened("public-1"))
    c = console(public.url)
    c.page.goto(public.url + "/")
    expect(c.page.locator("#main")).to_be_visible()
    expect(c.page.locator("#who")).to_have_text("public read access")
    expect(c.page.locator(f"#overview-latest tr[data-event-id='{event}']")).to_be_visible()
    c.page.click("#sign-out")  # "Sign in": there is no client, so the page says how to add one
    expect(c.page.get_by_test_id("no-clients")).to_contain_text("No API client is configured")
    expect(c.page.get_by_test_id("no-clients")).to_contain_text("var/secrets.toml")
    expect(c.page.locator("#login")).to_be_hidden()
    c.page.click("#login-cancel")
    expect(c.page.locator("#main")).to_be_visible()
    c.assert_clean()

    closed = serve(make_config(only=[source_table("metacopier", "metacopier")]))
    d = console(closed.url)
    d.page.goto(closed.url + "/")
    expect(d.page.get_by_test_id("no-clients")).to_be_visible()
    expect(d.page.get_by_test_id("no-clients")).to_contain_text("[[clients]]")
    expect(d.page.locator("#main")).to_be_hidden()
    d.assert_clean()


def test_a_fresh_embedded_default_signs_in_with_the_printed_credentials(
        tmp_path: Path, console: Callable[..., Console]) -> None:
    port = free_port()
    log = tmp_path / "run.log"
    proc = run_gateway(["run", "--port", str(port)], cwd=tmp_path, port=port, log=log)
    try:
        printed = log.read_text()
        secrets = dict(re.findall(r"^  (metacopier|pipsync|tradrapi): (\S+)$", printed, re.MULTILINE))
        client = re.search(r"client id: (\S+)\n\s*client secret: (\S+)", printed)
        assert client and set(secrets) == {"metacopier", "pipsync", "tradrapi"}, printed
        assert f"the dashboard is at http://127.0.0.1:{port}/" in printed
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as http:
            for path, body, headers in (
                ("/hooks/metacopier", (b := orjson.dumps(opened("fresh-1"))), mc_sign(b, secrets["metacopier"])),
                ("/hooks/pipsync", (p := pipsync.sample("trade.opened")), ps_sign(p, secrets["pipsync"])),
                ("/hooks/tradrapi", tradrapi.sample("open_position", count=2), tr_sign(secrets["tradrapi"])),
            ):
                assert http.post(path, content=body, headers=headers).status_code == 200, path
        c = console(base)
        c.sign_in(client.group(1), client.group(2))
        for tab in TABS:
            c.tab(tab)
        c.tab("events")
        expect(c.page.locator("#event-list tr[data-event-id]")).to_have_count(4)
        c.assert_clean()
        c.page.context.close()  # its live stream would hold the gateway's graceful shutdown
    finally:
        proc.terminate()
        proc.wait(timeout=15)

