// Overview, the landing tab: the feed's health over a window (15 min to 7 days), per source,
// from GET /api/v1/overview (counted in the store, for the whole deployment): events and
// rejections per minute, delivery backlog and dead letters, ingest latency, sender clock skew.
// Refreshes by itself; the latest events arrive live.

import { api } from "./api.js";
import { rate, stackedBars } from "./chart.js";
import { $, age, count, el, fill, latestOnly, millis, remember, reportError, table } from "./dom.js";
import { EVENT_COLUMNS, eventRow } from "./events.js";
import { follow, stopStream } from "./live.js";
import { go } from "./nav.js";

// The short windows refresh by themselves; the long ones read many more events (about 0.6 µs
// each, docs/benchmarks.md), so they refresh when asked (the Refresh button).
const REFRESH_SECONDS = { "15m": 15, "1h": 30, "24h": null, "7d": null };
const STATUSES = ["stored", "conflict", "quarantined"];
const CODE_COLOURS = 8;
const LATEST = 10;
const LATEST_COLUMNS = EVENT_COLUMNS.filter((c) => ["ID", "Received (UTC)", "Source", "Type", "Status", "Account",
  "Symbol"].includes(c.label));

let data = null;
let timer = null;
let drawnWidth = 0;
let latest = [];
let active = false;
const loads = { overview: latestOnly(), latest: latestOnly() };

const chosenWindow = () => $("#overview-window input:checked").value;
const sum = (values) => values.reduce((a, b) => a + b, 0);
const secondsToSkew = (s) => (s == null ? "—" : `${s < 1 ? millis(s * 1000) : `${rate(s)} s`}`);

async function load() {
  const current = loads.overview();
  const answer = await api("/api/v1/overview", { params: { window: chosenWindow() } });
  if (!current()) return;
  data = answer;
  render();
}

function schedule() {
  clearInterval(timer);
  const seconds = REFRESH_SECONDS[chosenWindow()];
  if (seconds) timer = setInterval(() => { if (!document.hidden) load().catch(reportError); }, seconds * 1000);
}

// --- figures --------------------------------------------------------------------------------

function kpi(testid, label, value, sub, warn = false) {
  return el("div", { class: `kpi${warn ? " warn" : ""}`, "data-testid": testid },
    el("span", { class: "kpi-label" }, label), el("strong", { class: "kpi-value" }, value),
    el("span", { class: "kpi-sub" }, sub));
}

function worst(map, pick) {
  let found = null;
  for (const [source, value] of Object.entries(map || {})) {
    const v = value == null ? null : pick(value);
    if (v != null && (found === null || v > found.value)) found = { source, value: v };
  }
  return found;
}

function renderKpis(d, minutes) {
  const events = sum(Object.values(d.events).flatMap((byStatus) => Object.values(byStatus).map(sum)));
  const rejected = sum(Object.values(d.rejections).flatMap((byCode) => Object.values(byCode).map(sum)));
  const pending = sum(d.deliveries.map((p) => p.pending));
  const dead = sum(d.deliveries.map((p) => p.dead));
  const oldest = Math.max(0, ...d.deliveries.map((p) => p.oldest_pending_age_seconds ?? 0));
  const latency = worst(d.latency_p99_ms, (v) => v);
  const skew = worst(d.clock_skew_seconds, (v) => v.max_abs);
  $("#overview-kpis").replaceChildren(
    kpi("kpi-events", "Events", count(events), `${rate(events / minutes)} per minute`),
    kpi("kpi-rejections", "Rejected", count(rejected), `${rate(rejected / minutes)} per minute`),
    kpi("kpi-backlog", "Delivery backlog", count(pending), pending ? `oldest waiting ${age(oldest)}` : "nothing waiting",
      oldest > 300),
    kpi("kpi-dead", "Dead letters", count(dead), dead ? "need a retry or a look" : "none", dead > 0),
    kpi("kpi-latency", "Ingest latency p99", latency ? millis(latency.value) : "—",
      latency ? `worst: ${latency.source}` : "no events in the window"),
    kpi("kpi-skew", "Sender clock skew", skew ? secondsToSkew(skew.value) : "—",
      skew ? `largest: ${skew.source}` : "no signed timestamps in the window", skew && skew.value > 60));
}

