// The explorer page: state, the JSON API, the URL (the lesion is shareable), and wiring.
import { unitScale } from "./colour.js";
import * as charts from "./charts.js";
import { signedSmart as signed } from "./charts.js";
import { NetworkView } from "./network.js";
import { renderUnit } from "./unit.js";

const $ = (id) => document.getElementById(id);
const state = {
  model: null, units: [], byId: new Map(), curves: null,
  lesion: new Set(), selected: null, colour: "selectivity", confusion: "lesioned",
  result: null, detail: null,
};
let network = null;

export const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const fmt = (v, d = 4) => (v === null || v === undefined ? "–" : v.toFixed(d));

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// ---------------------------------------------------------------------------------------- lesion and URL

// Unit ids folded into one "layer:0-9,17" string per layer, in site order.
export function compact(ids) {
  const byLayer = new Map(state.model.sites.map((s) => [s.name, []]));
  for (const id of ids) {
    const cut = id.lastIndexOf(":");
    byLayer.get(id.slice(0, cut))?.push(Number(id.slice(cut + 1)));
  }
  const out = [];
  for (const [layer, idx] of byLayer) {
    if (!idx.length) continue;
    idx.sort((a, b) => a - b);
    const runs = [];
    for (const i of idx) {
      const last = runs[runs.length - 1];
      if (last && i === last[1] + 1) last[1] = i;
      else runs.push([i, i]);
    }
    out.push(`${layer}:${runs.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(",")}`);
  }
  return out;
}

