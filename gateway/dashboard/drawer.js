// The details panel: an event or a position, over the right of the list (full width on a
// phone), so the list keeps its width and the details theirs. Escape or Close shuts it and
// gives the focus back to what opened it.

import { $, fill } from "./dom.js";

let opener = null;
let onClose = null;

export function openDrawer(title, body, { testid = "detail", closed = null } = {}) {
  const drawer = $("#drawer");
  if (drawer.hidden) opener = document.activeElement;
  onClose = closed;
  fill($("#drawer-title"), title);
  fill($("#drawer-body"), body);
  drawer.dataset.testid = testid;
  drawer.hidden = false;
  drawer.scrollTop = 0;
  $("#drawer-body").scrollTop = 0;
  $("#drawer-close").focus({ preventScroll: true });
}

export function closeDrawer({ restoreFocus = true } = {}) {
  const drawer = $("#drawer");
  if (drawer.hidden) return;
  drawer.hidden = true;
  $("#drawer-body").replaceChildren();
  const callback = onClose;
  onClose = null;
  if (restoreFocus && opener && opener.isConnected) opener.focus({ preventScroll: true });
  opener = null;
  if (callback) callback();
}

export const drawerOpen = () => !$("#drawer").hidden;

export function initDrawer() {
  $("#drawer-close").addEventListener("click", () => closeDrawer());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && drawerOpen() && !$("#confirm").open) closeDrawer();
  });
}
