// Rejections: requests the gateway refused, newest first, by source and code, refreshed every
// few seconds while "Live" is on. Never a body: its size and hash only.

import { api } from "./api.js";
import { $, badge, count, el, fill, formParams, latestOnly, remember, reportError, table, when } from "./dom.js";
import { indicate, poll, stopPolling } from "./live.js";

const LIMIT = 200;
const REFRESH_SECONDS = 5;

let shown = "";
const loads = latestOnly();

const COLUMNS = [
  { label: "Time (UTC)", cell: (r) => when(r.received_at), class: "time" },
  { label: "Source", cell: (r) => r.source },
  { label: "Code", cell: (r) => badge(r.code, "bad") },
  { label: "Detail", cell: (r) => r.detail, class: "text" },
  { label: "From", cell: (r) => r.remote_addr, class: "id" },
  { label: "Body", cell: (r) => (r.body_size == null ? "" : el("span", { title: r.body_sha256 ? `SHA-256 ${r.body_sha256}` : null },
    `${count(r.body_size)} B`)), class: "num" },
  { label: "Headers sent", cell: (r) => r.header_names.join(", "), class: "text small" },
  { label: "Request id", cell: (r) => r.request_id, class: "id" },
];

async function load() {
  const params = formParams($("#rejection-filters"));
  params.set("limit", String(LIMIT));
  const current = loads();
  const { rejections } = await api("/api/v1/rejections", { params });
  if (!current()) return;
  remember("codes", ...rejections.map((r) => r.code));
  remember("sources", ...rejections.map((r) => r.source).filter((s) => !s.startsWith("/")));
  const text = JSON.stringify(rejections);
  if (text === shown) return;
  shown = text;
  fill($("#rejection-list"),
    table(COLUMNS, rejections, { testid: "rejection-table", caption: "Rejections",
      rowAttrs: (r) => ({ "data-rejection": r.id, "data-code": r.code }),
      empty: [...formParams($("#rejection-filters"))].length ? "No rejection matches." : "No request was refused." }),
    rejections.length === LIMIT ? el("p", { class: "muted" }, `The newest ${LIMIT} shown: filter by source or code for others.`)
      : null);
}

function live() {
  if ($("#rejections-live").checked) poll(REFRESH_SECONDS, load);
  else { stopPolling(); indicate("○ paused"); }
}

export const rejectionsTab = {
  init() {
    $("#rejection-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      load().catch(reportError);
    });
    $("#rejections-live").addEventListener("change", live);
  },
  async enter() {
    shown = "";
    live();
    await load();
  },
  leave() { stopPolling(); },
  async open() {},
};
