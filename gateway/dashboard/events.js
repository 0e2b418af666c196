// Events: search (source, type, status, account, symbol, position or entity id, time range),
// pages through the API's cursor, live events on the newest page, and one event's details:
// its payload, its raw body (text, or hex when it is not UTF-8), deliveries and headers.

import { api } from "./api.js";
import {
  $, badge, copyText, decimal, dl, el, formParams, latestOnly, money, remember, reportError, table, tableRow, utcInput, when,
} from "./dom.js";
import { openDrawer } from "./drawer.js";
import { follow, indicate, stopStream } from "./live.js";
import { go, settle } from "./nav.js";
import { Pager } from "./pager.js";

const PAGE = 100;
const MAX_ROWS = 500;  // live rows pushed out past this many
const SHOWN_BYTES = 65536;  // a raw body is shown up to this many bytes (copying takes it all)

const state = { params: new URLSearchParams(), rows: [], pager: null, active: false };
const listing = latestOnly();
const detail = latestOnly();

// --- pieces other tabs show too -----------------------------------------------------------

export function statusBadge(event) {
  if (event.status !== "conflict") return badge(event.status);
  return el("span", { class: "badge conflict", title: `differs from event ${event.conflicts_with}` },
    `conflict ≠ #${event.conflicts_with}`);
}

export function eventLink(id) {
  return el("button", { type: "button", class: "link", "data-open-event": id, onclick: () => go("events", id) }, `#${id}`);
}

// A row opens its event wherever it is clicked (the id's button is the keyboard's way in).
export function opensEvent(row, id) {
  row.addEventListener("click", (click) => {
    if (!click.target.closest("button, a, input, select") && !window.getSelection().toString()) go("events", id);
  });
  return row;
}

const traded = (event) => event.normalized || {};

export const EVENT_COLUMNS = [
  { label: "ID", cell: (e) => eventLink(e.id), class: "num" },
  { label: "Received (UTC)", cell: (e) => when(e.received_at), class: "time" },
  { label: "Source", cell: (e) => e.source },
  { label: "Type", cell: (e) => e.event_type || el("span", { class: "muted" }, "—") },
  { label: "Entity", cell: (e) => e.entity_id, class: "id" },
  { label: "Status", cell: statusBadge },
  { label: "Account", cell: (e) => e.account, class: "id" },
  { label: "Symbol", cell: (e) => e.symbol },
  { label: "Side", cell: (e) => traded(e).side },
  { label: "Volume", cell: (e) => (traded(e).volume == null ? "" : decimal(traded(e).volume, 8)), class: "num" },
  { label: "Price", cell: (e) => (traded(e).price == null ? "" : decimal(traded(e).price, 8)), class: "num" },
  { label: "P/L", cell: (e) => (traded(e).profit == null ? "" : money(traded(e).profit)), class: "num" },
];

export function eventRow(event, columns = EVENT_COLUMNS, fresh = false) {
  return opensEvent(tableRow(columns, event, { "data-event-id": event.id, class: fresh ? "new" : null }), event.id);
}

// --- the list -------------------------------------------------------------------------------

function searchParams(form) {
  const params = formParams(form);
  const entity = params.get("entity");
  if (entity && !entity.includes(":")) params.set("entity", `position:${entity}`);  // a bare position id
  for (const name of ["since", "until"]) {
    if (params.has(name)) params.set(name, utcInput(params.get(name)) ?? params.get(name));
  }
  if (params.get("order") === "newest") params.delete("order");
  return params;
}

// Live on the newest page of a search without a time range (new events belong on top of it).
const isLive = () => state.pager.page === 0 && !["order", "since", "until"].some((p) => state.params.has(p));

// The newest event stored, asked before the page: if the page is empty, the stream follows from
// it (from 0 it would replay every matching event ever stored), and nothing stored in between
// is missed (it would be on the page).
async function newestStored() {
  const { events } = await api("/api/v1/events", { params: { limit: 1 } });
  return events.length ? events[0].id : 0;
}

