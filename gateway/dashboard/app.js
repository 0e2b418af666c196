// The gateway dashboard: plain JavaScript against /api/v1, no build step, nothing external.
// Signed in by an HttpOnly session cookie (POST /api/v1/session): no script here ever holds the
// token, and no URL carries it.
"use strict";

const state = { source: null, lastId: 0, selected: null };
// Stream endings that a reconnect cannot fix: the session is over.
const SESSION_ENDED = new Set(["token_expired", "invalid_token", "unauthorized", "insufficient_scope"]);
const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child ?? "");
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, credentials: "same-origin" });
  const body = await response.json();
  if (response.status === 401) { signOut(`Your session has ended (${body.detail}); sign in again.`); throw new Error(body.code); }
  if (!response.ok) throw new Error(`${body.code}: ${body.detail}`);
  return body;
}

function setStatus(text) { $("#status").textContent = text; }

async function signIn(event) {
  event.preventDefault();
  const form = new FormData($("#login"));
  const response = await fetch("/api/v1/session", {
    method: "POST", credentials: "same-origin",
    body: new URLSearchParams({ grant_type: "client_credentials", client_id: form.get("client_id"),
                                client_secret: form.get("client_secret") }),
  });
  const body = await response.json();
  if (!response.ok) { $("#login-error").textContent = body.detail || "sign-in failed"; return; }
  $("#login").reset();
  start();
}

function signOut(message) {
  if (state.source) state.source.close();
  state.source = null;
  fetch("/api/v1/session", { method: "DELETE", credentials: "same-origin" }).catch(() => {});
  $("#app").hidden = true; $("#tabs").hidden = true; $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

// The stream ended for good (the browser gave up reconnecting): ask the gateway why.
async function streamClosed() {
  const response = await fetch("/api/v1/session", { credentials: "same-origin" }).catch(() => null);
  if (response && response.status === 401) {
    const body = await response.json();
    signOut(`Your session has ended (${body.detail}); sign in again.`);
  } else {
    $("#live-state").textContent = "○ disconnected"; $("#live-state").className = "live";
    setStatus("The live feed stopped; press Apply to reconnect.");
  }
}

function filters() {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData($("#filters"))) if (value) params.set(key, value);
  return params;
}

// A conflict (same identity, other content than the first stored version) stands out.
function statusBadge(event) {
  if (event.status !== "conflict") return event.status;
  return el("span", { class: "badge conflict", title: `differs from event ${event.conflicts_with}` },
    `conflict ≠ #${event.conflicts_with}`);
}

function eventRow(event, fresh) {
  const row = el("tr", { "data-event-id": String(event.id), class: fresh ? "new" : "" },
    el("td", {}, String(event.id)), el("td", {}, event.received_at), el("td", {}, event.source),
    el("td", {}, event.event_type || "—"), el("td", {}, event.entity_id),
    el("td", { class: event.status }, statusBadge(event)), el("td", {}, event.account || ""),
    el("td", {}, event.symbol || ""));
  row.addEventListener("click", () => showEvent(event.id));
  return row;
}

async function loadEvents() {
  const params = filters();
  params.set("limit", "100");
  const page = await api(`/api/v1/events?${params}`);
  $("#event-rows").replaceChildren(...page.events.map((e) => eventRow(e, false)));
  state.lastId = page.events.length ? page.events[0].id : state.lastId;
  follow(params);
}

function follow(params) {
  if (state.source) state.source.close();
  params.delete("limit");
  params.set("since", String(state.lastId));  // no gap between the page and the stream
  const source = new EventSource(`/api/v1/stream?${params}`, { withCredentials: true });
  state.source = source;
  source.onopen = () => { $("#live-state").textContent = "● live"; $("#live-state").className = "live on"; };
  source.addEventListener("error", (message) => {
    if (state.source !== source) return;
    const ended = message.data ? JSON.parse(message.data) : null;  // the gateway's own `event: error`
    if (ended && SESSION_ENDED.has(ended.code)) {
      signOut(`Your session has ended (${ended.code}: ${ended.detail}); sign in again.`);
    } else if (source.readyState === EventSource.CLOSED) {
      streamClosed();
    } else {
      $("#live-state").textContent = "○ reconnecting"; $("#live-state").className = "live";
    }
  });
  source.addEventListener("event", (message) => {
    const event = JSON.parse(message.data);
    state.lastId = Math.max(state.lastId, event.id);
    $("#event-rows").prepend(eventRow(event, true));
    const rows = $("#event-rows").children;
    while (rows.length > 500) rows[rows.length - 1].remove();
  });
}

