// The transformer page: a column per block (heads, MLP neurons), the text token by token, the loss.
import { blues, diverging, inkFor, quantile } from "./colour.js";

const $ = (id) => document.getElementById(id);
const state = { model: null, lesion: new Set(), replacement: "zero", result: null, request: 0 };

const fmt = (v, d = 4) => (v === null || v === undefined ? "–" : v.toFixed(d));
const signed = (v, d = 4) => (v === null || v === undefined ? "–" : `${v >= 0 ? "+" : "−"}${Math.abs(v).toFixed(d)}`);

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function banner(message) {
  $("banner").hidden = !message;
  $("banner").textContent = message || "";
}

// ------------------------------------------------------------------------------------------------ blocks

function cell(id, cls, label, title) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `cell ${cls}`;
  b.dataset.id = id;
  b.title = title;
  b.setAttribute("aria-pressed", "false");
  if (label !== null) b.textContent = label;
  b.addEventListener("click", (e) => (e.shiftKey ? openCard(id) : toggle(id)));
  return b;
}

async function openCard(id) {  // the unit's card, rendered by the atlas's template (card.js)
  $("card-panel").hidden = false;
  $("unit-card").textContent = "measuring every unit's card (first time only)…";
  try {
    const doc = await api(`/api/cards/${encodeURIComponent(id)}`);
    $("unit-card").replaceChildren(window.LesionCard.render(doc.card, doc));
  } catch (err) {
    $("unit-card").textContent = String(err.message || err);
  }
}

function neuronColumns(n) {
  return n <= 32 ? 8 : n <= 256 ? 16 : 32;
}

function renderBlocks() {
  const root = $("blocks");
  root.replaceChildren();
  state.model.blocks.forEach((block, i) => {
    const col = document.createElement("div");
    col.className = "block";
    col.dataset.block = block.name;
    const title = document.createElement("h3");
    title.textContent = `block ${i} `;
    const path = document.createElement("span");
    path.className = "muted";
    path.textContent = block.name;
    title.append(path);
    col.append(title);
    if (block.heads) {
      col.append(label(`${block.n_heads} heads`, block.heads));
      const grid = document.createElement("div");
      grid.className = "heads";
      const cols = block.n_heads <= 8 ? block.n_heads : Math.ceil(block.n_heads / Math.ceil(block.n_heads / 8));
      grid.style.gridTemplateColumns = `repeat(${cols}, 26px)`;
      for (let h = 0; h < block.n_heads; h++) {
        grid.append(cell(`${block.heads}:${h}`, "head", String(h), `${block.heads}:${h} (head ${h})`));
      }
      col.append(grid);
    }
    if (block.mlp) {
      col.append(label(`${block.n_neurons} MLP neurons`, block.mlp));
      const grid = document.createElement("div");
      grid.className = "neurons";
      grid.style.gridTemplateColumns = `repeat(${neuronColumns(block.n_neurons)}, 11px)`;
      for (let j = 0; j < block.n_neurons; j++) {
        grid.append(cell(`${block.mlp}:${j}`, "neuron", null, `${block.mlp}:${j} (neuron ${j})`));
      }
      col.append(grid);
    }
    root.append(col);
  });
}

function label(text, site) {
  const d = document.createElement("div");
  d.className = "site-name";
  d.textContent = text;
  d.title = site;
  return d;
}

function markCells() {
  for (const el of document.querySelectorAll(".cell")) {
    const on = state.lesion.has(el.dataset.id);
    el.classList.toggle("deleted", on);
    el.setAttribute("aria-pressed", String(on));
  }
  const n = state.lesion.size;
  const heads = [...state.lesion].filter((id) => state.model.blocks.some((b) => b.heads && id.startsWith(`${b.heads}:`))).length;
  $("lesion-count").textContent = n === 0 ? "no units deleted"
    : `${n} unit${n === 1 ? "" : "s"} deleted (${heads} head${heads === 1 ? "" : "s"}, ${n - heads} neuron${n - heads === 1 ? "" : "s"})`;
}

function toggle(id) {
  if (state.lesion.has(id)) state.lesion.delete(id);
  else state.lesion.add(id);
  changed();
}

function changed() {
  markCells();
  writeUrl();
  evaluate();
}

