// Positions: the ledger (open, partially closed, closed, anomalous) with its lag, one
// position's timeline of events, and the anomalies, open and resolved, acknowledged here.

import { api, segment } from "./api.js";
import {
  $, badge, confirmDialog, decimal, dl, el, formParams, latestOnly, money, remember, reportError, setStatus, table,
  tableRow, when,
} from "./dom.js";
import { openDrawer } from "./drawer.js";
import { eventLink } from "./events.js";
import { go, settle } from "./nav.js";
import { Pager } from "./pager.js";

const PAGE = 100;
const NO_ACCOUNT = "-";  // the account segment of a position's URL when its sender names none
const STATE_NAMES = { open: "open", partially_closed: "partially closed", closed: "closed" };

const state = { positions: null, anomalies: null, positionParams: new URLSearchParams(),
                anomalyParams: new URLSearchParams({ open: "true" }), shown: null };

const loads = { positions: latestOnly(), anomalies: latestOnly(), position: latestOnly() };
const lots = (n) => (n == null ? "—" : decimal(n, 8));

function stateBadge(position) {
  return badge(STATE_NAMES[position.state] || position.state, `state-${position.state}`);
}

function positionLink(source, account, id) {
  return el("button", { type: "button", class: "link", "data-open-position": id,
                        onclick: () => go("positions", source, account || NO_ACCOUNT, id) }, id);
}

// A row opens its position wherever it is clicked (the id's button is the keyboard's way in).
function positionRow(p) {
  const row = tableRow(POSITION_COLUMNS, p, { "data-position": `${p.source}/${p.account}/${p.position_id}`,
                                              "data-state": p.state, class: "opens" });
  row.addEventListener("click", (click) => {
    if (!click.target.closest("button, a") && !window.getSelection().toString()) {
      go("positions", p.source, p.account || NO_ACCOUNT, p.position_id);
    }
  });
  return row;
}

function anomalyBadges(kinds) {
  return kinds.length ? el("span", { class: "badges" }, kinds.map((kind) => badge(kind, "anomaly"))) : "";
}

// --- the ledger -----------------------------------------------------------------------------

const POSITION_COLUMNS = [
  { label: "Position", cell: (p) => positionLink(p.source, p.account, p.position_id), class: "id" },
  { label: "Source", cell: (p) => p.source },
  { label: "Account", cell: (p) => p.account, class: "id" },
  { label: "Symbol", cell: (p) => p.symbol },
  { label: "Side", cell: (p) => p.side },
  { label: "State", cell: stateBadge },
  { label: "Open / opened lots", cell: (p) => `${lots(p.open_volume)} / ${lots(p.opened_volume)}`, class: "num" },
  { label: "Open price", cell: (p) => (p.open_price == null ? "" : decimal(p.open_price, 8)), class: "num" },
  { label: "P/L", cell: (p) => (p.profit == null ? "" : money(p.profit)), class: "num" },
  { label: "Opened (UTC)", cell: (p) => when(p.opened_at), class: "time" },
  { label: "Last event (UTC)", cell: (p) => when(p.last_event_at), class: "time" },
  { label: "Anomalies", cell: (p) => anomalyBadges(p.anomalies.map((a) => a.kind)) },
];

async function loadPositions() {
  const params = new URLSearchParams(state.positionParams);
  params.set("limit", String(PAGE));
  if (state.positions.cursor) params.set("cursor", state.positions.cursor);
  const current = loads.positions();
  const page = await api("/api/v1/positions", { params });
  if (!current()) return;
  remember("sources", ...page.positions.map((p) => p.source));
  const ledger = page.ledger;
  $("#ledger-state").textContent = ledger.checkpoint >= ledger.latest_event_id
    ? `The ledger is up to date (event ${ledger.checkpoint}).`
    : `The ledger has projected events up to ${ledger.checkpoint} of ${ledger.latest_event_id}; ` +
      `${decimal(ledger.lag_seconds, 1)} s behind.`;
  $("#position-list").replaceChildren(table(POSITION_COLUMNS, page.positions, {
    testid: "position-table", caption: "Positions",
    makeRow: positionRow,
    empty: [...state.positionParams].length ? "No position matches this search." : "No positions in the ledger yet.",
  }));
  state.positions.update(page.next_cursor, page.positions.length);
}

// --- one position ---------------------------------------------------------------------------

function timelineEntry(e) {
  const closing = e.kind === "position.closed";
  const what = [closing ? "Closed" : e.kind === "position.opened" ? "Opened" : e.kind,
    e.volume == null ? (closing ? "what was left" : "") : `${lots(e.volume)} lots`,
    e.side && !closing ? e.side : "", e.price == null ? "" : `at ${decimal(e.price, 8)}`].filter(Boolean).join(" ");
  return el("li", { class: `step ${closing ? "close" : "open"}${e.conflict ? " conflict" : ""}`, "data-kind": e.kind,
                    "data-event-id": e.event_id },
    el("div", { class: "step-head" }, el("strong", {}, what), e.profit == null ? null : [" · P/L ", money(e.profit)],
      e.conflict ? badge("conflict: not counted", "conflict") : null),
    el("div", { class: "muted" }, when(e.occurred_at), " · event ", e.event_id ? eventLink(e.event_id) : "pruned",
      e.symbol ? ` · ${e.symbol}` : ""));
}

