// The network drawing: a column per site, a square per unit, zoom and pan on the SVG viewBox.
import { diverging, inkFor } from "./colour.js";

const NS = "http://www.w3.org/2000/svg";
const TOP = 46;       // room for the column titles
const BOTTOM = 14;
const MAX_GAP = 54;   // between columns: the "flow" bands
const IO_W = 64;      // input and output columns
const MAX_CELL = 26;
const MAX_LABELLED = 6000;  // draw preferred-class labels up to this many units

export function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// Rows per column and cell size such that every site fits the box (width x height), cells as big as can be.
export function layout(sites, width, height) {
  const avail = height - TOP - BOTTOM;
  const widest = Math.max(...sites.map((s) => s.width));
  const gap = Math.max(14, Math.min(MAX_GAP, (width * 0.3) / (sites.length + 1)));
  const fixed = 2 * IO_W + (sites.length + 1) * gap;
  let best = null;
  for (let rows = 1; rows <= widest; rows++) {
    const cell = Math.min(MAX_CELL, avail / rows);
    const cols = sites.map((s) => Math.ceil(s.width / rows));
    const total = cols.reduce((a, c) => a + c * cell, 0) + fixed;
    best = { rows, cell, cols, total };
    if (total <= width || cell < 3) break;
  }
  let x = IO_W + gap;
  const columns = sites.map((s, i) => {
    const cols = best.cols[i];
    const rows = Math.ceil(s.width / cols);
    const w = cols * best.cell;
    const h = rows * best.cell;
    const col = { site: s, x, y: TOP + (avail - h) / 2, w, h, cols };
    x += w + gap;
    return col;
  });
  columns.forEach((c, i) => { c.slot = (columns[i + 1]?.x ?? x) - c.x; });  // room for its title
  const pitch = Math.min(...columns.map((c) => c.slot));
  return { cell: best.cell, columns, width: Math.max(width, x + IO_W), height, outX: x, pitch };
}

export class NetworkView {
  constructor(svg, { onClick, onHover }) {
    this.svg = svg;
    this.onClick = onClick;
    this.onHover = onHover;
    this.rects = new Map();   // unit id -> rect
    this.labels = new Map();  // unit id -> text
    this.view = null;
    this.home = null;
    this.bindPointer();
  }

  draw(model, units) {
    const svg = this.svg;
    svg.replaceChildren();
    const box = svg.getBoundingClientRect();
    const L = layout(model.sites, Math.max(400, box.width), Math.max(300, box.height));
    this.layout = L;
    this.defs(L.cell);
    const flows = el("g", {}, svg);
    this.drawIO(model, L);
    this.drawFlows(flows, L);
    const bySite = new Map(L.columns.map((c) => [c.site.name, c]));
    const labelled = units.length <= MAX_LABELLED;
    const names = model.classes;
    const short = names.every((n) => n.length <= 2);
    const g = el("g", {}, svg);
    for (const u of units) {
      const c = bySite.get(u.layer);
      if (!c) continue;
      const x = c.x + (u.unit % c.cols) * L.cell;
      const y = c.y + Math.floor(u.unit / c.cols) * L.cell;
      const id = `${u.layer}:${u.unit}`;
      const r = el("rect", { x, y, width: L.cell, height: L.cell, class: "unit", "data-id": id }, g);
      this.rects.set(id, r);
      if (labelled && u.preferred_class >= 0) {
        const t = el("text", { x: x + L.cell / 2, y: y + L.cell / 2, class: "pref", "font-size": L.cell * 0.55 }, g);
        t.textContent = short ? names[u.preferred_class] : String(u.preferred_class);
        this.labels.set(id, t);
      }
    }
    this.home = { x: 0, y: 0, w: L.width, h: L.height };
    this.setView({ ...this.home });
  }

  defs(cell) {
    const defs = el("defs", {}, this.svg);
    const s = Math.max(3, cell / 3);
    const p = el("pattern", { id: "deleted", width: s, height: s, patternUnits: "userSpaceOnUse",
      patternTransform: "rotate(45)" }, defs);
    el("rect", { width: s, height: s, fill: "#1f2937" }, p);
    el("line", { x1: 0, y1: 0, x2: 0, y2: s, stroke: "#ef4444", "stroke-width": s / 2.5 }, p);
  }

  drawIO(model, L) {
    const svg = this.svg;
    const mid = TOP + (L.height - TOP - BOTTOM) / 2;
    const first = model.sites[0];
    const inShape = model.input_shape ? model.input_shape.join("×") : "";
    el("rect", { x: 8, y: mid - 40, width: IO_W - 16, height: 80, rx: 6, class: "io" }, svg);
    this.text(IO_W / 2, mid - 8, "input", "io-label");
    if (inShape) this.text(IO_W / 2, mid + 8, inShape, "io-label");
    const compact = L.pitch < 130;  // narrow columns: short titles that do not run into each other
    for (const c of L.columns) {
      const s = c.site;
      const kind = s.spatial ? "channels" : "units";
      const title = this.text(c.x + c.w / 2, 16, s.name, "col-title");
      if (compact) title.style.fontSize = `${Math.min(13, Math.max(7, c.slot / (s.name.length * 0.7)))}px`;
      this.text(c.x + c.w / 2, 32, compact ? String(s.width) : `${s.width} ${kind} · ${s.module_type}`, "col-sub");
      el("title", {}, title).textContent = `${s.name}: ${s.width} ${kind} (${s.module_type}), output ${s.shape.join("×")}`;
    }
    const n = model.classes.length;
    this.outputs = [];
    const x = L.outX;
    this.text(x + (IO_W - 16) / 2, 16, "output", "col-title");
    this.text(x + (IO_W - 16) / 2, 32, `${n} classes`, "col-sub");
    if (n > 24 || !first) return;
    const h = Math.min(28, (L.height - TOP - BOTTOM) / n);
    const y0 = mid - (n * h) / 2;
    model.classes.forEach((name, i) => {
      const r = el("rect", { x, y: y0 + i * h + 1, width: IO_W - 16, height: h - 2, rx: 3, class: "io" }, svg);
      const t = this.text(x + (IO_W - 16) / 2, y0 + i * h + h / 2, name.slice(0, 9), "io-label");
      this.outputs.push({ rect: r, text: t, name });
    });
  }

