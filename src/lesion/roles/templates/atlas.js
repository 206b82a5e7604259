// The atlas: a sortable, searchable table of every unit; a click opens the unit's card (card.js).
(function () {
  "use strict";
  const doc = JSON.parse(document.getElementById("atlas-data").textContent);
  const cards = decode(doc);
  const ctx = { images: doc.images, meta: doc.meta, texts: doc.texts };
  const byUnit = new Map(cards.map((c) => [c.unit, c]));
  const haystack = cards.map((c) => (c.unit + " " + c.role + (c.effect_source === "estimated" ? " estimated" : "")).toLowerCase());
  const PAGE = 500;
  const collator = new Intl.Collator(undefined, { numeric: true });
  let key = "loss_zero", dir = -1, query = "", shown = PAGE, hits = [];
  const tbody = document.querySelector("#units tbody");
  const fmt = LesionCard.fmt;
  const meta = doc.meta;
  const tri = meta.triage;
  document.getElementById("summary").textContent =
    `${cards.length} units, ` + (meta.task === "causal-lm" ? `${meta.n_examples} sequences, ${meta.n_tokens} tokens`
      : `${meta.n_examples} examples` + (meta.labels ? "" : " (no labels)")) +
    `; ${meta.pairs_tried} pairs tried. Click a unit for its card; click a heading to sort.` +
    (tri ? ` Effects by triage: exact for ${tri.exact} units (the top ${tri.top} by attribution estimate and ` +
      `a random sample of ${tri.sampled}), estimated for the rest (≈, no interval); ${tri.claim}.` : "");
  // The cards by column (lesion.roles.page.page_cards): a value for all in `const`, repeated texts as
  // {texts, index}, omissions as indices into `omitted`.
  function decode(d) {
    const cols = Object.entries(d.columns).map(([f, col]) =>
      [f, Array.isArray(col) ? (i) => col[i] : (i) => col.texts[col.index[i]]]);
    const out = new Array(d.n);
    for (let i = 0; i < d.n; i++) {
      const c = Object.assign({}, d.const);
      for (const [f, get] of cols) c[f] = get(i);
      c.omissions = (c.omissions || []).map((k) => d.omitted[k]);
      out[i] = c;
    }
    return out;
  }
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
    const est = c.effect_source === "estimated";
    if (est) tr.classList.add("estimated");
    tr.append(cell(c.unit), cell(c.role, "role"),
      cell((est ? "≈ " : "") + sig(c.loss_zero, 3) + ci, "num" + (est ? " est" : "")),
      cell(fmt(c.accuracy_zero, 3), "num"), cell(fmt(c.selectivity, 2), "num"),
      cell(c.preferred_class >= 0 ? LesionCard.className(c.preferred_class, ctx)
        : c.preferred_tokens && c.preferred_tokens.length ? LesionCard.tokenName(c.preferred_tokens[0], ctx) : "–"),
      cell(fmt(c.frequency_active, 2), "num"), cell(fmt(c.simulation, 2), "num"));
    const td = document.createElement("td");
    td.append(LesionCard.sparkline(c.hist_counts, 60, 16));
    tr.append(td);
    return tr;
  }
  const orders = new Map();  // key -> card positions sorted ascending by it (ties: card order), nulls last
  function orderOf(k) {
    if (!orders.has(k)) {
      let vals = cards.map((c) => { const v = c[k]; return v === null || v === undefined ? null : v; });
      if (k === "unit") {  // by layer (its name in natural order), then index: numbers, not text, compared
        const layers = [...new Set(cards.map((c) => c.layer))].sort(collator.compare);
        const rank = new Map(layers.map((l, r) => [l, r]));
        vals = cards.map((c) => rank.get(c.layer) * 1e9 + c.index);
      }
      if (vals.some((v) => typeof v === "string")) {  // text: ranks of the distinct texts, natural order
        const distinct = [...new Set(vals.filter((v) => v !== null).map(String))];
        distinct.sort(distinct.length <= 5000 ? collator.compare : (x, y) => (x < y ? -1 : x > y ? 1 : 0));
        const rank = new Map(distinct.map((t, r) => [t, r]));
        vals = vals.map((v) => (v === null ? null : rank.get(String(v))));
      }
      const known = [], missing = [];
      vals.forEach((v, i) => (v === null ? missing : known).push(i));
      known.sort((a, b) => vals[a] - vals[b] || a - b);
      orders.set(k, { known, missing });
    }
    return orders.get(k);
  }
  function find() {
    // every card is searched, in the order of the sorted column (sorted once per column); the first
    // `shown` matches are drawn ("show more" adds a page)
    const q = query.trim().toLowerCase();
    const { known, missing } = orderOf(key);
    const seq = dir > 0 ? known : known.slice().reverse();
    hits = [];
    for (const list of [seq, missing]) {
      for (const i of list) if (!q || haystack[i].includes(q)) hits.push(cards[i]);
    }
    shown = PAGE;
    draw();
  }
  function draw() {
    const frag = document.createDocumentFragment();
    for (const c of hits.slice(0, shown)) frag.append(row(c));
    tbody.replaceChildren(frag);
    document.getElementById("shown").textContent = hits.length > shown
      ? `showing ${shown} of ${hits.length} matches` : `${hits.length} shown`;
    document.getElementById("more").hidden = hits.length <= shown;
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
    find();
  });
  document.getElementById("more").addEventListener("click", () => { shown += PAGE; draw(); });
  tbody.addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr) open(tr.dataset.unit);
  });
  document.getElementById("search").addEventListener("input", (e) => { query = e.target.value; find(); });
  document.getElementById("close").addEventListener("click", () => { document.getElementById("card-box").hidden = true; });
  document.getElementById("card").addEventListener("click", (e) => {
    const a = e.target.closest("a[data-unit]");
    if (a) { e.preventDefault(); open(a.dataset.unit); }
  });
  window.addEventListener("hashchange", () => {
    if (location.hash.length > 1) open(decodeURIComponent(location.hash.slice(1)));
  });
  find();
  if (location.hash.length > 1) open(decodeURIComponent(location.hash.slice(1)));
})();