// --- per source -----------------------------------------------------------------------------

function legend(entries, testid, key) {
  return el("ul", { class: "legend" }, entries.map(({ name, cls, total, source }) => el("li",
    { class: `key ${cls}`, "data-testid": testid, [`data-${key}`]: name, "data-source": source },
    `${source ? `${source}: ` : ""}${name} `, el("strong", {}, count(total)))));
}

const perMinute = (d, values) => values.map((v) => v / (d.bucket_seconds / 60));

// A source the gateway serves (the API lists them: the configured ones, and any other with events
// in the window), rather than a name only refused requests used: an unknown source name, or the
// API's token endpoint (/oauth/token).
const served = (source, d) => d.sources.includes(source);

function sourceCard(source, d, codeClass, width) {
  const byStatus = d.events[source] || {};
  const statuses = [...STATUSES.filter((s) => s in byStatus), ...Object.keys(byStatus).filter((s) => !STATUSES.includes(s))];
  const events = statuses.map((status) => ({ name: status, cls: `s-${status}`, values: perMinute(d, byStatus[status]),
                                             total: sum(byStatus[status]) }));
  const byCode = d.rejections[source] || {};
  const rejections = Object.keys(byCode).sort().map((code) => ({
    name: code, cls: codeClass(code), values: perMinute(d, byCode[code]), total: sum(byCode[code]) }));
  const latency = d.latency_p99_ms ? d.latency_p99_ms[source] : null;
  const skew = d.clock_skew_seconds ? d.clock_skew_seconds[source] : null;
  return el("section", { class: "panel source", "data-source": source, "aria-label": `Source ${source}` },
    el("h2", {}, source),
    el("p", { class: "figures" },
      el("span", { "data-testid": "latency" }, "Ingest p99 ", el("strong", {}, latency == null ? "—" : millis(latency))),
      el("span", { "data-testid": "skew" }, "Clock skew ",
        el("strong", {}, skew ? `p50 ${secondsToSkew(skew.p50)}, max ${secondsToSkew(skew.max_abs)}` : "—"))),
    el("h3", {}, "Events per minute, by status"),
    stackedBars({ buckets: d.buckets, bucketSeconds: d.bucket_seconds, series: events, width,
                  title: `${source}: events per minute by status` }),
    legend(events, "events-count", "status"),
    el("h3", {}, "Rejections per minute, by code"),
    rejections.length ? [
      stackedBars({ buckets: d.buckets, bucketSeconds: d.bucket_seconds, series: rejections, width,
                    title: `${source}: rejections per minute by code` }),
      legend(rejections, "rejections-count", "code")] : el("p", { class: "muted" }, "None in this window."));
}

// Refusals of requests to no source: unknown source names and failed sign-ins, in one card.
function elsewhereCard(names, d, codeClass, width) {
  const byCode = {};
  const entries = [];
  for (const source of names) {
    for (const [code, values] of Object.entries(d.rejections[source] || {})) {
      byCode[code] = byCode[code] ? byCode[code].map((v, i) => v + values[i]) : [...values];
      entries.push({ source, name: code, cls: codeClass(code), total: sum(values) });
    }
  }
  const series = Object.keys(byCode).sort().map((code) => ({ name: code, cls: codeClass(code),
                                                            values: perMinute(d, byCode[code]) }));
  return el("section", { class: "panel source elsewhere", "aria-label": "Refused requests to no source" },
    el("h2", {}, "Refused elsewhere"),
    el("p", { class: "muted" }, "Requests to source names the gateway does not serve, and refused sign-ins to the API ",
      el("code", {}, "/oauth/token"), "."),
    el("h3", {}, "Rejections per minute, by code"),
    stackedBars({ buckets: d.buckets, bucketSeconds: d.bucket_seconds, series, width,
                  title: "Refused requests to no source, per minute by code" }),
    legend(entries, "rejections-count", "code"));
}

