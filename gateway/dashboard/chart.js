// Charts as inline SVG, drawn here: no library, nothing fetched, nothing inline for the
// Content-Security-Policy to refuse (colours come from classes in style.css, so dark mode works).

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) if (value != null) node.setAttribute(key, String(value));
  for (const child of children) if (child != null) node.append(child instanceof Node ? child : String(child));
  return node;
}

// The smallest of 1, 2, 2.5, 5 times a power of ten at or above `value`: the axis' top.
function niceTop(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].find((step) => value <= step * power + 1e-9) * power;
}

export function rate(value) {
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits });
}

// "10:15" within a day, "11-20 10:00" beyond (UTC, as every time on the page).
function tick(iso, long) {
  return long ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : iso.slice(11, 16);
}

// Bars per bucket, stacked by series. series: [{name, cls, values: [number per bucket]}].
export function stackedBars({ buckets, bucketSeconds, series, width, height = 150, unit = "/min", title }) {
  width = Math.max(260, Math.round(width));
  const pad = { left: 46, right: 10, top: 10, bottom: 22 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const totals = buckets.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const top = niceTop(Math.max(0, ...totals));
  const y = (value) => pad.top + plotH - (value / top) * plotH;
  const slot = plotW / Math.max(1, buckets.length);
  const gap = slot > 5 ? 1 : 0;
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
                             "aria-label": title });

  for (const value of [0, top / 2, top]) {
    chart.append(svg("line", { class: "grid-line", x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value) }),
      svg("text", { class: "axis", x: pad.left - 6, y: y(value) + 4, "text-anchor": "end" }, rate(value)));
  }
  const long = buckets.length * bucketSeconds > 86400;
  buckets.forEach((start, i) => {
    let base = 0;
    const x = pad.left + i * slot + gap;
    for (const s of series) {
      const value = s.values[i] || 0;
      if (!value) continue;
      chart.append(svg("rect", { class: `bar ${s.cls}`, x: x.toFixed(2), y: y(base + value).toFixed(2),
                                 width: Math.max(0.8, slot - 2 * gap).toFixed(2),
                                 height: (y(base) - y(base + value)).toFixed(2) },
        svg("title", {}, `${tick(start, true)} UTC · ${s.name}: ${rate(value)}${unit}`)));
      base += value;
    }
  });
  const marks = buckets.length > 2 ? [0, Math.floor(buckets.length / 2), buckets.length - 1] : buckets.map((_, i) => i);
  for (const i of marks) {
    const anchor = i === 0 ? "start" : i === buckets.length - 1 ? "end" : "middle";
    const x = pad.left + i * slot + (anchor === "start" ? 0 : anchor === "end" ? slot : slot / 2);
    chart.append(svg("text", { class: "axis", x: x.toFixed(1), y: height - 6, "text-anchor": anchor },
      tick(buckets[i], long)));
  }
  if (!totals.some(Boolean)) {
    chart.append(svg("text", { class: "axis empty", x: pad.left + plotW / 2, y: pad.top + plotH / 4 + 4,
                               "text-anchor": "middle" }, "none in this window"));
  }
  return chart;
}
