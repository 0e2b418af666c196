// Liveness: the event stream (SSE, one at a time, for the tab that shows live events) and
// polling for the tabs whose data has no stream (deliveries, rejections). The header's
// indicator (#live-state) says which is on.

import { url } from "./api.js";
import { $, reportError } from "./dom.js";

// Stream endings that a reconnect cannot fix: the session is over.
const SESSION_ENDED = new Set(["token_expired", "invalid_token", "unauthorized", "insufficient_scope"]);

let source = null;
let poller = null;
let onSessionEnd = () => {};
let onStreamLost = () => {};

export function configure({ sessionEnded, streamLost }) {
  onSessionEnd = sessionEnded;
  onStreamLost = streamLost;
}

export function indicate(text, on = false) {
  const state = $("#live-state");
  state.textContent = text;
  state.className = on ? "live on" : "live";
}

// Follow the events matching `params`, after event id `after`, calling onEvent for each.
export function follow(params, after, onEvent) {
  stopStream();
  const query = new URLSearchParams(params);
  query.delete("limit");
  query.delete("cursor");
  query.delete("order");
  query.set("since", String(after));  // no gap between the page shown and the stream
  const stream = new EventSource(url("/api/v1/stream", query), { withCredentials: true });
  source = stream;
  indicate("○ connecting");
  stream.onopen = () => { if (source === stream) indicate("● live", true); };
  stream.addEventListener("error", (message) => {
    if (source !== stream) return;
    const ended = message.data ? JSON.parse(message.data) : null;  // the gateway's own `event: error`
    if (ended && SESSION_ENDED.has(ended.code)) {
      stopStream();
      onSessionEnd(ended);
    } else if (stream.readyState === EventSource.CLOSED) {
      stopStream();
      indicate("○ disconnected");
      onStreamLost();
    } else {
      indicate("○ reconnecting");
    }
  });
  stream.addEventListener("event", (message) => {
    if (source === stream) onEvent(JSON.parse(message.data));
  });
}

export function stopStream() {
  if (source) source.close();
  source = null;
}

// Call `load` every `seconds` while the page is visible (skipped while a call is running).
export function poll(seconds, load, label = `● live, every ${seconds} s`) {
  stopPolling();
  let running = false;
  const tick = async () => {
    if (document.hidden || running) return;
    running = true;
    try { await load(); } catch (error) { reportError(error); } finally { running = false; }
  };
  poller = setInterval(tick, seconds * 1000);
  indicate(label, true);
}

export function stopPolling() {
  if (poller) clearInterval(poller);
  poller = null;
}

export function stopAll(text = "") {
  stopStream();
  stopPolling();
  indicate(text);
}