function renderSources(d) {
  const names = [...new Set([...Object.keys(d.events), ...Object.keys(d.rejections)])].sort();
  const sources = names.filter((s) => served(s, d));
  const elsewhere = names.filter((s) => !served(s, d));
  remember("sources", ...sources);
  const codes = [...new Set(Object.values(d.rejections).flatMap(Object.keys))].sort();
  remember("codes", ...codes);
  const codeClass = (code) => `c${codes.indexOf(code) % CODE_COLOURS}`;
  const container = $("#overview-sources");
  drawnWidth = container.clientWidth;
  const columns = getComputedStyle(container).gridTemplateColumns.split(" ").length || 1;
  const width = (drawnWidth - (columns - 1) * 16) / columns - 34;  // a card's padding and border
  fill(container, names.length ? [
    sources.map((s) => sourceCard(s, d, codeClass, width)),
    elsewhere.length ? elsewhereCard(elsewhere, d, codeClass, width) : null,
  ] : el("p", { class: "empty" }, "No events and no rejections in this window."));
}

let shownDeliveries = "";

function renderDeliveries(d) {
  const text = JSON.stringify(d.deliveries);
  if (text === shownDeliveries) return;  // unchanged: redrawing would take the focus off a link
  shownDeliveries = text;
  $("#overview-deliveries").replaceChildren(table([
    { label: "Plugin", cell: (p) => el("button", { type: "button", class: "link", onclick: () => go("deliveries", p.plugin) },
      p.plugin) },
    { label: "Pending", cell: (p) => count(p.pending), class: "num" },
    { label: "Oldest pending", cell: (p) => (p.pending ? age(p.oldest_pending_age_seconds) : "—"), class: "num" },
    { label: "Dead", cell: (p) => (p.dead ? el("span", { class: "bad" }, count(p.dead)) : "0"), class: "num" },
  ], d.deliveries, { testid: "overview-plugins", rowAttrs: (p) => ({ "data-plugin": p.plugin }),
                     empty: "No plugins are configured." }));
}

function render() {
  const d = data;
  const minutes = Math.max(1, (Date.parse(d.until) - Date.parse(d.since)) / 60000);
  renderKpis(d, minutes);
  renderSources(d);
  renderDeliveries(d);
  const seconds = REFRESH_SECONDS[d.window];
  $("#overview-updated").textContent =
    `${d.since.slice(0, 16).replace("T", " ")} to ${d.until.slice(0, 16).replace("T", " ")} UTC, ` +
    `in ${d.bucket_seconds / 60}-minute steps; ` +
    (seconds ? `refreshes every ${seconds} s` : `read at ${d.until.slice(11, 19)}: long windows refresh when asked`);
}

// --- the latest events, live ----------------------------------------------------------------

function renderLatest() {
  $("#overview-latest").replaceChildren(table(LATEST_COLUMNS, latest, {
    testid: "latest-events", makeRow: (e) => eventRow(e, LATEST_COLUMNS), empty: "No events stored yet.",
  }));
}

async function loadLatest() {
  const current = loads.latest();
  const answer = await api("/api/v1/events", { params: { limit: LATEST } });
  if (!current()) return;
  latest = answer.events;
  renderLatest();
  if (!active) return;  // the tab was left meanwhile: no stream for it
  follow(new URLSearchParams(), latest.length ? latest[0].id : 0, (event) => {
    latest = [event, ...latest].slice(0, LATEST);
    const body = $("#overview-latest tbody");
    if (!body) { renderLatest(); return; }
    body.prepend(eventRow(event, LATEST_COLUMNS, true));
    while (body.children.length > LATEST) body.lastElementChild.remove();
  });
}

export const overviewTab = {
  init() {
    $("#overview-window").addEventListener("change", () => {
      load().catch(reportError);
      schedule();
    });
    $("#overview-refresh").addEventListener("click", () => load().catch(reportError));
    // Charts are drawn to the width they have: again when it changes.
    new ResizeObserver(() => {
      const container = $("#overview-sources");
      if (data && container.clientWidth && container.clientWidth !== drawnWidth) renderSources(data);
    }).observe($("#overview-sources"));
  },
  async enter() {
    active = true;
    shownDeliveries = "";
    schedule();
    await Promise.all([load(), loadLatest()]);
  },
  leave() {
    active = false;
    clearInterval(timer);
    stopStream();
  },
  async open() {},
};
