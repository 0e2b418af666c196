// DOM and formatting helpers shared by every tab. Nothing here talks to the gateway.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

// el("td", {class: "x", "data-id": 3, onclick: fn}, child, ...): attributes, listeners (on*),
// and children (nodes, text; null, undefined and false are skipped). Never sets a `style`
// attribute or an inline handler: the Content-Security-Policy would refuse both.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

// Replace a node's children with these (nested arrays flattened, empty ones skipped).
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false || child === "") continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

// A table that becomes one card per row on narrow screens (each cell labelled by its column,
// through data-label). columns: [{label, cell: (row) => node|text, class?}].
// `makeRow(item)` builds a row in place of the plain one (to add listeners).
export function table(columns, rows, { testid, empty = "Nothing here.", rowAttrs = () => ({}), makeRow, caption } = {}) {
  if (!rows.length) return el("p", { class: "empty", "data-testid": testid }, empty);
  return el("table", { class: "grid", "data-testid": testid },
    caption ? el("caption", { class: "visually-hidden" }, caption) : null,
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.class }, c.label)))),
    el("tbody", {}, rows.map((row) => (makeRow ? makeRow(row) : tableRow(columns, row, rowAttrs(row))))));
}

export function tableRow(columns, row, attrs = {}) {
  return el("tr", attrs, columns.map((c) => el("td", { class: c.class, "data-label": c.label }, c.cell(row))));
}

export function dl(pairs, attrs = {}) {
  return el("dl", { class: "facts", ...attrs },
    pairs.filter(([, value]) => value != null && value !== "").map(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}

// --- the status line: one message at a time, cleared when the tab changes -------------------

export function setStatus(text, kind = "info") {
  const status = $("#status");
  status.textContent = text;
  status.className = `status ${text ? kind : ""}`;
}

export const clearStatus = () => setStatus("");

export function reportError(error) {
  setStatus(error && error.message ? error.message : String(error), "error");
}

// --- formatting ----------------------------------------------------------------------------

// The API's times are ISO 8601 UTC ("2026-11-20T10:15:02.331Z"); shown in UTC, to the second.
export function when(iso) {
  if (!iso) return "—";
  return el("time", { datetime: iso, title: iso }, iso.slice(0, 19).replace("T", " "));
}

export function clock(date = new Date()) {
  return date.toISOString().slice(11, 19);
}

export function age(seconds) {
  if (seconds == null) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? `${s % 60} s` : ""}`.trim();
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export const since = (iso) => (iso ? (Date.now() - Date.parse(iso)) / 1000 : null);

export function count(n) {
  return n == null ? "—" : Number(n).toLocaleString("en-US");
}

export function decimal(n, digits = 5) {
  if (n == null) return "—";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits });
}

export function money(n) {
  if (n == null) return "—";
  return el("span", { class: n < 0 ? "loss" : n > 0 ? "gain" : "" },
    Number(n).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }));
}

export function millis(ms) {
  if (ms == null) return "—";
  return ms >= 1000 ? `${decimal(ms / 1000, 2)} s` : `${decimal(ms, ms < 10 ? 1 : 0)} ms`;
}

export function badge(text, kind = text) {
  return el("span", { class: `badge ${kind}` }, text);
}

// --- loads that overlap ------------------------------------------------------------------

// Only the latest of overlapping loads may draw (a search typed while the previous one is still
// on its way): `const current = loads(); ...await...; if (!current()) return;`
export function latestOnly() {
  let last = 0;
  return () => {
    const mine = ++last;
    return () => mine === last;
  };
}

// --- forms ---------------------------------------------------------------------------------

// The non-empty fields of a form as URL parameters.
export function formParams(form) {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(form)) if (String(value).trim()) params.set(key, String(value).trim());
  return params;
}

// A datetime-local value, read as UTC, in ISO 8601.
export function utcInput(value) {
  if (!value) return null;
  const stamp = new Date(`${value.length === 16 ? `${value}:00` : value}Z`);
  return Number.isNaN(stamp.getTime()) ? null : stamp.toISOString();
}

// Values seen while browsing, offered as suggestions in the filters (<datalist>).
const known = { sources: new Set(), codes: new Set() };

export function remember(kind, ...values) {
  const set = known[kind];
  const before = set.size;
  for (const value of values) if (value) set.add(value);
  if (set.size === before) return;
  const list = $(kind === "sources" ? "#known-sources" : "#known-codes");
  list.replaceChildren(...[...set].sort().map((value) => el("option", { value })));
}

// --- copying -------------------------------------------------------------------------------

export async function copyText(text, what) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (plain http on another host is not a secure context): select it instead.
    const area = el("textarea", { class: "visually-hidden", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    if (!done) { setStatus(`Could not copy the ${what}: select it and copy it by hand.`, "error"); return; }
  }
  setStatus(`Copied the ${what} (${count(text.length)} characters).`);
}

// --- a confirmation dialog ------------------------------------------------------------------

// Resolves to null when cancelled, else to the note typed (or "" when no note is asked for).
export function confirmDialog(text, { ok = "Confirm", note = false } = {}) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = ok;
  $("#confirm-note-label").hidden = !note;
  $("#confirm-note").value = "";
  $("#confirm-note").required = note;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" ? $("#confirm-note").value.trim() : null);
    }, { once: true });
  });
}
