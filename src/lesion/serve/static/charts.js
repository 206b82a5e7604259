// Small SVG charts: legend, per-class accuracy bars, confusion matrix, cumulative-deletion curves.
import { blues, categorical, diverging, inkFor, viridis } from "./colour.js";
import { el } from "./network.js";

const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : v.toFixed(d));

// d decimals, or two significant digits where d decimals would show a non-zero value as 0.
export function smart(v, d = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v === 0 || Math.abs(v) >= 10 ** -d) return v.toFixed(d);
  return v.toPrecision(2);
}

export const signedSmart = (v, d = 4) => (v === null ? "–" : (v > 0 ? "+" : v < 0 ? "−" : "±") + smart(Math.abs(v), d));

function sized(svg, height) {
  svg.replaceChildren();
  const width = svg.getBoundingClientRect().width || 400;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", height);
  return width;
}

function label(parent, x, y, text, attrs = {}) {
  const t = el("text", { x, y, fill: "#374151", ...attrs }, parent);
  t.textContent = text;
  return t;
}

export function legend(svg, scale, classes) {
  const width = sized(svg, 30);
  if (scale.kind === "classes") {
    const n = Math.min(classes.length, 10);
    const step = width / n;
    for (let i = 0; i < n; i++) {
      el("rect", { x: i * step + 1, y: 4, width: 10, height: 10, rx: 2, fill: categorical(i, classes.length) }, svg);
      label(svg, i * step + 14, 13, classes[i].slice(0, 6));
    }
    label(svg, 0, 27, classes.length > 10 ? `preferred class (first 10 of ${classes.length})` : "preferred class");
    return;
  }
  const steps = 40;
  const pad = 46;
  const w = width - 2 * pad;
  for (let i = 0; i < steps; i++) {
    const t = i / (steps - 1);
    const fill = scale.kind === "sequential" ? viridis(t) : diverging(2 * t - 1);
    el("rect", { x: pad + (i * w) / steps, y: 3, width: w / steps + 0.5, height: 11, fill }, svg);
  }
  const end = (v) => (scale.kind === "sequential" ? v.toFixed(0) : signedShort(v));
  label(svg, pad - 4, 12, end(scale.lo), { "text-anchor": "end" });
  label(svg, pad + w + 4, 12, end(scale.hi));
  label(svg, pad + w / 2, 27, scale.label, { "text-anchor": "middle" });
}

const signedShort = (v) => (v > 0 ? "+" : v < 0 ? "−" : "") + Math.abs(v).toPrecision(2);

// Vertical bars per class: the intact model's in grey behind, the lesioned model's in front.
export function perClass(svg, classes, lesioned, intact, onHover) {
  const height = 150;
  const width = sized(svg, height);
  const n = classes.length;
  const left = 28;
  const bottom = n <= 20 ? 20 : 6;
  const plotH = height - bottom - 8;
  const step = (width - left - 4) / n;
  const y = (v) => 8 + plotH * (1 - v);
  for (const v of [0, 0.5, 1]) {
    el("line", { x1: left, x2: width - 4, y1: y(v), y2: y(v), class: "grid" }, svg);
    label(svg, left - 4, y(v) + 3, v.toFixed(1), { "text-anchor": "end" });
  }
  for (let i = 0; i < n; i++) {
    const x = left + i * step;
    const a = intact[i] ?? 0;
    const b = lesioned[i] ?? 0;
    const drop = b < a - 1e-9;
    el("rect", { x: x + step * 0.1, y: y(a), width: step * 0.8, height: plotH * a, fill: "#d1d5db" }, svg);
    const bar = el("rect", { x: x + step * 0.25, y: y(b), width: step * 0.5, height: plotH * b,
      fill: drop ? "#ea580c" : "#2563eb", class: "class-bar", "data-class": i }, svg);
    bar.addEventListener("pointermove", (evt) => onHover?.(
      `<b>${classes[i]}</b><br>accuracy ${fmt(b)} (intact ${fmt(a)}, Δ ${fmt(b - a)})`, evt));
    bar.addEventListener("pointerleave", (evt) => onHover?.(null, evt));
    if (n <= 20) label(svg, x + step / 2, height - 6, classes[i].slice(0, 5), { "text-anchor": "middle" });
  }
}