async function load() {
  const params = new URLSearchParams(state.params);
  params.set("limit", String(PAGE));
  if (state.pager.cursor) params.set("cursor", state.pager.cursor);
  const current = listing();
  const newest = isLive() ? newestStored() : Promise.resolve(0);
  const page = await api("/api/v1/events", { params });
  const stored = await newest;
  if (!current()) return;
  state.rows = page.events;
  remember("sources", ...page.events.map((e) => e.source));
  render();
  state.pager.update(page.next_cursor, state.rows.length);
  if (!state.active) return;  // the tab was left meanwhile: no stream for it
  if (isLive()) {
    follow(state.params, state.rows.length ? state.rows[0].id : stored, arrived);
  } else {
    stopStream();
    indicate(state.pager.page ? "○ not live on older pages" : "○ not live for a time range or the oldest first");
  }
}

function arrived(event) {
  remember("sources", event.source);
  state.rows.unshift(event);
  const body = $("#event-list tbody");
  if (!body) { render(); return; }
  body.prepend(eventRow(event, EVENT_COLUMNS, true));
  while (state.rows.length > MAX_ROWS) { state.rows.pop(); body.lastElementChild.remove(); }
  state.pager.update(state.pager.next, state.rows.length);
}

function render() {
  const searching = [...state.params].length > 0;
  $("#event-list").replaceChildren(table(EVENT_COLUMNS, state.rows, {
    testid: "event-table", caption: "Events", makeRow: (e) => eventRow(e),
    empty: searching ? "No event matches this search." : "No events stored yet.",
  }));
}

async function search(event) {
  event.preventDefault();
  state.params = searchParams($("#event-filters"));
  state.pager.reset();
  try { await load(); } catch (error) { reportError(error); }
}

// --- one event ------------------------------------------------------------------------------

function bytesOf(base64) {
  return Uint8Array.from(atob(base64 || ""), (c) => c.charCodeAt(0));
}