// Colour every cell by the change in loss when that unit alone is deleted (measured by the server once).
async function colourByImportance() {
  const button = $("importance");
  button.disabled = true;
  const note = $("importance-note");
  note.hidden = false;
  note.textContent = "measuring every unit deleted alone…";
  try {
    const { delta_loss: delta } = await api("/api/importance");
    // heads and neurons differ by orders of magnitude: each kind gets its own symmetric scale
    const heads = new Set(state.model.blocks.map((b) => b.heads).filter(Boolean));
    const spanOf = (isHead, q) => Math.max(1e-9, quantile(Object.entries(delta)
      .filter(([site]) => heads.has(site) === isHead).flatMap(([, v]) => v.map(Math.abs)), q));
    const spans = { head: spanOf(true, 1), neuron: spanOf(false, 0.98) }; // few heads: the largest sets it
    for (const el of document.querySelectorAll(".cell")) {
      const id = el.dataset.id;
      const cut = id.lastIndexOf(":");
      const v = delta[id.slice(0, cut)]?.[Number(id.slice(cut + 1))];
      if (v === undefined) continue;
      const bg = diverging(v / spans[heads.has(id.slice(0, cut)) ? "head" : "neuron"]);
      el.style.background = bg;
      el.style.color = inkFor(bg);
      el.dataset.delta = String(v);
      el.title = `${id}: Δ loss ${signed(v)} when deleted alone`;
    }
    note.textContent = "cells coloured by the change in loss when each unit alone is deleted (blue: lower, "
      + `white: none, red: higher); full red at +${spans.head.toFixed(4)} for heads, `
      + `+${spans.neuron.toFixed(4)} for neurons`;
    document.body.dataset.importance = "true";
  } catch (err) {
    note.hidden = true;
    button.disabled = false;
    banner(`could not measure the units: ${err.message}`);
  }
}

// --------------------------------------------------------------------------------------------- URL state

function writeUrl() {
  const p = new URLSearchParams();
  for (const id of state.lesion) p.append("u", id);
  if (state.replacement !== "zero") p.set("r", state.replacement);
  const query = p.toString().replaceAll("%3A", ":");
  history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}`);
}

function readUrl() {
  const p = new URLSearchParams(location.search);
  const known = new Set([...document.querySelectorAll(".cell")].map((el) => el.dataset.id));
  for (const id of p.getAll("u")) if (known.has(id)) state.lesion.add(id);
  if (p.get("r") === "mean") state.replacement = "mean";
  $("replacement").value = state.replacement;
}

// ------------------------------------------------------------------------------------------- evaluation

async function evaluate() {
  const id = ++state.request;
  $("busy").hidden = false;
  try {
    const body = JSON.stringify({ units: [...state.lesion], replacement: state.replacement });
    const result = await api("/api/evaluate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
    });
    if (id !== state.request) return; // a later click has superseded this answer
    state.result = result;
    banner(null);
    renderMetrics();
    renderText();
  } catch (err) {
    if (id === state.request) banner(`could not evaluate: ${err.message}`);
  } finally {
    if (id === state.request) $("busy").hidden = true;
  }
}

function setDelta(el, v, d = 4, worseIfUp = true) {
  el.textContent = signed(v, d);
  el.dataset.value = v === null ? "" : String(v);
  el.classList.toggle("bad", v !== null && (worseIfUp ? v > 1e-12 : v < -1e-12));
  el.classList.toggle("good", v !== null && (worseIfUp ? v < -1e-12 : v > 1e-12));
}

function renderMetrics() {
  const r = state.result;
  const intact = state.model.intact;
  $("loss").textContent = fmt(r.loss);
  $("loss").dataset.value = String(r.loss);
  $("loss").dataset.lesion = r.lesion.join(" ");
  $("loss-intact").textContent = fmt(intact.loss);
  setDelta($("loss-delta"), r.delta_loss);
  $("accuracy").textContent = fmt(r.accuracy);
  $("accuracy").dataset.value = String(r.accuracy);
  $("accuracy-intact").textContent = fmt(intact.accuracy);
  setDelta($("accuracy-delta"), r.delta_accuracy, 4, false);
  $("n-tokens").textContent = String(r.n_tokens);
  if (state.model.answer) {
    $("logit-diff").textContent = fmt(r.logit_diff);
    $("logit-diff").dataset.value = String(r.logit_diff);
    $("logit-diff-intact").textContent = fmt(intact.logit_diff);
    setDelta($("logit-diff-delta"), r.delta_logit_diff, 4, false);
  }
}

// -------------------------------------------------------------------------------------------------- text

function renderText() {
  const r = state.result;
  const lesioned = r.n_deleted > 0;
  const values = lesioned ? r.token_delta : r.token_loss;
  const flat = values.flat();
  const span = Math.max(1e-6, quantile(flat.map(Math.abs), 0.99));
  const colour = lesioned ? (v) => diverging(v / span) : (v) => blues(v / span);
  $("text-note").textContent = lesioned
    ? "each token coloured by the change in its next-token loss (red: worse)"
    : "each token coloured by its next-token loss, intact (delete a unit to see the change)";
  legend(lesioned, span);
  const root = $("text");
  root.replaceChildren();
  state.model.tokens.forEach((row, s) => {
    const line = document.createElement("div");
    line.className = "seq";
    const lab = document.createElement("span");
    lab.className = "row-label";
    lab.textContent = `#${s}`;
    line.append(lab);
    row.forEach((text, t) => {
      const tok = document.createElement("span");
      tok.className = "tok";
      tok.textContent = text;
      tok.dataset.seq = String(s);
      tok.dataset.pos = String(t);
      if (t === 0) {
        tok.classList.add("first");
        tok.title = `${text} (id ${state.model.token_ids[s][t]}): first token, not predicted`;
      } else {
        const v = values[s][t - 1];
        const bg = colour(v);
        tok.style.background = bg;
        tok.style.color = inkFor(bg);
        tok.dataset.loss = String(r.token_loss[s][t - 1]);
        tok.dataset.delta = String(r.token_delta ? r.token_delta[s][t - 1] : 0);
        const intact = state.model.intact.token_loss[s][t - 1];
        tok.title = `${text} (id ${state.model.token_ids[s][t]}), position ${t}: loss ${fmt(intact)} intact`
          + (lesioned ? ` → ${fmt(r.token_loss[s][t - 1])} (${signed(r.token_delta[s][t - 1])})` : "");
      }
      line.append(tok);
    });
    root.append(line);
  });
  if (state.model.n_sequences > state.model.tokens.length) {
    const more = document.createElement("div");
    more.className = "muted";
    more.textContent = `showing ${state.model.tokens.length} of ${state.model.n_sequences} sequences; the totals count all`;
    root.append(more);
  }
}