// Row-normalised confusion matrix, lesioned or its change from the intact model.
export function confusion(svg, classes, lesioned, intact, mode, onHover) {
  const n = classes.length;
  const width = svg.getBoundingClientRect().width || 400;
  const left = n <= 20 ? 44 : 8;
  const top = n <= 20 ? 16 : 4;
  const cell = Math.min(26, (width - left - 8) / n);
  const height = top + n * cell + 6;
  sized(svg, height);
  const rows = (m) => m.map((r) => { const s = r.reduce((a, b) => a + b, 0) || 1; return r.map((v) => v / s); });
  const L = rows(lesioned);
  const I = rows(intact);
  const g = el("g", {}, svg);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const d = L[i][j] - I[i][j];
      const fill = mode === "delta" ? diverging(Math.max(-1, Math.min(1, (i === j ? 1 : 4) * d)))
        : blues(Math.sqrt(L[i][j]));
      const r = el("rect", { x: left + j * cell, y: top + i * cell, width: cell, height: cell, fill,
        stroke: "#e5e7eb", "stroke-width": 0.5 }, g);
      r.addEventListener("pointermove", (evt) => onHover?.(
        `true <b>${classes[i]}</b>, predicted <b>${classes[j]}</b><br>${lesioned[i][j]} examples ` +
        `(intact ${intact[i][j]})`, evt));
      r.addEventListener("pointerleave", (evt) => onHover?.(null, evt));
      if (cell >= 20 && lesioned[i][j] > 0) {
        label(g, left + j * cell + cell / 2, top + i * cell + cell / 2 + 3,
          mode === "delta" ? signed(lesioned[i][j] - intact[i][j]) : String(lesioned[i][j]),
          { "text-anchor": "middle", fill: inkFor(fill), "font-size": 9, "pointer-events": "none" });
      }
    }
    if (n <= 20) {
      label(svg, left - 4, top + i * cell + cell / 2 + 3, classes[i].slice(0, 7), { "text-anchor": "end" });
      label(svg, left + i * cell + cell / 2, top - 4, classes[i].slice(0, 3), { "text-anchor": "middle" });
    }
  }
  return height;
}

const signed = (v) => (v > 0 ? `+${v}` : v === 0 ? "" : String(v));

const CURVE_STYLE = {
  random: { colour: "#2563eb", name: "random" },
  selectivity_high: { colour: "#9333ea", name: "most selective first", dash: "5 3" },
  importance_high: { colour: "#dc2626", name: "most important first", dash: "2 2" },
};

// The curve column (accuracy by default) against units deleted; the current lesion as a marked point.
export function curve(svg, data, current) {
  const height = 190;
  const width = sized(svg, height);
  const m = { l: 40, r: 10, t: 26, b: 28 };
  const n = data.n_candidates;
  const [lo, hi] = curveRange(data, current);
  const x = (k) => m.l + ((width - m.l - m.r) * k) / n;
  const y = (v) => m.t + (height - m.t - m.b) * (1 - (v - lo) / (hi - lo));
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    el("line", { x1: m.l, x2: width - m.r, y1: y(v), y2: y(v), class: "grid" }, svg);
    label(svg, m.l - 4, y(v) + 3, smart(v, 2), { "text-anchor": "end" });
  }
  for (const [k, anchor] of [[0, "start"], [Math.round(n / 2), "middle"], [n, "end"]]) {
    label(svg, x(k), height - 14, String(k), { "text-anchor": anchor });
  }
  label(svg, (m.l + width - m.r) / 2, height - 2, `units deleted (y: ${data.column})`, { "text-anchor": "middle" });
  const clip = (v) => Math.min(hi, Math.max(lo, v));
  for (const c of data.curves) {
    const s = CURVE_STYLE[c.order] || { colour: "#6b7280", name: c.order };
    if (c.order === "random" && c.repeats > 1) {
      const up = c.n_ablated.map((k, i) => `${x(k)},${y(clip(c.value[i] + c.value_sd[i]))}`);
      const down = c.n_ablated.map((k, i) => `${x(k)},${y(clip(c.value[i] - c.value_sd[i]))}`).reverse();
      el("polygon", { points: [...up, ...down].join(" "), fill: s.colour, opacity: 0.15 }, svg);
    }
    const pts = c.n_ablated.map((k, i) => `${x(k)},${y(c.value[i])}`).join(" ");
    el("polyline", { points: pts, fill: "none", stroke: s.colour, "stroke-width": 1.6,
      "stroke-dasharray": s.dash || "none" }, svg);
  }
  drawCurveLegend(svg, data, width);
  if (current && Number.isFinite(current.value)) {
    const cx = x(Math.min(n, current.n));
    el("line", { x1: cx, x2: cx, y1: m.t, y2: height - m.b, stroke: "#f97316", "stroke-dasharray": "3 3" }, svg);
    el("circle", { cx, cy: y(clip(current.value)), r: 5, fill: "#f97316", stroke: "#fff", "stroke-width": 1.5,
      id: "curve-marker" }, svg);
    label(svg, cx + (cx > width - 90 ? -8 : 8), y(clip(current.value)) - 8, "this lesion",
      { "text-anchor": cx > width - 90 ? "end" : "start", fill: "#c2410c" });
  }
}