  drawFlows(g, L) {
    const cols = L.columns;
    const edges = [{ x: IO_W - 8, y: TOP + 40, h: L.height - TOP - BOTTOM - 80 }];
    for (const c of cols) edges.push({ x: c.x, y: c.y, h: c.h, w: c.w });
    edges.push({ x: L.outX, y: TOP, h: L.height - TOP - BOTTOM, w: 0 });
    for (let i = 0; i + 1 < edges.length; i++) {
      const a = edges[i];
      const b = edges[i + 1];
      const ax = a.x + (a.w || 0);
      const d = `M${ax},${a.y} L${b.x},${b.y} L${b.x},${b.y + b.h} L${ax},${a.y + a.h} Z`;
      el("path", { d, class: "flow" }, g);
    }
  }

  text(x, y, content, cls) {
    const t = el("text", { x, y, class: cls }, this.svg);
    t.textContent = content;
    return t;
  }

  recolour(units, scale) {
    for (const u of units) {
      const id = `${u.layer}:${u.unit}`;
      const colour = scale.colour(u);
      this.rects.get(id)?.setAttribute("fill", colour);
      this.labels.get(id)?.setAttribute("fill", inkFor(colour));
    }
  }

  // Deleted units get the striped fill; the selected one an outline.
  mark(lesion, selected) {
    for (const [id, r] of this.rects) {
      const gone = lesion.has(id);
      r.classList.toggle("deleted", gone);
      r.classList.toggle("selected", id === selected);
      this.labels.get(id)?.classList.toggle("deleted", gone);
    }
  }

  // Output boxes shaded by the change in per-class accuracy (red: the lesion hurts that class).
  shadeOutputs(lesioned, intact) {
    (this.outputs || []).forEach((o, i) => {
      const d = (lesioned[i] ?? 0) - (intact[i] ?? 0);
      const fill = d === 0 ? "#e5e7eb" : diverging(Math.max(-1, Math.min(1, -d * 2)));
      o.rect.setAttribute("fill", fill);
      o.text.setAttribute("fill", inkFor(fill));
    });
  }

  setView(v) {
    this.view = v;
    this.svg.setAttribute("viewBox", `${v.x} ${v.y} ${v.w} ${v.h}`);
  }

  fit() { if (this.home) this.setView({ ...this.home }); }

  // Zoom by factor about a point in SVG coordinates (default: the centre of the view).
  zoom(factor, cx, cy) {
    const v = this.view;
    if (!v) return;
    const w = Math.min(this.home.w * 1.5, Math.max(this.home.w / 60, v.w / factor));
    const k = w / v.w;
    cx ??= v.x + v.w / 2;
    cy ??= v.y + v.h / 2;
    this.setView({ x: cx - (cx - v.x) * k, y: cy - (cy - v.y) * k, w, h: v.h * k });
  }

  toSvg(evt) {
    const p = new DOMPoint(evt.clientX, evt.clientY).matrixTransform(this.svg.getScreenCTM().inverse());
    return [p.x, p.y];
  }

  bindPointer() {
    const svg = this.svg;
    let drag = null;
    svg.addEventListener("wheel", (evt) => {
      evt.preventDefault();
      const [x, y] = this.toSvg(evt);
      this.zoom(Math.exp(-evt.deltaY * 0.0015), x, y);
    }, { passive: false });
    svg.addEventListener("pointerdown", (evt) => {
      drag = { x: evt.clientX, y: evt.clientY, view: { ...this.view }, moved: false };
    });
    svg.addEventListener("pointermove", (evt) => {
      if (drag && (drag.moved || Math.hypot(evt.clientX - drag.x, evt.clientY - drag.y) > 4)) {
        if (!drag.moved) svg.setPointerCapture(evt.pointerId);
        drag.moved = true;
        svg.classList.add("panning");
        const scale = drag.view.w / svg.getBoundingClientRect().width;
        this.setView({ ...drag.view, x: drag.view.x - (evt.clientX - drag.x) * scale,
          y: drag.view.y - (evt.clientY - drag.y) * scale });
        this.onHover(null, evt);
        return;
      }
      const id = evt.target.closest?.(".unit")?.dataset.id ?? null;
      this.onHover(id, evt);
    });
    svg.addEventListener("pointerleave", (evt) => this.onHover(null, evt));
    svg.addEventListener("pointerup", (evt) => {
      const moved = drag?.moved;
      drag = null;
      svg.classList.remove("panning");
      if (moved) return;
      const id = evt.target.closest?.(".unit")?.dataset.id;
      if (id) this.onClick(id, evt);
    });
  }
}
