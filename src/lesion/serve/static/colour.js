// Colour scales for units and charts: sequential (viridis), diverging (blue-white-red), categorical.

const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58",
  "#b5de2b", "#fde725"];
const DIVERGING = ["#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d",
  "#b2182b"];
const BLUES = ["#ffffff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c",
  "#08306b"];
const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];
export const DEAD = "#d4d4d8";

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function ramp(stops, t) {
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const a = hexToRgb(stops[i]);
  const b = hexToRgb(stops[i + 1]);
  const f = x - i;
  const c = a.map((v, k) => Math.round(v + (b[k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

export const viridis = (t) => ramp(VIRIDIS, t);
export const blues = (t) => ramp(BLUES, t);

// t in [-1, 1]: -1 blue, 0 near-white, +1 red.
export const diverging = (t) => ramp(DIVERGING, (t + 1) / 2);

export function categorical(i, n) {
  if (i < 0) return DEAD;
  if (n <= 10) return TAB10[i % 10];
  return `hsl(${Math.round((360 * i) / n)}, 62%, 52%)`;
}

// Black or white, whichever reads better on a background colour "rgb(...)", "#rrggbb" or "hsl(...)".
export function inkFor(colour) {
  let rgb;
  if (colour.startsWith("#")) rgb = hexToRgb(colour);
  else if (colour.startsWith("rgb")) rgb = colour.match(/\d+/g).map(Number);
  else return "#111";
  const lum = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255;
  return lum > 0.55 ? "#111" : "#fff";
}

// The value at quantile q of the finite numbers in values.
export function quantile(values, q) {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (!v.length) return 0;
  return v[Math.min(v.length - 1, Math.floor(q * (v.length - 1)))];
}

// A unit -> colour function for a colour mode, and the legend describing it.
export function unitScale(mode, units, nClasses, main = "loss") {
  if (mode === "preferred") {
    return { colour: (u) => (u.dead ? DEAD : categorical(u.preferred_class, nClasses)), kind: "classes" };
  }
  if (mode === "importance") {
    const span = Math.max(1e-9, quantile(units.map((u) => Math.abs(u.importance)), 0.98));
    return {
      colour: (u) => (u.dead ? DEAD : diverging(u.importance / span)),
      kind: "diverging", lo: -span, hi: span,
      label: main === "loss" ? "Δ loss when deleted alone (grey: dead unit)"
        : `harm to ${main} when deleted alone (grey: dead unit)`,
    };
  }
  return {
    colour: (u) => (u.dead || u.selectivity === null ? DEAD : viridis(u.selectivity)),
    kind: "sequential", lo: 0, hi: 1, label: "class selectivity (grey: dead unit)",
  };
}