async function showEvent(id) {
  const event = await api(`/api/v1/events/${id}`);
  const deliveries = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Plugin"), el("th", {}, "Status"),
    el("th", {}, "Attempts"), el("th", {}, "Last error"))),
    el("tbody", {}, ...event.deliveries.map((d) => el("tr", {}, el("td", {}, d.plugin),
      el("td", { class: d.status }, d.status), el("td", {}, String(d.attempts)), el("td", { class: "detail" }, d.last_error || "")))));
  const detail = $("#detail");
  detail.replaceChildren(
    el("h3", {}, `Event ${event.id}: ${event.event_type || "(quarantined)"}`),
    el("p", {}, `${event.source} · ${event.dedup_key} · received ${event.received_at} from ${event.remote_addr || "?"}`),
    event.quarantine_reason ? el("p", { class: "error" }, `Quarantined: ${event.quarantine_reason}`) : "",
    event.status === "conflict" ? el("p", { class: "error", "data-testid": "conflict" },
      `Conflict: this identity was stored first as event ${event.conflicts_with}, with other content. `,
      el("button", { type: "button", onclick: () => showEvent(event.conflicts_with) }, `Show event ${event.conflicts_with}`))
      : "",
    el("h4", {}, "Payload"), el("pre", { "data-testid": "payload" }, JSON.stringify(event.payload, null, 2)),
    el("h4", {}, "Deliveries"), deliveries,
    el("h4", {}, "Headers"), el("pre", {}, event.headers.map(([k, v]) => `${k}: ${v}`).join("\n")));
  detail.hidden = false;
}

async function loadDeliveries() {
  const status = $("#delivery-status").value;
  const params = new URLSearchParams({ limit: "200" });
  if (status) params.set("status", status);
  const [listed, all] = await Promise.all([api(`/api/v1/deliveries?${params}`), api("/api/v1/deliveries?limit=1000")]);
  const summary = {};
  for (const d of all.deliveries) {
    summary[d.plugin] ??= { pending: 0, delivered: 0, dead: 0 };
    summary[d.plugin][d.status] += 1;
  }
  $("#plugin-summary").replaceChildren(...Object.entries(summary).map(([plugin, counts]) =>
    el("div", { class: "card", "data-plugin": plugin }, el("strong", {}, plugin), el("br"),
      `${counts.delivered} delivered · ${counts.pending} pending · ${counts.dead} dead`)));
  $("#delivery-rows").replaceChildren(...listed.deliveries.map((d) => {
    const retry = el("button", { "data-retry": String(d.id) }, "Retry");
    retry.addEventListener("click", async (click) => {
      click.stopPropagation();
      try { await api(`/api/v1/deliveries/${d.id}/retry`, { method: "POST" }); setStatus(`delivery ${d.id} queued again`); }
      catch (error) { setStatus(String(error.message)); }
      setTimeout(loadDeliveries, 500);
    });
    return el("tr", { "data-delivery-id": String(d.id) }, el("td", {}, String(d.id)), el("td", {}, String(d.event_id)),
      el("td", {}, d.plugin), el("td", { class: d.status }, d.status), el("td", {}, String(d.attempts)),
      el("td", { class: "detail" }, d.last_error || ""), el("td", {}, d.status === "delivered" ? "" : retry));
  }));
}

async function loadRejections() {
  const page = await api("/api/v1/rejections?limit=200");
  $("#rejection-rows").replaceChildren(...page.rejections.map((r) => el("tr", {},
    el("td", {}, r.received_at), el("td", {}, r.source), el("td", { class: "dead" }, r.code),
    el("td", { class: "detail" }, r.detail), el("td", {}, r.remote_addr || ""),
    el("td", {}, r.body_size == null ? "" : `${r.body_size} B`), el("td", {}, r.request_id))));
}

const loaders = { events: loadEvents, deliveries: loadDeliveries, rejections: loadRejections };

function showTab(name) {
  for (const button of document.querySelectorAll("nav button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== name;
  if (name !== "events") loaders[name]().catch((error) => setStatus(error.message));
}

function start() {
  $("#login-error").textContent = "";
  $("#login").hidden = true; $("#app").hidden = false; $("#tabs").hidden = false;
  setStatus("");
  loadEvents().catch((error) => setStatus(error.message));
}

$("#login").addEventListener("submit", signIn);
$("#filters").addEventListener("submit", (event) => { event.preventDefault(); state.lastId = 0; loadEvents(); });
$("#delivery-status").addEventListener("change", loadDeliveries);
for (const button of document.querySelectorAll("nav button")) button.addEventListener("click", () => showTab(button.dataset.tab));
fetch("/api/v1/session", { credentials: "same-origin" }).then((response) => { if (response.ok) start(); });