function writeUrl() {
  const p = new URLSearchParams();
  for (const s of compact(state.lesion)) p.append("u", s);
  if (state.colour !== "selectivity") p.set("colour", state.colour);
  if (state.selected) p.set("unit", state.selected);
  const query = p.toString().replaceAll("%3A", ":").replaceAll("%2C", ",");
  history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}`);
}

function lesionChanged() {
  network.mark(state.lesion, state.selected);
  writeUrl();
  updateCount();
  evaluate();
  if (state.detail) renderUnit($("unit-panel"), state, toggleUnit);
}

function updateCount() {
  const n = state.lesion.size;
  const parts = compact(state.lesion).map((s) => {
    const layer = s.slice(0, s.lastIndexOf(":"));
    return `${layer} ${[...state.lesion].filter((id) => id.startsWith(`${layer}:`)).length}`;
  });
  $("lesion-count").textContent = n === 0 ? "no units deleted"
    : `${n} unit${n === 1 ? "" : "s"} deleted (${parts.join(", ")})`;
}

export function toggleUnit(id) {
  if (state.lesion.has(id)) state.lesion.delete(id);
  else state.lesion.add(id);
  lesionChanged();
}

function deleteMore(kind) {
  const k = Math.max(1, Number($("k").value) || 1);
  let pool = state.units.filter((u) => !state.lesion.has(u.id));
  if (kind === "random") {
    for (let i = pool.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [pool[i], pool[j]] = [pool[j], pool[i]];
    }
  } else {
    const key = kind === "selective" ? (u) => u.selectivity : (u) => u.importance;
    pool = pool.filter((u) => key(u) !== null).sort((a, b) => key(b) - key(a));
  }
  for (const u of pool.slice(0, k)) state.lesion.add(u.id);
  lesionChanged();
}

// ---------------------------------------------------------------------------------------- evaluation

let inflight = false;
let wanted = null;

function evaluate() {
  wanted = compact(state.lesion);
  if (!inflight) pump();
}

async function pump() {
  inflight = true;
  $("busy").hidden = false;
  while (wanted) {
    const units = wanted;
    wanted = null;
    try {
      const body = JSON.stringify({ units });
      render(await api("/api/evaluate", { method: "POST", headers: { "content-type": "application/json" }, body }));
    } catch (err) {
      showBanner(`evaluation failed: ${err.message}`);
    }
  }
  inflight = false;
  $("busy").hidden = true;
}

function render(result) {
  state.result = result;
  const intact = state.model.intact;
  const acc = $("accuracy");
  acc.textContent = fmt(result.accuracy);
  acc.dataset.value = String(result.accuracy);
  acc.dataset.lesion = result.lesion.join(" ");
  $("correct").textContent = `${result.correct} / ${result.n} correct`;
  $("accuracy-intact").textContent = fmt(intact.accuracy);
  setDelta($("accuracy-delta"), result.accuracy - intact.accuracy, true);
  $("loss").textContent = fmt(result.loss);
  $("loss").dataset.value = String(result.loss);
  $("loss-intact").textContent = fmt(intact.loss);
  setDelta($("loss-delta"), result.loss - intact.loss, false);
  const metric = state.model.metric;
  if (ownMetric()) {  // a metric of the user's own, measured beside loss and accuracy
    $("own-metric").hidden = false;
    $("own-name").textContent = metric.main;
    $("own").textContent = fmt(result.values[metric.main]);
    $("own").dataset.value = String(result.values[metric.main]);
    $("own-intact").textContent = fmt(intact.values[metric.main]);
    setDelta($("own-delta"), result.values[metric.main] - intact.values[metric.main], metric.higher_is_better);
  }
  drawCharts();
  network.shadeOutputs(result.per_class_accuracy, intact.per_class_accuracy);
}

const ownMetric = () => !["loss", "accuracy"].includes(state.model.metric.main);

function setDelta(node, d, higherIsBetter) {
  node.textContent = `Δ ${signed(d)}`;
  const bad = higherIsBetter ? d < -1e-12 : d > 1e-12;
  const good = higherIsBetter ? d > 1e-12 : d < -1e-12;
  node.classList.toggle("bad", bad);
  node.classList.toggle("good", good);
}

function drawCharts() {
  const r = state.result;
  const m = state.model;
  if (!r) return;
  charts.perClass($("per-class"), m.classes, r.per_class_accuracy, m.intact.per_class_accuracy, tooltip);
  charts.confusion($("confusion"), m.classes, r.confusion, m.intact.confusion, state.confusion, tooltip);
  const candidates = new Set(state.curves.candidates);
  const n = r.units.filter((id) => candidates.has(id.slice(0, id.lastIndexOf(":")))).length;
  charts.curve($("curve"), state.curves, { n, value: r.values[state.curves.column] });
}

// ---------------------------------------------------------------------------------------- units

async function selectUnit(id) {
  state.selected = id;
  network.mark(state.lesion, id);
  writeUrl();
  try {
    state.detail = await api(`/api/units/${encodeURIComponent(id)}`);
    if (state.selected === id) renderUnit($("unit-panel"), state, toggleUnit);
  } catch (err) {
    showBanner(`cannot show unit ${id}: ${err.message}`);
  }
}

function unitTooltip(id) {
  const u = state.byId.get(id);
  if (!u) return null;
  const cls = u.preferred_class >= 0 ? esc(state.model.classes[u.preferred_class]) : "none (dead)";
  const status = state.lesion.has(id) ? " · <b>deleted</b>" : "";
  return `<b>${esc(id)}</b>${status}<br>selectivity ${fmt(u.selectivity, 3)} · prefers ${cls}<br>` +
    `mutual information ${fmt(u.mutual_info, 3)} bits<br>deleted alone: Δ loss ${signed(u.delta_loss)}, ` +
    `Δ accuracy ${signed(u.delta_accuracy)}` +
    (ownMetric() ? `, Δ ${esc(state.model.metric.main)} ${signed(u.delta_main)}` : "");
}

function onUnitClick(id, evt) {
  if (evt.shiftKey || document.querySelector("input[name=click-mode]:checked").value === "inspect") {
    selectUnit(id);
    return;
  }
  toggleUnit(id);
  selectUnit(id);
}

function tooltip(html, evt) {
  const tip = $("tooltip");
  if (!html) {
    tip.hidden = true;
    return;
  }
  tip.innerHTML = html;
  tip.hidden = false;
  const { innerWidth: w, innerHeight: h } = window;
  const box = tip.getBoundingClientRect();
  tip.style.left = `${Math.min(evt.clientX + 14, w - box.width - 8)}px`;
  tip.style.top = `${Math.min(evt.clientY + 14, h - box.height - 8)}px`;
}

function recolour() {
  const scale = unitScale(state.colour, state.units, state.model.classes.length, state.model.metric.main);
  network.recolour(state.units, scale);
  charts.legend($("legend"), scale, state.model.classes);
}

function showBanner(text) {
  const b = $("banner");
  b.textContent = text;
  b.hidden = !text;
}

// ---------------------------------------------------------------------------------------- start

function bindControls() {
  $("colour-mode").addEventListener("change", (e) => { state.colour = e.target.value; recolour(); writeUrl(); });
  $("reset").addEventListener("click", () => { state.lesion.clear(); lesionChanged(); });
  $("delete-random").addEventListener("click", () => deleteMore("random"));
  $("delete-selective").addEventListener("click", () => deleteMore("selective"));
  $("delete-important").addEventListener("click", () => deleteMore("important"));
  $("zoom-in").addEventListener("click", () => network.zoom(1.5));
  $("zoom-out").addEventListener("click", () => network.zoom(1 / 1.5));
  $("zoom-fit").addEventListener("click", () => network.fit());
  $("share").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(location.href);
      $("share").textContent = "link copied";
    } catch {
      window.prompt("Copy this link:", location.href);
    }
    setTimeout(() => { $("share").textContent = "copy link"; }, 1500);
  });
  for (const r of document.querySelectorAll("input[name=confusion-mode]")) {
    r.addEventListener("change", (e) => { state.confusion = e.target.value; drawCharts(); });
  }
  let timer = null;
  window.addEventListener("resize", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { drawNetwork(); drawCharts(); }, 150);
  });
}

function drawNetwork() {
  network.draw(state.model, state.units);
  recolour();
  network.mark(state.lesion, state.selected);
  if (state.result) network.shadeOutputs(state.result.per_class_accuracy, state.model.intact.per_class_accuracy);
}

async function start() {
  const [model, units, curves] = await Promise.all([api("/api/model"), api("/api/units"), api("/api/curves")]);
  Object.assign(state, { model, curves, units: units.map((u) => ({ ...u, id: `${u.layer}:${u.unit}` })) });
  state.byId = new Map(state.units.map((u) => [u.id, u]));
  $("model-name").textContent = `${model.name} · ${model.dataset} · ${model.intact.n} held-out examples · ` +
    `${model.n_units} units in ${model.sites.length} layers`;
  $("curve-note").textContent = `held-out; deleting ${curves.candidates.join(", ")}`;
  if (ownMetric()) {
    $("colour-mode").querySelector("option[value=importance]").textContent = `importance (harm to ${model.metric.main})`;
    $("delete-important").title = `delete the k units whose deletion alone harms ${model.metric.main} most`;
  }
  const params = new URLSearchParams(location.search);
  state.colour = ["selectivity", "importance", "preferred"].includes(params.get("colour")) ? params.get("colour")
    : "selectivity";
  $("colour-mode").value = state.colour;
  network = new NetworkView($("network"), { onClick: onUnitClick, onHover: (id, evt) => tooltip(id && unitTooltip(id), evt) });
  bindControls();
  drawNetwork();
  const asked = params.getAll("u");
  if (asked.length) {
    try {
      const res = await api("/api/evaluate", { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ units: asked }) });
      state.lesion = new Set(res.units);
    } catch (err) {
      showBanner(`the lesion in this link was ignored: ${err.message}`);
    }
  }
  network.mark(state.lesion, state.selected);
  updateCount();
  writeUrl();
  evaluate();
  if (params.get("unit") && state.byId.has(params.get("unit"))) selectUnit(params.get("unit"));
  document.body.dataset.ready = "true";
}

start().catch((err) => showBanner(`the explorer could not start: ${err.message}`));
