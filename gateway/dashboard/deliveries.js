// Deliveries: counts per plugin and status (counted by the store: GET /api/v1/deliveries/summary),
// "retry all dead" per plugin after a confirmation, the newest deliveries with their times,
// filtered, and a retry per delivery. Refreshes every few seconds while "Live" is on.

import { api } from "./api.js";
import {
  $, $$, age, badge, confirmDialog, count, el, fill, formParams, latestOnly, remember, reportError, setStatus, since, table, when,
} from "./dom.js";
import { eventLink } from "./events.js";
import { indicate, poll, stopPolling } from "./live.js";

const LIMIT = 200;
const REFRESH_SECONDS = 5;
const STATUSES = ["pending", "delivered", "dead"];

let shown = { summary: "", list: "" };
const loads = { summary: latestOnly(), list: latestOnly() };  // what is on screen, to redraw only what changed

// Redraw `container` with `build()` only if `data` changed, keeping the focus on the same button.
function redraw(container, key, data, build) {
  const text = JSON.stringify(data);
  if (shown[key] === text) return;
  shown[key] = text;
  const focused = container.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
  fill(container, build());
  if (focused) {
    const again = container.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`);
    if (again && !again.disabled) again.focus({ preventScroll: true });
  }
}

// --- the summary ----------------------------------------------------------------------------

async function retryAll(plugin, dead) {
  const plural = dead === 1 ? "delivery" : "deliveries";
  const sure = await confirmDialog(`Retry all ${count(dead)} dead ${plural} of ${plugin}? Each is tried again from its ` +
    "first attempt, in order.", { ok: `Retry ${count(dead)} dead` });
  if (sure === null) return;
  try {
    const done = await api("/api/v1/deliveries/retry", { method: "POST", json: { plugin, status: "dead" } });
    setStatus(`${plugin}: ${count(done.retried)} dead ${done.retried === 1 ? "delivery" : "deliveries"} queued again.`);
    await refresh();
  } catch (error) {
    reportError(error.code === "insufficient_scope"
      ? new Error("Retrying needs the scope deliveries:write: sign in with a client that has it.") : error);
  }
}

function card(p) {
  const oldest = p.pending && p.oldest_pending_at ? age(since(p.oldest_pending_at)) : null;
  return el("section", { class: "card", "data-plugin": p.plugin, "aria-label": `Plugin ${p.plugin}` },
    el("h2", {}, p.plugin),
    el("p", { class: "counts" }, STATUSES.map((status) => el("span", { class: `count ${status}`, "data-count": status },
      el("strong", {}, count(p[status])), ` ${status}`))),
    el("p", { class: "muted" }, oldest ? `Oldest pending: waiting ${oldest}` : "Nothing waiting."),
    el("button", { type: "button", "data-retry-all": p.plugin, "data-focus-key": `all-${p.plugin}`, disabled: !p.dead,
                   onclick: () => retryAll(p.plugin, p.dead) }, "Retry all dead"));
}

async function loadSummary() {
  const current = loads.summary();
  const { plugins } = await api("/api/v1/deliveries/summary");
  if (!current()) return;
  const select = $("#delivery-plugin");
  const chosen = select.value;
  const names = plugins.map((p) => p.plugin);
  if (JSON.stringify(names) !== JSON.stringify($$("option", select).slice(1).map((o) => o.value))) {
    select.replaceChildren(el("option", { value: "" }, "any"), ...names.map((name) => el("option", {}, name)));
    select.value = names.includes(chosen) ? chosen : "";
  }
  redraw($("#plugin-summary"), "summary", plugins, () => (plugins.length
    ? el("div", { class: "cards" }, plugins.map(card))
    : el("p", { class: "empty" }, "No plugins are configured: no deliveries to show.")));
}

// --- the list -------------------------------------------------------------------------------

async function retryOne(d) {
  try {
    await api(`/api/v1/deliveries/${d.id}/retry`, { method: "POST" });
    setStatus(`Delivery ${d.id} (${d.plugin}, event ${d.event_id}) queued again.`);
    await refresh();
  } catch (error) {
    reportError(error.code === "insufficient_scope"
      ? new Error("Retrying needs the scope deliveries:write: sign in with a client that has it.") : error);
  }
}

const COLUMNS = [
  { label: "ID", cell: (d) => d.id, class: "num" },
  { label: "Event", cell: (d) => eventLink(d.event_id), class: "num" },
  { label: "Plugin", cell: (d) => d.plugin },
  { label: "Source", cell: (d) => d.source },
  { label: "Event type", cell: (d) => d.event_type || el("span", { class: "muted" }, "—") },
  { label: "Entity", cell: (d) => d.entity_id, class: "id" },
  { label: "Status", cell: (d) => badge(d.status) },
  { label: "Attempts", cell: (d) => d.attempts, class: "num" },
  { label: "Created (UTC)", cell: (d) => when(d.created_at), class: "time" },
  { label: "Last attempt (UTC)", cell: (d) => (d.attempts ? when(d.updated_at) : "—"), class: "time" },
  { label: "Next attempt (UTC)", cell: (d) => (d.next_attempt_at ? when(d.next_attempt_at) : "—"), class: "time" },
  { label: "Last error", cell: (d) => d.last_error, class: "text" },
  { label: "", cell: (d) => (d.status === "delivered" ? "" : el("button", {
    type: "button", "data-retry": d.id, "data-focus-key": `one-${d.id}`, onclick: () => retryOne(d) }, "Retry")) },
];

async function loadList() {
  const params = formParams($("#delivery-filters"));
  params.set("limit", String(LIMIT));
  const current = loads.list();
  const { deliveries } = await api("/api/v1/deliveries", { params });
  if (!current()) return;
  remember("sources", ...deliveries.map((d) => d.source));
  redraw($("#delivery-list"), "list", deliveries, () => [
    table(COLUMNS, deliveries, { testid: "delivery-table", caption: "Deliveries",
      rowAttrs: (d) => ({ "data-delivery-id": d.id, "data-status": d.status }),
      empty: "No delivery matches." }),
    deliveries.length === LIMIT ? el("p", { class: "muted" }, `The newest ${LIMIT} shown: narrow the filters to see others.`)
      : null,
  ]);
}

const refresh = () => Promise.all([loadSummary(), loadList()]);

function live() {
  if ($("#deliveries-live").checked) poll(REFRESH_SECONDS, refresh);
  else { stopPolling(); indicate("○ paused"); }
}

export const deliveriesTab = {
  init() {
    $("#delivery-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      loadList().catch(reportError);
    });
    for (const select of $$("#delivery-filters select")) {
      select.addEventListener("change", () => $("#delivery-filters").requestSubmit());
    }
    $("#deliveries-live").addEventListener("change", live);
  },
  async enter() {
    shown = { summary: "", list: "" };
    live();
    await refresh();
  },
  leave() { stopPolling(); },
  async open([plugin]) {
    if (!plugin) return;
    await loadSummary();
    $("#delivery-plugin").value = plugin;
    shown.list = "";
    await loadList();
  },
};
