// Tables turn into cards (one per row, each cell labelled by its column) wherever their columns
// do not fit the width they have, and back into tables where they do: no sideways scrolling at
// any width, in the page or in the details panel, and full tables wherever there is room.

function fit(table) {
  const box = table.parentElement;
  table.classList.remove("as-cards");
  if (box && box.scrollWidth > box.clientWidth + 1) table.classList.add("as-cards");
}

export function fitTables() {
  for (const table of document.querySelectorAll("table.grid")) fit(table);
}

// Again whenever rows are drawn, a tab or the details panel is shown, or the window resized:
// at once (a mutation observer runs before the page is painted), so no frame scrolls sideways.
// Only child lists and `hidden` are watched, so the classes set here do not call it again.
export function watchTables() {
  new MutationObserver(fitTables).observe(document.body,
    { childList: true, subtree: true, attributes: true, attributeFilter: ["hidden"] });
  window.addEventListener("resize", fitTables);
}
