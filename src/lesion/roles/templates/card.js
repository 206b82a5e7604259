// The card of one unit, rendered from its data alone: shared by atlas.html and the explorer
// (`lesion serve`). Defines window.LesionCard = { render, fmt, sparkline, className }.
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";

  function fmt(x, digits = 3) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    if (typeof x !== "number") return String(x);
    if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(1);
    return x.toFixed(digits).replace(/\.?0+$/, (m) => (m.startsWith(".") ? "" : m)) || "0";
  }
  function signed(x, digits = 3) {
    const s = fmt(x, digits);
    return typeof x === "number" && x > 0 ? "+" + s : s;
  }
  function ci(lo, hi) {
    return lo === null || lo === undefined ? "" : ` [${signed(lo, 3)}, ${signed(hi, 3)}]`;
  }
  function el(tag, attrs = {}, ...kids) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    for (const k of kids) n.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return n;
  }
  function className(c, ctx) {
    const names = ctx && ctx.meta && ctx.meta.classes;
    return names && names[c] !== undefined && names[c] !== String(c) ? `${c} (${names[c]})` : String(c);
  }
  function tokenName(t, ctx) {
    const names = ctx && ctx.meta && ctx.meta.token_names;
    return names && names[String(t)] !== undefined ? names[String(t)] : `t${t}`;
  }
  function short(x) {  // two significant digits: small logit changes stay readable
    return x === null || x === undefined || Number.isNaN(x) ? "–" : String(Number(x.toPrecision(2)));
  }
  function tokenList(ts, vs, ctx) {
    return ts.map((t, i) => `${tokenName(t, ctx)} (${short(vs[i])})`).join(", ") || "–";
  }
  function sparkline(counts, w, h) {
    // one path of bars (sqrt scale): one element per histogram, cheap for a table of hundreds of rows
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h);
    svg.setAttribute("class", "spark");
    const cs = counts || [];
    const max = Math.max(1, ...cs);
    const bw = w / Math.max(1, cs.length);
    let d = "";
    cs.forEach((v, i) => {
      if (v <= 0) return;
      const bh = Math.max(1, (h * Math.sqrt(v)) / Math.sqrt(max));
      d += `M${(i * bw).toFixed(2)} ${h}h${Math.max(0.5, bw - 0.5).toFixed(2)}v${(-bh).toFixed(2)}h${(-Math.max(0.5, bw - 0.5)).toFixed(2)}z`;
    });
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", d);
    svg.append(path);
    return svg;
  }
  function bars(values, labels, w = 300) {
    // horizontal signed bars, one per value
    const h = 14, n = values.length;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", n * h + 2); svg.setAttribute("class", "bars");
    const finite = values.filter((v) => v !== null && Number.isFinite(v));
    const m = Math.max(1e-12, ...finite.map(Math.abs));
    const mid = finite.some((v) => v < 0) ? w / 2 + 20 : 40;
    const half = finite.some((v) => v < 0) ? w / 2 - 25 : w - 45;
    values.forEach((v, i) => {
      const t = document.createElementNS(SVG, "text");
      t.setAttribute("x", 0); t.setAttribute("y", i * h + 11); t.textContent = labels[i];
      svg.append(t);
      if (v === null || !Number.isFinite(v)) return;
      const r = document.createElementNS(SVG, "rect");
      const len = (Math.abs(v) / m) * half;
      r.setAttribute("x", v < 0 ? mid - len : mid); r.setAttribute("width", Math.max(0.5, len));
      r.setAttribute("y", i * h + 2); r.setAttribute("height", h - 4);
      r.setAttribute("class", v < 0 ? "neg" : "pos");
      svg.append(r);
    });
    return svg;
  }
  function dl(rows) {
    const d = el("dl", { class: "stats" });
    for (const [k, v] of rows) d.append(el("dt", {}, k), el("dd", { "data-stat": k }, v));
    return d;
  }
  function section(title, id) {
    return el("section", { class: "part", "data-part": id }, el("h3", {}, title));
  }
  function examples(c, which, ctx) {
    const ids = c[which + "_index"], acts = c[which + "_activity"];
    const box = el("div", { class: "examples", "data-examples": which });
    ids.forEach((id, i) => {
      const img = ctx.images && ctx.images[String(id)];
      const labs = c[which + "_label"];
      const label = labs && labs.length ? ` · class ${className(labs[i], ctx)}` : "";
      const fig = el("figure", { "data-id": String(id) });
      if (img) {
        const wrap = el("div", { class: "thumb" });
        wrap.append(el("img", { src: img, alt: `example ${id}` }));
        const shape = ctx.meta && ctx.meta.site_shapes && ctx.meta.site_shapes[c.layer];
        if (which === "top" && c.top_where.length && shape && shape.length === 3) {
          const [, hh, ww] = shape, p = c.top_where[i];
          const mark = el("span", { class: "where" });
          mark.style.left = `${((p % ww) + 0.5) / ww * 100}%`;
          mark.style.top = `${(Math.floor(p / ww) + 0.5) / hh * 100}%`;
          wrap.append(mark);
        }
        fig.append(wrap);
      } else if (ctx.texts && ctx.texts[String(id)]) {
        const [ids, at] = ctx.texts[String(id)];
        const line = el("div", { class: "text-example" });
        ids.forEach((t, k) => line.append(k === at ? el("mark", {}, tokenName(t, ctx)) : tokenName(t, ctx), " "));
        fig.classList.add("text");
        fig.append(line);
      }
      fig.append(el("figcaption", {}, `#${id} · ${fmt(acts[i], 2)}` + label));
      box.append(fig);
    });
    return box;
  }
  function effects(c, ctx) {
    const s = section("b. What breaks without it", "effects");
    const t = el("table", { class: "effects" });
    t.append(el("tr", {}, el("th", {}, "replacement"), el("th", {}, "Δ loss [95% interval]"), el("th", {}, "Δ accuracy")));
    t.append(el("tr", { "data-replacement": "zero" }, el("td", {}, "zero"),
      el("td", {}, signed(c.loss_zero) + ci(c.loss_zero_lo, c.loss_zero_hi)), el("td", {}, signed(c.accuracy_zero))));
    if (c.loss_mean !== null || c.loss_resample === null || c.loss_resample === undefined) {
      t.append(el("tr", { "data-replacement": "mean" }, el("td", {}, "mean"),
        el("td", {}, signed(c.loss_mean) + ci(c.loss_mean_lo, c.loss_mean_hi)), el("td", {}, signed(c.accuracy_mean))));
    }
    if (c.loss_resample !== null && c.loss_resample !== undefined) {
      t.append(el("tr", { "data-replacement": "resample" }, el("td", {}, "resample"),
        el("td", {}, signed(c.loss_resample) + ci(c.loss_resample_lo, c.loss_resample_hi)), el("td", {}, signed(c.accuracy_resample))));
    }
    if (c.effect_source === "estimated") {
      s.append(el("p", { class: "estimated", "data-source": "estimated" }, `Estimated, not measured: ≈ ${signed(c.loss_zero_estimate)} loss ` +
        "by the attribution estimate (this atlas was made by triage; only the units it chose were deleted exactly)."));
    } else {
      s.append(t);
      if (c.loss_zero_estimate !== null && c.loss_zero_estimate !== undefined) {
        s.append(el("p", { class: "note", "data-source": "exact" }, `Measured exactly (triage chose it); its attribution estimate was ${signed(c.loss_zero_estimate)}.`));
      }
    }
    if (c.effect_source !== "estimated") {
      s.append(el("p", { class: "note" }, "Mean over examples of (loss with the unit deleted − loss intact); interval: mean ± 1.96 SE." +
        (c.sign_disagree ? " ⚠ the replacements disagree in sign." : "")));
    }
    if (c.next_tokens && c.next_tokens.length) {
      const rows = [["next tokens losing most (Δ loss summed)", tokenList(c.next_tokens, c.next_token_loss, ctx)]];
      if (c.direct_zero !== null) rows.push(["direct effect (zero), through the residual stream alone", signed(c.direct_zero)]);
      s.append(dl(rows));
    }
    if (c.class_loss_zero && c.class_loss_zero.length) {
      const pc = el("table", { class: "per-class" });
      pc.append(el("tr", {}, el("th", {}, "class"), el("th", {}, "Δ loss zero [95%]"), el("th", {}, "Δ acc zero"),
        el("th", {}, "Δ loss mean"), el("th", {}, "Δ acc mean")));
      c.class_loss_zero.forEach((v, j) => {
        pc.append(el("tr", { "data-class": String(j) }, el("td", {}, className(j, ctx)),
          el("td", {}, signed(v) + ci(c.class_loss_zero_lo[j], c.class_loss_zero_hi[j])),
          el("td", {}, signed(c.class_accuracy_zero[j])), el("td", {}, signed(c.class_loss_mean[j])),
          el("td", {}, signed(c.class_accuracy_mean[j]))));
      });
      s.append(el("details", {}, el("summary", {}, "per class"), pc));
    }
    return s;
  }
  function pushes(c, ctx) {
    const s = section("c. What it pushes the output towards", "push");
    if (c.promotes && c.promotes.length) {
      s.append(dl([["promotes (direct path)", tokenList(c.promotes, c.promotes_by, ctx)],
        ["suppresses (direct path)", tokenList(c.suppresses, c.suppresses_by, ctx)],
        ["beside: next tokens losing most when deleted (b)", c.next_tokens && c.next_tokens.length ? tokenList(c.next_tokens, c.next_token_loss, ctx) : "–"],
        ["path", c.push_path]]));
      return s;
    }
    if (!c.push || !c.push.length) { s.append(el("p", { class: "note" }, "not available (see omissions)")); return s; }
    const order = c.push.map((v, j) => [v, j]).sort((a, b) => b[0] - a[0]);
    const up = order.slice(0, 3).filter((p) => p[0] > 0), down = order.slice(-3).reverse().filter((p) => p[0] < 0);
    s.append(dl([["promotes", up.map((p) => `${className(p[1], ctx)} (${signed(p[0], 2)})`).join(", ") || "–"],
      ["suppresses", down.map((p) => `${className(p[1], ctx)} (${signed(p[0], 2)})`).join(", ") || "–"],
      ["path", c.push_path]]));
    s.append(bars(c.push, c.push.map((_, j) => className(j, ctx))));
    return s;
  }
  function partners(c, ctx) {
    const s = section("d. Who backs it up", "partners");
    if (c.partners.length) {
      const t = el("table", { class: "pairs" });
      t.append(el("tr", {}, el("th", {}, "with"), el("th", {}, "Δ loss both deleted"), el("th", {}, "pair − singles")));
      c.partners.forEach((p, i) => {
        const x = c.partner_interaction[i];
        t.append(el("tr", { "data-partner": p }, el("td", {}, el("a", { href: "#" + encodeURIComponent(p), "data-unit": p }, p)),
          el("td", {}, signed(c.partner_pair[i])), el("td", {}, signed(x))));
      });
      s.append(t);
    }
    s.append(el("p", { class: "note" }, `${c.pairs_tried} pairs tried with this unit; candidates: ${c.pairs_how}. ` +
      "pair − singles > 0: redundancy (they back each other up); < 0: synergy."));
    if (c.compensators.length) {
      s.append(el("p", {}, "Compensation: units whose mean activity changes most when it is deleted: " +
        c.compensators.map((u, i) => `${u} (${signed(c.compensation[i], 3)})`).join(", ")));
    }
    return s;
  }
  function rulesTable(c, ctx) {
    const s = section("e. Its role in words", "role");
    s.append(el("p", { class: "role-words" }, c.role));
    const rules = (ctx.meta && ctx.meta.rules) || [];
    const t = el("table", { class: "rules" });
    t.append(el("tr", {}, el("th", {}, "rule"), el("th", {}, "when (first match wins; qualifiers added)")));
    for (const r of rules) {
      t.append(el("tr", r.name === c.role_rule ? { class: "matched" } : {}, el("td", {}, r.name), el("td", {}, r.when)));
    }
    s.append(el("details", {}, el("summary", {}, `rule: ${c.role_rule} (the rules)`), t));
    return s;
  }
  function scores(c, ctx) {
    const s = section("f. Scores that let the explanation fail", "scores");
    const text = c.explanation || "–";
    const rows = [["explanation", text.length > 300 ? text.slice(0, 300) + " …" : text],
      ["simulation score", fmt(c.simulation, 3)]];
    if (c.causal_token !== undefined && c.causal_token >= 0) {
      const t = tokenName(c.causal_token, ctx);
      rows.push(["causal score", `deleting the ${c.causal_size} units of ${c.layer} whose preferred token is ${t}: ` +
        `${signed(c.causal_named)} loss predicting ${t} vs ${signed(c.causal_random)} for as many random units ` +
        `(difference ${ci(c.causal_lo, c.causal_hi).trim()})`]);
    }
    if (c.causal_class >= 0) {
      rows.push(["causal score", `deleting the ${c.causal_size} units of ${c.layer} named for ${className(c.causal_class, ctx)}: ` +
        `${signed(c.causal_named)} loss on ${className(c.causal_class, ctx)} vs ${signed(c.causal_random)} for as many random units ` +
        `(difference ${ci(c.causal_lo, c.causal_hi).trim()})`]);
    }
    s.append(dl(rows));
    s.append(el("p", { class: "note" }, "Simulation: Pearson r between the activity predicted from the explanation and the real activity on held-out examples. Causal: Bau et al.'s necessity test."));
    return s;
  }
  function render(c, ctx) {
    ctx = ctx || {};
    const root = el("article", { class: "lesion-card", "data-unit": c.unit });
    const per = c.kind === "attention head" || c.kind.includes("every position") ? "sequences" : "examples";
    root.append(el("h2", {}, `${c.unit} `, el("small", {}, `${c.kind}, ${c.n_examples} ${per}`)));
    root.append(el("p", { class: "role-words headline" }, c.role));
    const a = section("a. What it responds to", "responds");
    const rows = [["mean ± sd", `${fmt(c.mean)} ± ${fmt(c.sd)}`], ["range", `${fmt(c.lo)} … ${fmt(c.hi)}`],
      ["active (> 0)", `${fmt(c.frequency_active * 100, 1)}% of examples`]];
    if (c.selectivity !== null || c.preferred_class >= 0) {
      rows.push(["selectivity", fmt(c.selectivity, 3)], ["preferred class", c.preferred_class >= 0 ? className(c.preferred_class, ctx) : "–"],
        ["mutual information", `${fmt(c.mutual_info, 3)} bits`]);
    }
    if (c.preferred_tokens && c.preferred_tokens.length) {
      rows.push(["preferred tokens (mean activity)", tokenList(c.preferred_tokens, c.preferred_token_means, ctx)],
        ["previous tokens (mean activity)", tokenList(c.previous_tokens, c.previous_token_means, ctx)],
        ["token selectivity", c.token_selectivity === null ? "– (fewer than 2 tokens seen 3 times)" : fmt(c.token_selectivity, 3)]);
    }
    if (c.head_previous !== null && c.head_previous !== undefined) {
      rows.push(["attention on the previous token", fmt(c.head_previous, 3)],
        ["attention on the first token", fmt(c.head_first, 3)],
        ["attention on earlier copies of the token", fmt(c.head_duplicate, 3)]);
    }
    if (c.dead) rows.push(["dead", "never active on the data"]);
    a.append(dl(rows));
    const hist = el("div", { class: "hist" }, el("span", {}, "activity histogram"));
    hist.append(sparkline(c.hist_counts, 240, 40));
    a.append(hist);
    if (c.class_means && c.class_means.length) {
      a.append(el("div", {}, el("span", {}, "mean activity by class")), bars(c.class_means, c.class_means.map((_, j) => className(j, ctx))));
    }
    a.append(el("h4", {}, "top examples"), examples(c, "top", ctx));
    a.append(el("h4", {}, "bottom examples"), examples(c, "bottom", ctx));
    root.append(a, effects(c, ctx), pushes(c, ctx), partners(c, ctx), rulesTable(c, ctx), scores(c, ctx));
    if (c.mem_changed !== null && c.mem_changed !== undefined) {
      const m = section("Memorisation", "memorisation");
      m.append(dl([["Δ loss on mislabeled training examples", signed(c.mem_changed) + ci(c.mem_changed_lo, c.mem_changed_hi)],
        ["Δ loss on the others", signed(c.mem_kept) + ci(c.mem_kept_lo, c.mem_kept_hi)],
        ["memorisation unit", c.memorisation ? "yes" : "no"]]));
      root.append(m);
    }
    const om = section("Omissions", "omissions");
    if (c.omissions.length) {
      const ul = el("ul", { class: "omissions" });
      for (const o of c.omissions) ul.append(el("li", {}, o));
      om.append(ul);
    } else om.append(el("p", { class: "note" }, "none: every part was measured"));
    root.append(om);
    return root;
  }
  window.LesionCard = { render, fmt, signed, sparkline, className, tokenName };
})();
