// The gateway's console: plain JavaScript modules against /api/v1, no build step, nothing
// fetched from elsewhere. This module signs in and out, keeps the session's end in view, and
// switches tabs (from the URL's fragment, so a reload stays where it was).

import { api, onSessionEnded } from "./api.js";
import { $, $$, clearStatus, clock, reportError, setStatus } from "./dom.js";
import { closeDrawer, initDrawer } from "./drawer.js";
import { deliveriesTab } from "./deliveries.js";
import { eventsTab } from "./events.js";
import { watchTables } from "./fit.js";
import { configure, stopAll } from "./live.js";
import { go, hashFor, parseHash } from "./nav.js";
import { overviewTab } from "./overview.js";
import { positionsTab } from "./positions.js";
import { rejectionsTab } from "./rejections.js";

const TAB_VIEWS = { overview: overviewTab, events: eventsTab, positions: positionsTab, deliveries: deliveriesTab,
                    rejections: rejectionsTab };
const MAX_TIMER_MS = 2 ** 31 - 1;  // setTimeout's limit (about 24 days)
const STREAM_RETRY_MS = 10000;

// mode: "out" (the sign-in page), "in" (a session), "public" (reads open to all, no session).
const session = { mode: "out", timer: null, current: null, retry: null };

// When this browser's last session ends (no secret: the token stays in its HttpOnly cookie). A
// page opened without one does not ask who is signed in: the answer would be a 401, which the
// browser reports as an error in its console.
const SESSION_ENDS = "gateway-console.session-ends";

function noteSessionEnd(ends) {
  try {
    if (ends) localStorage.setItem(SESSION_ENDS, String(ends));
    else localStorage.removeItem(SESSION_ENDS);
  } catch { /* storage disabled: every load asks */ }
}

function maybeSignedIn() {
  try {
    return Number(localStorage.getItem(SESSION_ENDS) || 0) > Date.now();
  } catch {
    return true;
  }
}

// --- signing in and out ---------------------------------------------------------------------

function loginMessage(text, kind = "error") {
  const message = $("#login-error");
  message.textContent = text;
  message.className = text ? `notice ${kind}` : "notice";
}

async function loginOptions() {
  try {
    return await api("/api/v1/login-options", { quiet: true });
  } catch {
    return { public: false, clients_configured: true };  // a gateway without the call: the form
  }
}

async function showSignIn(message = "", kind = "error") {
  stopAll();
  closeDrawer({ restoreFocus: false });
  clearStatus();
  if (session.current) TAB_VIEWS[session.current].leave();
  session.current = null;
  const wasPublic = session.mode === "public";
  session.mode = "out";
  noteSessionEnd(null);
  clearTimeout(session.timer);
  $("#main").hidden = true;
  $("#tabs").hidden = true;
  $("#session").hidden = true;
  $("#signin").hidden = false;
  loginMessage(message, kind);
  const options = await loginOptions();
  $("#no-clients").hidden = options.clients_configured;
  $("#login").hidden = !options.clients_configured;
  $("#login-cancel").hidden = !(wasPublic || options.public);
  if (options.clients_configured) $("#login input[name=client_id]").focus();
}

async function signIn(event) {
  event.preventDefault();
  const form = new FormData($("#login"));
  try {
    const who = await api("/api/v1/session", {
      method: "POST", quiet: true,
      form: { grant_type: "client_credentials", client_id: form.get("client_id"), client_secret: form.get("client_secret") },
    });
    $("#login").reset();
    start(who);
    $("#tabs [aria-selected=true]").focus();  // the keyboard carries on from the tabs
  } catch (error) {
    loginMessage(error.code === "invalid_client" ? `Sign-in refused: ${error.detail}.` : error.message);
    $("#login input[name=client_secret]").select();
  }
}

async function signOut() {
  if (session.mode === "public") { showSignIn(); return; }
  await api("/api/v1/session", { method: "DELETE", quiet: true }).catch(() => {});
  showSignIn("You have signed out.", "info");
}

// A session ends by itself when its token expires (the timer below, the stream's last word,
// or a 401 from any call): say so, and offer to sign in again.
function sessionEnded(reason) {
  if (session.mode === "public") {
    setStatus("That needs a signed-in API client (Sign in, top right).", "error");
    return;
  }
  if (session.mode !== "in") return;
  api("/api/v1/session", { method: "DELETE", quiet: true }).catch(() => {});  // drop the dead cookie
  showSignIn(`Your session has ended (${reason.code}: ${reason.detail}); sign in again.`);
}