function anomalyState(a) {
  if (a.acknowledged_at) return el("span", {}, badge("acknowledged", "ok"), " ", when(a.acknowledged_at),
    a.note ? el("span", { class: "note" }, `: ${a.note}`) : null);
  if (a.resolved_at) return el("span", {}, badge("resolved", "ok"), " ", when(a.resolved_at));
  return badge("open", "bad");
}

async function acknowledge(a) {
  const note = await confirmDialog(
    `Acknowledge the ${a.kind} anomaly of position ${a.position_id} (${a.source})? It stays listed, marked with your note.`,
    { ok: "Acknowledge", note: true });
  if (note === null) return;
  try {
    await api(`/api/v1/anomalies/${a.id}/ack`, { method: "POST", json: { note } });
    setStatus(`Anomaly ${a.id} acknowledged.`);
    await loadAnomalies();
    if (state.shown) await showPosition(state.shown);
  } catch (error) {
    reportError(error.code === "insufficient_scope"
      ? new Error("Acknowledging needs the scope deliveries:write: sign in with a client that has it.") : error);
  }
}

function ackButton(a) {
  return a.open ? el("button", { type: "button", "data-ack": a.id, onclick: () => acknowledge(a) }, "Acknowledge") : "";
}

export async function showPosition(key) {
  const [source, account, id] = key;
  const current = loads.position();
  const p = await api(`/api/v1/positions/${segment(source)}/${segment(account || NO_ACCOUNT)}/${segment(id)}`);
  if (!current()) return;
  state.shown = key;
  const body = [
    dl([["State", stateBadge(p)], ["Source", p.source], ["Account", p.account || "(none)"], ["Symbol", p.symbol],
        ["Side", p.side], ["Opened lots", lots(p.opened_volume)], ["Closed lots", lots(p.closed_volume)],
        ["Open lots", lots(p.open_volume)], ["Open price", p.open_price == null ? null : decimal(p.open_price, 8)],
        ["Close prices", p.close_prices.length ? p.close_prices.map((x) => decimal(x, 8)).join(", ") : null],
        ["P/L", p.profit == null ? null : money(p.profit)], ["Opened (UTC)", when(p.opened_at)],
        ["Closed (UTC)", p.closed_at ? when(p.closed_at) : null]], { "data-testid": "position-facts" }),
    el("h3", {}, "Timeline"),
    el("p", { class: "muted" }, "In the senders' time order, which is how the ledger folds them."),
    p.events.length ? el("ol", { class: "timeline", "data-testid": "timeline" }, p.events.map(timelineEntry))
      : el("p", { class: "empty" }, "No events."),
    el("h3", {}, "Anomalies"),
    table([
      { label: "Kind", cell: (a) => a.kind },
      { label: "Detail", cell: (a) => a.detail, class: "text" },
      { label: "Raised (UTC)", cell: (a) => when(a.raised_at), class: "time" },
      { label: "State", cell: anomalyState },
      { label: "", cell: ackButton },
    ], p.anomaly_records, { testid: "position-anomalies", empty: "None." }),
  ];
  openDrawer(`Position ${p.position_id}`, body, { testid: "position-detail",
    closed: () => { state.shown = null; settle("positions"); } });
}

// --- anomalies ------------------------------------------------------------------------------

const ANOMALY_COLUMNS = [
  { label: "ID", cell: (a) => a.id, class: "num" },
  { label: "Raised (UTC)", cell: (a) => when(a.raised_at), class: "time" },
  { label: "Kind", cell: (a) => badge(a.kind, "anomaly") },
  { label: "Position", cell: (a) => positionLink(a.source, a.account, a.position_id), class: "id" },
  { label: "Source", cell: (a) => a.source },
  { label: "Detail", cell: (a) => a.detail, class: "text" },
  { label: "State", cell: anomalyState },
  { label: "", cell: ackButton },
];

async function loadAnomalies() {
  const params = new URLSearchParams(state.anomalyParams);
  params.set("limit", String(PAGE));
  if (state.anomalies.cursor) params.set("cursor", state.anomalies.cursor);
  const current = loads.anomalies();
  const page = await api("/api/v1/anomalies", { params });
  if (!current()) return;
  $("#anomaly-list").replaceChildren(table(ANOMALY_COLUMNS, page.anomalies, {
    testid: "anomaly-table", caption: "Anomalies", rowAttrs: (a) => ({ "data-anomaly": a.id, "data-kind": a.kind }),
    empty: state.anomalyParams.get("open") === "true" ? "No open anomalies." : "No anomalies match.",
  }));
  state.anomalies.update(page.next_cursor, page.anomalies.length);
}

// --- the tab --------------------------------------------------------------------------------

export const positionsTab = {
  init() {
    state.positions = new Pager($("#position-pager"), "positions", PAGE, loadPositions);
    state.anomalies = new Pager($("#anomaly-pager"), "anomalies", PAGE, loadAnomalies);
    $("#position-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      state.positionParams = formParams($("#position-filters"));
      state.positions.reset();
      loadPositions().catch(reportError);
    });
    $("#position-filters").addEventListener("reset", () => setTimeout(() => $("#position-filters").requestSubmit()));
    $("#anomaly-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      state.anomalyParams = formParams($("#anomaly-filters"));
      state.anomalies.reset();
      loadAnomalies().catch(reportError);
    });
  },
  async enter() {
    await Promise.all([loadPositions(), loadAnomalies()]);
  },
  leave() {},
  async open(args) {
    if (args.length === 3) await showPosition(args);
  },
};
