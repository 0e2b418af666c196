// Where the console is: the tab and what is open in it, kept in the URL's fragment
// (#/events/123, #/positions/metacopier/acc-7/42) so that a reload, the back button and a
// shared link land on the same view. app.js routes on every change. The fragment starts with
// a slash so that it never names an element: the browser would scroll to it and take the focus.

export const TABS = ["overview", "events", "positions", "deliveries", "rejections"];

export function hashFor(tab, ...args) {
  return `#/${[tab, ...args.map((arg) => encodeURIComponent(String(arg)))].join("/")}`;
}

export function parseHash(hash) {
  try {
    const [tab, ...args] = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    return TABS.includes(tab) ? { tab, args } : { tab: TABS[0], args: [] };
  } catch {  // a malformed escape: start from the overview
    return { tab: TABS[0], args: [] };
  }
}

// Open a view: a new history entry, routed by app.js (the same hash again routes again).
export function go(tab, ...args) {
  const hash = hashFor(tab, ...args);
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}

// Say where we are without routing (a closed detail, a tab shown): no new history entry.
export function settle(tab, ...args) {
  const hash = hashFor(tab, ...args);
  if (location.hash !== hash) history.replaceState(null, "", hash);
}
