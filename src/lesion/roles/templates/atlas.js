// The atlas: a sortable, searchable table of every unit; a click opens the unit's card (card.js).
(function () {
  "use strict";
  const doc = JSON.parse(document.getElementById("atlas-data").textContent);
  const cards = doc.cards;
  const ctx = { images: doc.images, meta: doc.meta, texts: doc.texts };
  const byUnit = new Map(cards.map((c) => [c.unit, c]));
  const MAX_ROWS = 500;
  let key = "loss_zero", dir = -1, query = "";
  const tbody = document.querySelector("#units tbody");
  const fmt = LesionCard.fmt;
  const meta = doc.meta;
  document.getElementById("summary").textContent =
    `${cards.length} units, ` + (meta.task === "causal-lm" ? `${meta.n_examples} sequences, ${meta.n_tokens} tokens`
      : `${meta.n_examples} examples` + (meta.labels ? "" : " (no labels)")) +
    `; ${meta.pairs_tried} pairs tried. Click a unit for its card; click a heading to sort.`;

  function sig(x, digits = 2) {
    return x === null || x === undefined ? "–" : String(Number(x.toPrecision(digits)));
  }
  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function row(c) {
    const tr = document.createElement("tr");
    tr.dataset.unit = c.unit;
    const ci = c.loss_zero_lo === null ? "" : ` [${sig(c.loss_zero_lo)}, ${sig(c.loss_zero_hi)}]`;
    tr.append(cell(c.unit), cell(c.role, "role"), cell(sig(c.loss_zero, 3) + ci, "num"),
      cell(fmt(c.accuracy_zero, 3), "num"), cell(fmt(c.selectivity, 2), "num"),
      cell(c.preferred_class >= 0 ? LesionCard.className(c.preferred_class, ctx)
        : c.preferred_tokens && c.preferred_tokens.length ? LesionCard.tokenName(c.preferred_tokens[0], ctx) : "–"),
      cell(fmt(c.frequency_active, 2), "num"), cell(fmt(c.simulation, 2), "num"));
    const td = document.createElement("td");
    td.append(LesionCard.sparkline(c.hist_counts, 60, 16));
    tr.append(td);
    return tr;
  }
  function value(c) {
    const v = c[key];
    return v === null || v === undefined ? null : v;
  }
  function draw() {
    const q = query.trim().toLowerCase();
    const hits = q ? cards.filter((c) => (c.unit + " " + c.role).toLowerCase().includes(q)) : cards.slice();
    hits.sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      return (typeof x === "string" ? x.localeCompare(y) : x - y) * dir;
    });
    const frag = document.createDocumentFragment();
    for (const c of hits.slice(0, MAX_ROWS)) frag.append(row(c));
    tbody.replaceChildren(frag);
    document.getElementById("shown").textContent = hits.length > MAX_ROWS
      ? `showing ${MAX_ROWS} of ${hits.length} matches (refine the search)` : `${hits.length} shown`;
    for (const th of document.querySelectorAll("#units th[data-key]")) {
      th.classList.toggle("asc", th.dataset.key === key && dir > 0);
      th.classList.toggle("desc", th.dataset.key === key && dir < 0);
    }
  }
  function open(unit) {
    const c = byUnit.get(unit);
    if (!c) return;
    const box = document.getElementById("card-box");
    document.getElementById("card").replaceChildren(LesionCard.render(c, ctx));
    box.hidden = false;
    for (const tr of tbody.querySelectorAll("tr.selected")) tr.classList.remove("selected");
    const tr = tbody.querySelector(`tr[data-unit="${CSS.escape(unit)}"]`);
    if (tr) tr.classList.add("selected");
    if (location.hash !== "#" + encodeURIComponent(unit)) history.replaceState(null, "", "#" + encodeURIComponent(unit));
  }
  document.querySelector("#units thead").addEventListener("click", (e) => {
    const th = e.target.closest("th[data-key]");
    if (!th) return;
    if (th.dataset.key === key) dir = -dir; else { key = th.dataset.key; dir = key === "unit" || key === "role" ? 1 : -1; }
    draw();
  });
  tbody.addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr) open(tr.dataset.unit);
  });
  document.getElementById("search").addEventListener("input", (e) => { query = e.target.value; draw(); });
  document.getElementById("close").addEventListener("click", () => { document.getElementById("card-box").hidden = true; });
  document.getElementById("card").addEventListener("click", (e) => {
    const a = e.target.closest("a[data-unit]");
    if (a) { e.preventDefault(); open(a.dataset.unit); }
  });
  window.addEventListener("hashchange", () => {
    if (location.hash.length > 1) open(decodeURIComponent(location.hash.slice(1)));
  });
  draw();
  if (location.hash.length > 1) open(decodeURIComponent(location.hash.slice(1)));
})();