async function streamLost() {
  if (session.mode === "in") {
    try { await api("/api/v1/session", { quiet: true }); } catch (error) {
      if (error.status === 401) { sessionEnded(error); return; }
    }
  }
  setStatus(`The live feed stopped (is the gateway restarting?); trying again in ${STREAM_RETRY_MS / 1000} s.`, "error");
  const tab = session.current;
  clearTimeout(session.retry);
  session.retry = setTimeout(() => {
    if (session.current === tab && tab) TAB_VIEWS[tab].enter().then(clearStatus, reportError);
  }, STREAM_RETRY_MS);
}

function start(who) {
  session.mode = who ? "in" : "public";
  $("#signin").hidden = true;
  $("#main").hidden = false;
  $("#tabs").hidden = false;
  $("#session").hidden = false;
  loginMessage("");
  clearTimeout(session.timer);
  if (who) {
    const ends = new Date(Date.now() + who.expires_in * 1000);
    noteSessionEnd(ends.getTime());
    $("#who").textContent = `${who.client_id} · until ${clock(ends).slice(0, 5)} UTC`;
    $("#who").title = `Signed in as ${who.client_id} (${who.scope}); the session ends at ${ends.toISOString()}`;
    $("#sign-out").textContent = "Sign out";
    session.timer = setTimeout(() => sessionEnded({ code: "token_expired", detail: "its token reached its lifetime" }),
      Math.min(MAX_TIMER_MS, who.expires_in * 1000));
  } else {
    $("#who").textContent = "public read access";
    $("#who").title = "[api] public = true: reading needs no sign-in; retrying and acknowledging do";
    $("#sign-out").textContent = "Sign in";
  }
  route();
}

// --- tabs -----------------------------------------------------------------------------------

async function showTab(name) {
  if (session.current) TAB_VIEWS[session.current].leave();
  stopAll();
  clearTimeout(session.retry);
  closeDrawer({ restoreFocus: false });
  clearStatus();
  session.current = name;
  for (const tab of $$("#tabs [role=tab]")) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
  }
  for (const panel of $$("main > .tab")) panel.hidden = panel.id !== name;
  document.title = `${$(`#tab-${name}`).textContent} · Webhook gateway`;
  await TAB_VIEWS[name].enter();
}

async function route() {
  if (session.mode === "out") return;
  const { tab, args } = parseHash(location.hash);
  try {
    if (tab !== session.current) await showTab(tab);
    if (args.length) await TAB_VIEWS[tab].open(args);
    else closeDrawer({ restoreFocus: false });
  } catch (error) {
    reportError(error);
  }
}

// Arrow keys, Home and End move between tabs (and show them), as the ARIA tabs pattern asks.
function tabKeys(event) {
  const tabs = $$("#tabs [role=tab]");
  const at = tabs.indexOf(document.activeElement);
  if (at < 0) return;
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
  if (to === undefined) return;
  event.preventDefault();
  const next = tabs[(to + tabs.length) % tabs.length];
  next.focus();
  go(next.dataset.tab);
}

// --- start ----------------------------------------------------------------------------------

async function boot() {
  initDrawer();
  watchTables();
  onSessionEnded(sessionEnded);
  configure({ sessionEnded, streamLost });
  for (const view of Object.values(TAB_VIEWS)) view.init();
  for (const tab of $$("#tabs [role=tab]")) tab.addEventListener("click", () => go(tab.dataset.tab));
  $("#tabs").addEventListener("keydown", tabKeys);
  $("#login").addEventListener("submit", signIn);
  $("#login-cancel").addEventListener("click", () => start(null));
  $("#sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  if (!location.hash.startsWith("#/")) history.replaceState(null, "", hashFor(parseHash(location.hash).tab));

  let who = null;
  if (maybeSignedIn()) {
    try {
      who = await api("/api/v1/session", { quiet: true });
    } catch (error) {
      if (error.status !== 401) loginMessage(error.message);
    }
  }
  if (who) { start(who); return; }
  const options = await loginOptions();
  if (options.public) start(null);
  else showSignIn($("#login-error").textContent);
}

boot();
