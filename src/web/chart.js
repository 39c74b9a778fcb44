// streamkit's charts: line charts drawn as inline SVG, with no library and nothing loaded
// from the internet. Served by the binary at /chart.js.
//
//   streamkitChart(element, {title, unit, t: [ms since the epoch], series: [{name, values, color, dash}]})
//
// `values` has one entry per time, `null` for a gap. Each line is a <path class="series">
// with `data-series` (its name) and `data-points` (how many values it draws).
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#059669", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
  const W = 560, H = 170, LEFT = 58, RIGHT = 10, TOP = 10, BOTTOM = 22;

  function compact(v) {
    const a = Math.abs(v), short = n => parseFloat(n.toPrecision(3)).toString();
    if (a >= 1e9) return short(v / 1e9) + "G";
    if (a >= 1e6) return short(v / 1e6) + "M";
    if (a >= 1e3) return short(v / 1e3) + "k";
    return a === 0 ? "0" : short(v);
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  function node(name, attrs, parent) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (parent) parent.appendChild(el);
    return el;
  }
  function clock(ms) {
    return new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
  }

  window.streamkitChart = function (element, spec) {
    const t = spec.t || [];
    const series = (spec.series || []).filter(s => s.values);
    element.replaceChildren();
    element.classList.add("chart");
    const title = document.createElement("div");
    title.className = "chart-title";
    title.textContent = spec.title + (spec.unit ? " (" + spec.unit + ")" : "");
    element.appendChild(title);
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": spec.title });
    element.appendChild(svg);
    const last = t.length ? t[t.length - 1] : Date.now();
    const first = Math.min(t.length ? t[0] : last, last - 60e3);
    const span = Math.max(1, last - first);
    let top = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > top) top = v;
    top = niceMax(top * 1.05);
    const x = ms => LEFT + (ms - first) / span * (W - LEFT - RIGHT);
    const y = v => TOP + (1 - v / top) * (H - TOP - BOTTOM);
    for (const f of [0, 0.5, 1]) {
      node("line", { x1: LEFT, x2: W - RIGHT, y1: y(top * f), y2: y(top * f), class: "grid", stroke: "#e5e7eb" }, svg);
      const label = node("text", { x: LEFT - 6, y: y(top * f) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7280" }, svg);
      label.textContent = compact(top * f);
    }
    for (const [ms, anchor] of [[first, "start"], [last, "end"]]) {
      const label = node("text", { x: x(ms), y: H - 6, "text-anchor": anchor, "font-size": 11, fill: "#6b7280" }, svg);
      label.textContent = clock(ms);
    }
    const legend = document.createElement("div");
    legend.className = "legend";
    series.forEach((s, i) => {
      const color = s.color || COLORS[i % COLORS.length];
      let d = "", points = 0, pen = "M", latest = null;
      const lonely = [];
      const value = j => j >= 0 && j < t.length && s.values[j] !== null && s.values[j] !== undefined;
      s.values.forEach((v, j) => {
        if (!value(j)) { pen = "M"; return; }
        d += pen + x(t[j]).toFixed(1) + " " + y(v).toFixed(1) + " ";
        pen = "L"; points++; latest = v;
        if (!value(j - 1) && !value(j + 1)) lonely.push(j);
      });
      const attrs = { d: d.trim(), fill: "none", stroke: color, "stroke-width": 1.6, class: "series", "data-series": s.name, "data-points": points };
      if (s.dash) attrs["stroke-dasharray"] = "5 4";
      node("path", attrs, svg);
      // A point with no neighbour draws no line: a dot shows it.
      for (const j of lonely) node("circle", { cx: x(t[j]).toFixed(1), cy: y(s.values[j]).toFixed(1), r: 2.5, fill: color }, svg);
      const item = document.createElement("span");
      item.className = "legend-item";
      const swatch = document.createElement("i");
      swatch.style.background = color;
      item.append(swatch, s.name + ": " + (latest === null ? "–" : compact(latest)));
      legend.appendChild(item);
    });
    element.appendChild(legend);
  };

  // The CSS the charts need, once per page.
  const style = document.createElement("style");
  style.textContent = ".chart svg{width:100%;height:170px;display:block}" +
    ".chart-title{font-size:12px;font-weight:600;color:#374151;margin-bottom:4px}" +
    ".legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;color:#4b5563;margin-top:2px}" +
    ".legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}" +
    ".charts{display:grid;grid-template-columns:1fr 1fr;gap:18px}" +
    "@media (max-width:900px){.charts{grid-template-columns:1fr}}";
  document.head.appendChild(style);
})();
