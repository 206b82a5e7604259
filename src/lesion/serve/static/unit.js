// The selected unit: its measures, per-class charts and the held-out images it responds to most.
import { classBars, signedSmart as signed, smart as fmt } from "./charts.js";

function node(tag, attrs = {}, text = null) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== null) n.textContent = text;
  return n;
}

function stats(d, classes, metric) {
  const dl = node("dl", { class: "stats" });
  const rows = [
    ["selectivity", fmt(d.selectivity)],
    ["preferred class", d.preferred_class >= 0 ? classes[d.preferred_class] : "none (dead unit)"],
    ["mutual information", d.mutual_info === null ? "–" : `${fmt(d.mutual_info)} bits`],
    ["mean activity", `${fmt(d.mean_activity)} ± ${fmt(d.sd_activity)}`],
    ["Δ loss, deleted alone", signed(d.delta_loss)],
    ["Δ accuracy, deleted alone", signed(d.delta_accuracy)],
    ["accuracy, deleted alone", fmt(d.accuracy, 4)],
  ];
  if (metric && !["loss", "accuracy"].includes(metric.main)) {
    rows.push([`Δ ${metric.main}, deleted alone`, signed(d.delta_main)], [`${metric.main}, deleted alone`, fmt(d.main, 4)]);
  }
  if (d.dead) rows.push(["dead", "never responds on the held-out data"]);
  for (const [k, v] of rows) {
    dl.append(node("dt", {}, k), node("dd", { "data-stat": k }, v));
  }
  return dl;
}

function chartBox(title, id) {
  const box = node("div", { class: "unit-chart" });
  box.append(node("h3", {}, title));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.id = id;
  svg.classList.add("chart");
  box.append(svg);
  return [box, svg];
}

function thumbs(d, classes) {
  const grid = node("div", { class: "thumbs", id: "unit-thumbs" });
  for (const ex of d.top_examples) {
    const fig = node("figure");
    const img = node("img", {
      src: `/api/images/${ex.index}`, alt: `held-out example ${ex.index}, class ${classes[ex.label]}`,
      title: `example ${ex.index}: class ${classes[ex.label]}, activity ${fmt(ex.activity)}`,
    });
    if (ex.label === d.preferred_class) img.classList.add("match");
    fig.append(img, node("figcaption", {}, `${classes[ex.label]} · ${fmt(ex.activity, 2)}`));
    grid.append(fig);
  }
  return grid;
}

export function renderUnit(panel, state, toggle) {
  const d = state.detail;
  const classes = state.model.classes;
  const deleted = state.lesion.has(d.address);
  const head = node("div", { class: "unit-head" });
  head.append(node("h2", {}, d.address));
  head.append(node("span", { class: `unit-state${deleted ? " deleted" : ""}` }, deleted ? "deleted" : "intact"));
  const button = node("button", { type: "button", id: "unit-toggle" }, deleted ? "restore this unit" : "delete this unit");
  button.addEventListener("click", () => toggle(d.address));
  head.append(button);
  const grid = node("div", { class: "unit-grid" });
  const [means, meansSvg] = chartBox("mean activity per class", "unit-means");
  const [drops, dropsSvg] = chartBox("accuracy change per class when deleted alone", "unit-drops");
  grid.append(stats(d, classes, state.model.metric), means, drops);
  const title = node("p", { class: "thumbs-title" },
    "held-out images it responds to most (green: of its preferred class)");
  const cardButton = node("button", { type: "button", id: "unit-card-open" }, "its card (as in the atlas)");
  const cardBox = node("div", { id: "unit-card" });
  cardButton.addEventListener("click", async () => {
    cardBox.textContent = "measuring every unit's card (first time only)…";
    const r = await fetch(`/api/cards/${encodeURIComponent(d.address)}`);
    const doc = await r.json();
    cardBox.replaceChildren(r.ok ? window.LesionCard.render(doc.card, { images: doc.images, meta: doc.meta })
      : node("p", {}, doc.error || "no card"));
  });
  panel.replaceChildren(head, grid, title, thumbs(d, classes), cardButton, cardBox);
  classBars(meansSvg, classes, d.class_means, { highlight: d.preferred_class, format: 2 });
  classBars(dropsSvg, classes, d.per_class_delta_accuracy, { signedScale: true, format: 3 });
}