// The y range: 0..1 for accuracy, else the curves' (and the current lesion's) range, padded.
function curveRange(data, current) {
  if (data.column === "accuracy") return [0, 1];
  const vals = data.curves.flatMap((c) => c.value.flatMap((v, i) => [v - c.value_sd[i], v + c.value_sd[i]]));
  if (current && Number.isFinite(current.value)) vals.push(current.value);
  let lo = Math.min(...vals);
  let hi = Math.max(...vals);
  if (!(hi > lo)) [lo, hi] = [lo - 0.5, hi + 0.5];
  const pad = 0.05 * (hi - lo);
  return [lo - pad, hi + pad];
}

// One row above the plot, so that it never hides a curve.
function drawCurveLegend(svg, data, width) {
  let x = 4;
  const items = [];
  for (const c of data.curves) {
    const s = CURVE_STYLE[c.order] || { colour: "#6b7280", name: c.order };
    const g = el("g", {}, svg);
    el("line", { x1: x, x2: x + 16, y1: 9, y2: 9, stroke: s.colour, "stroke-width": 2,
      "stroke-dasharray": s.dash || "none" }, g);
    const t = label(g, x + 20, 12, c.order === "random" ? `${s.name} (± SD, ${c.repeats})` : s.name);
    x += 20 + t.getComputedTextLength() + 12;
    items.push(g);
  }
  const spare = width - x;  // centre the row
  if (spare > 0) for (const g of items) g.setAttribute("transform", `translate(${spare / 2},0)`);
}

// Horizontal bars per class for a unit: values may be negative (drops) or positive (activity).
export function classBars(svg, classes, values, { highlight = -1, signedScale = false, format = 3 } = {}) {
  const n = classes.length;
  const row = n <= 20 ? 15 : 6;
  const height = n * row + 6;
  const width = sized(svg, height);
  const left = n <= 20 ? 56 : 6;
  const finite = values.map((v) => (Number.isFinite(v) ? v : 0));
  const span = Math.max(1e-9, ...finite.map(Math.abs));
  const zero = signedScale ? left + (width - left - 44) / 2 : left;
  const scale = (signedScale ? (width - left - 44) / 2 : width - left - 44) / span;
  el("line", { x1: zero, x2: zero, y1: 0, y2: height, class: "axis" }, svg);
  finite.forEach((v, i) => {
    const w = Math.abs(v) * scale;
    const fill = i === highlight ? "#f97316" : signedScale ? (v < 0 ? "#ea580c" : "#16a34a") : "#60a5fa";
    el("rect", { x: v < 0 ? zero - w : zero, y: 3 + i * row, width: Math.max(w, v === 0 ? 0 : 1),
      height: row - 4, fill }, svg);
    if (n <= 20) {
      label(svg, left - 4, 3 + i * row + row / 2 + 3, classes[i].slice(0, 9), { "text-anchor": "end" });
      label(svg, width - 2, 3 + i * row + row / 2 + 3, smart(values[i], format),
        { "text-anchor": "end", fill: "#6b7280" });
    }
  });
}