// The body as text if it is UTF-8, else as a hex dump (offset, 16 bytes, printable ASCII).
export function rawBody(bytes) {
  try {
    return { text: new TextDecoder("utf-8", { fatal: true }).decode(bytes), form: "text (UTF-8)" };
  } catch {
    const lines = [];
    for (let offset = 0; offset < bytes.length; offset += 16) {
      const chunk = [...bytes.subarray(offset, offset + 16)];
      const hex = chunk.map((b) => b.toString(16).padStart(2, "0")).join(" ");
      const ascii = chunk.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
      lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`);
    }
    return { text: lines.join("\n"), form: "hex (not UTF-8)" };
  }
}

function tradingFacts(n) {
  return dl([
    ["Kind", n.kind], ["Position", n.position_id], ["Order", n.order_id], ["Account", n.account], ["Symbol", n.symbol],
    ["Side", n.side], ["Volume", n.volume == null ? null : decimal(n.volume, 8)],
    ["Price", n.price == null ? null : decimal(n.price, 8)], ["Stop loss", n.sl == null ? null : decimal(n.sl, 8)],
    ["Take profit", n.tp == null ? null : decimal(n.tp, 8)], ["P/L", n.profit == null ? null : money(n.profit)],
    ["Amount", n.amount == null ? null : `${decimal(n.amount, 8)} ${n.currency || ""}`], ["Operation", n.operation],
    ["Occurred (UTC)", n.occurred_at ? when(n.occurred_at) : null],
    ["Could not read", n.problems && n.problems.length ? n.problems.join("; ") : null],
  ], { "data-testid": "normalized" });
}

function deliveriesOf(event) {
  return table([
    { label: "Plugin", cell: (d) => d.plugin },
    { label: "Status", cell: (d) => badge(d.status) },
    { label: "Attempts", cell: (d) => d.attempts, class: "num" },
    { label: "Last change (UTC)", cell: (d) => when(d.updated_at), class: "time" },
    { label: "Next attempt (UTC)", cell: (d) => (d.next_attempt_at ? when(d.next_attempt_at) : ""), class: "time" },
    { label: "Last error", cell: (d) => d.last_error, class: "text" },
  ], event.deliveries, { testid: "event-deliveries", empty: "No plugin takes this event." });
}

function detailBody(event) {
  const bytes = bytesOf(event.body_base64);
  const raw = rawBody(bytes.length > SHOWN_BYTES ? bytes.subarray(0, SHOWN_BYTES) : bytes);
  const whole = bytes.length > SHOWN_BYTES ? rawBody(bytes).text : raw.text;
  const { body_base64: _, ...record } = event;
  const position = event.normalized && event.normalized.position_id;
  const bare = event.payload === null || event.status === "quarantined";
  return [
    el("div", { class: "actions" },
      el("button", { type: "button", "data-testid": "copy-raw", onclick: () => copyText(whole, "raw body") },
        "Copy raw body"),
      el("button", { type: "button", "data-testid": "copy-json",
                     onclick: () => copyText(JSON.stringify(record, null, 2), "event as JSON") }, "Copy JSON"),
      position ? el("button", { type: "button", "data-testid": "open-position",
                                onclick: () => go("positions", event.source, event.account || "-", position) },
        "Position timeline") : null),
    event.status === "conflict" ? el("p", { class: "notice error", "data-testid": "conflict" },
      `Conflict: this identity was stored first as event ${event.conflicts_with}, with other content. `,
      el("button", { type: "button", class: "link", onclick: () => go("events", event.conflicts_with) },
        `Show event ${event.conflicts_with}`)) : null,
    event.quarantine_reason ? el("p", { class: "notice warn", "data-testid": "quarantine-reason" },
      el("strong", {}, "Quarantined: "), event.quarantine_reason,
      ". The body is kept as received; no plugin gets it unless it asks for quarantined events.") : null,
    dl([
      ["Status", statusBadge(event)], ["Source", `${event.source} (${event.scheme})`], ["Type", event.event_type],
      ["Entity", event.entity_id], ["Dedup key", event.dedup_key], ["Account", event.account], ["Symbol", event.symbol],
      ["Received (UTC)", when(event.received_at)], ["From", event.remote_addr], ["Request id", event.request_id],
      ["Sender's attempt", event.attempt],
    ], { "data-testid": "event-facts" }),
    event.normalized ? [el("h3", {}, "Trading meaning"), tradingFacts(event.normalized)] : null,
    event.payload !== null && event.payload !== undefined
      ? [el("h3", {}, "Payload"), el("pre", { class: "code", "data-testid": "payload" }, JSON.stringify(event.payload, null, 2))]
      : null,
    el("details", { class: "raw", open: bare, "data-testid": "raw" },
      el("summary", {}, `Raw body: ${bytes.length.toLocaleString("en-US")} bytes, as ${raw.form}`),
      el("pre", { class: "code", "data-testid": "raw-body" }, raw.text),
      bytes.length > SHOWN_BYTES ? el("p", { class: "muted" }, "Shown up to 64 KiB; Copy raw body takes all of it.") : null),
    el("h3", {}, "Deliveries"), deliveriesOf(event),
    el("h3", {}, "Headers kept"),
    table([{ label: "Header", cell: (h) => h[0], class: "id" }, { label: "Value", cell: (h) => h[1], class: "id" }],
      event.headers, { testid: "headers", empty: "No headers kept." }),
  ];
}

export async function showEvent(id) {
  const current = detail();
  const event = await api(`/api/v1/events/${encodeURIComponent(id)}`);
  if (!current()) return;
  const title = `Event ${event.id}: ${event.event_type || event.status}`;
  openDrawer(title, detailBody(event), { testid: "event-detail", closed: () => settle("events") });
  for (const row of document.querySelectorAll("#event-list tr.selected")) row.classList.remove("selected");
  const row = $(`#event-list tr[data-event-id="${event.id}"]`);
  if (row) row.classList.add("selected");
}

// --- the tab --------------------------------------------------------------------------------

export const eventsTab = {
  init() {
    state.pager = new Pager($("#event-pager"), "events", PAGE, load);
    $("#event-filters").addEventListener("submit", search);
    $("#event-filters").addEventListener("reset", () => setTimeout(() => $("#event-filters").requestSubmit()));
  },
  async enter() {
    state.active = true;
    await load();
  },
  leave() {
    state.active = false;
    stopStream();
  },
  async open([id]) { if (id) await showEvent(id); },
};