function legend(lesioned, span) {
  const svg = $("legend");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const w = 200, x0 = 60;
  const steps = 40;
  for (let i = 0; i < steps; i++) {
    const t = i / (steps - 1);
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", String(x0 + (i * w) / steps));
    rect.setAttribute("y", "2");
    rect.setAttribute("width", String(w / steps + 0.5));
    rect.setAttribute("height", "10");
    rect.setAttribute("fill", lesioned ? diverging(2 * t - 1) : blues(t));
    svg.append(rect);
  }
  const lo = lesioned ? signed(-span, 3) : "0";
  const hi = lesioned ? signed(span, 3) : fmt(span, 3);
  for (const [x, text, anchor] of [[x0, lo, "middle"], [x0 + w, hi, "middle"], [x0 + w / 2, lesioned ? "0" : "", "middle"]]) {
    const el = document.createElementNS(ns, "text");
    el.setAttribute("x", String(x));
    el.setAttribute("y", "25");
    el.setAttribute("text-anchor", anchor);
    el.textContent = text;
    svg.append(el);
  }
  const cap = document.createElementNS(ns, "text");
  cap.setAttribute("x", "0");
  cap.setAttribute("y", "11");
  cap.textContent = lesioned ? "Δ loss" : "loss";
  svg.append(cap);
}

// ----------------------------------------------------------------------------------------------- startup

async function main() {
  try {
    state.model = await api("/api/model");
  } catch (err) {
    banner(`could not load the model: ${err.message}`);
    return;
  }
  const m = state.model;
  $("model-name").textContent = `${m.name} · ${m.blocks.length} blocks · ${m.n_units} units · `
    + `${m.n_sequences} × ${m.seq_len} tokens of ${m.dataset}`;
  if (m.answer) {
    $("answer-metric").hidden = false;
    $("answer-tokens").textContent = `logit[${m.answer[0]}] − logit[${m.answer[1]}], last token`;
  }
  renderBlocks();
  readUrl();
  $("replacement").addEventListener("change", (e) => {
    state.replacement = e.target.value;
    changed();
  });
  $("importance").addEventListener("click", colourByImportance);
  $("reset").addEventListener("click", () => {
    state.lesion.clear();
    changed();
  });
  markCells();
  await evaluate();
  document.body.dataset.ready = "true";
}

main();
