"""From the measurements of ``build`` to one ``Card`` per unit: the numbers of each part, the omissions
in words, and the role by the rules."""

from __future__ import annotations

import math

import numpy as np

from lesion.core.units import Unit
from lesion.roles import rules, tokens
from lesion.roles.card import Card
from lesion.roles.effects import interval


def card(i: int, u: Unit, ctx: dict) -> Card:
    s = ctx["sites"][u.layer]
    f, st = ctx["found"][u.layer], ctx["stats"][u.layer]
    j = u.index
    om: list[str] = []
    c: dict = {
        "unit": str(u),
        "layer": u.layer,
        "index": j,
        "kind": "attention head"
        if s.heads
        else "neuron (every position)"
        if ctx["lm"]
        else "feature map"
        if s.spatial
        else "neuron",
        "n_examples": ctx["n"],
    }
    m = st.moments
    c |= {
        "mean": _mean_sd(f, j)[0],  # one unit's (f.mean and f.sd compute every unit of the site)
        "sd": _mean_sd(f, j)[1],
        "lo": float(f.edges[j, 0]),
        "hi": float(f.edges[j, -1]),
        "frequency_active": float(f.active[j]) / max(f.n, 1),
        "dead": bool(f.edges[j, -1] == 0 and f.edges[j, 0] == 0) if s.heads else bool(m.max_abs[j] == 0),
        "hist_edges": tuple(map(float, f.edges[j])),
        "hist_counts": tuple(map(int, f.counts[j])),
    }
    c["constant"] = bool(f.edges[j, 0] == f.edges[j, -1]) and not c["dead"]
    c |= _examples(f, j, ctx)
    if ctx["labeled"]:
        c |= {
            "selectivity": float(ctx["si"][u.layer][j]),
            "preferred_class": int(ctx["pref"][u.layer][j]),
            "mutual_info": float(ctx["mi"][u.layer][j]),
            "class_means": tuple(float(x) for x in _class_means(f, st, s)[:, j]),
        }
    elif ctx["lm"]:
        om.append(tokens.OMITTED)
        c |= _token_parts(i, u, ctx, om)
    else:
        om.append(
            "class parts: the data has no labels (no selectivity, class means, information, per-class "
            "effects or causal score); effects are against the intact model's predictions"
        )
    if s.heads and not ctx["lm"]:
        c |= _head_parts(u, ctx, om)
    c |= _effects(i, ctx, om)
    push, how = ctx["pushed"][u.layer]
    if push is None:
        om.append(f"output push: {how}")
    elif isinstance(push, dict):  # a language model: the tokens it raises and lowers most
        c |= {k: tuple((int if k in ("promotes", "suppresses") else float)(x) for x in v[j])
              for k, v in push.items()} | {"push_path": how}  # fmt: skip
    else:
        c |= {"push": tuple(float(x) for x in push[:, j]), "push_path": how}
    c |= _partners(i, ctx, om)
    text, score, why = ctx["expl"][i]
    c |= {"explanation": text, "simulation": float(score)}
    om += why
    c |= _causal_part(u, c, ctx)
    c |= _mem_part(i, ctx)
    if ctx["n"] < 2:
        om.append("intervals: one example gives no interval over examples")
    c["omissions"] = tuple(om)
    full = {**Card(**{k: c[k] for k in ("unit", "layer", "index", "kind", "n_examples")}).row(), **c}
    full["role"], full["role_rule"] = rules.role(full)
    full = {k: tuple(v) if isinstance(v, list) else v for k, v in full.items()}
    return Card(**full)


def _mean_sd(f, j: int) -> tuple[float, float]:
    n = max(f.n, 1)
    mean = float(f.s1[j]) / n
    return mean, max(float(f.s2[j]) / n - mean * mean, 0.0) ** 0.5


def _class_means(f, st, s):
    return f.class_sum / f.class_count[:, None] if s.heads else st.class_means


def _token_parts(i: int, u: Unit, ctx: dict, om: list[str]) -> dict:
    out = {}
    parts = ctx["token_parts"].get(u.layer, {})
    j = u.index
    if "current_ids" in parts:
        for name, key in (("preferred", "current"), ("previous", "previous")):
            ids, means = parts[f"{key}_ids"][:, j], parts[f"{key}_means"][:, j]
            out[f"{name}_tokens"] = tuple(int(t) for t in ids if t >= 0)
            out[f"{name}_token_means"] = tuple(float(v) for t, v in zip(ids, means, strict=True) if t >= 0)
        out["token_selectivity"] = float(parts["selectivity"][j])
        out["preferred_token"] = int(parts["preferred"][j])
    else:
        om.append("preferred tokens: the per-token tables of this layer did not fit the memory cap")
    e = ctx["eff"]["zero"]
    if "next_token_ids" in e and np.isfinite(e["next_token_ids"][i]).all():
        ids, loss = e["next_token_ids"][i], e["next_token_loss"][i]
        out["next_tokens"] = tuple(int(t) for t in ids if t >= 0)
        out["next_token_loss"] = tuple(float(v) for t, v in zip(ids, loss, strict=True) if t >= 0)
    pat = ctx["patterns"].get(u.layer)
    if ctx["sites"][u.layer].heads:
        if pat is None or isinstance(pat, str) or "why" in ctx["patterns"]:
            om.append(f"attention pattern: {ctx['patterns'].get('why', 'not recorded')}")
        else:
            out |= {"head_previous": float(pat[0, u.index]), "head_first": float(pat[1, u.index]),
                    "head_duplicate": float(pat[2, u.index])}  # fmt: skip
        om.append("a head's activity is the norm of its output at each token")
        return out
    d = ctx["direct"]
    if "units" in d:
        hit = np.flatnonzero(d["units"] == str(u))
        if len(hit):
            out["direct_zero"] = float(d["direct"][hit[0]])
    elif "why" in d:
        om.append(f"direct effect: {d['why']}")
    return out


def _head_parts(u: Unit, ctx: dict, om: list[str]) -> dict:
    """Where a classifier's head attends (previous and first token; no copies of a token in images)."""
    pat = ctx["patterns"].get(u.layer)
    om.append("a head's activity is the mean over tokens of the norm of its output; no information "
              "(mutual_info) for heads")  # fmt: skip
    if pat is None or "why" in ctx["patterns"]:
        om.append(f"attention pattern: {ctx['patterns'].get('why', 'not recorded')}")
        return {}
    return {"head_previous": float(pat[0, u.index]), "head_first": float(pat[1, u.index])}


def _examples(f, j, ctx) -> dict:
    k = min(f.top.values.shape[0], f.n)
    out = {
        "top_index": tuple(int(x) for x in f.top.ids[:k, j]),
        "top_activity": tuple(float(x) for x in f.top.values[:k, j]),
        "bottom_index": tuple(int(x) for x in f.bottom.ids[:k, j]),
        "bottom_activity": tuple(float(x) for x in f.bottom.values[:k, j]),
    }
    if ctx["labeled"] and ctx["labels"] is not None:
        y = ctx["labels"]
        out["top_label"] = tuple(int(y[i]) for i in out["top_index"])
        out["bottom_label"] = tuple(int(y[i]) for i in out["bottom_index"])
    if ctx["sites"][f.site.name].spatial or ctx["sites"][f.site.name].heads:
        out["top_where"] = tuple(int(x) for x in f.top.where[:k, j])
    return out


def _effects(i, ctx, om) -> dict:
    out = {}
    for name in [n for n in ("zero", "mean", "resample") if n in ctx["eff"]]:
        e = ctx["eff"][name]
        mean, lo, hi = interval(e["dsum"][i], e["dsq"][i], e["count"][i])
        out |= {
            f"loss_{name}": float(mean),
            f"loss_{name}_lo": float(lo),
            f"loss_{name}_hi": float(hi),
            f"accuracy_{name}": float(e["accuracy"][i]),
        }
        if ctx["labeled"]:
            cm, clo, chi = interval(e["dsum_class"][i], e["dsq_class"][i], e["count_class"][i])
            out[f"class_loss_{name}"] = tuple(map(float, cm))
            out[f"class_accuracy_{name}"] = tuple(map(float, e["accuracy_class"][i]))
            if name == "zero":
                out |= {
                    "class_loss_zero_lo": tuple(map(float, clo)),
                    "class_loss_zero_hi": tuple(map(float, chi)),
                }
    second = "resample" if "resample" in ctx["eff"] else "mean"  # transformers: resample against zero
    out["sign_disagree"] = rules.sign_disagree(
        *(out[f"loss_{n}{s}"] for n in ("zero", second) for s in ("", "_lo", "_hi"))
    )
    zero = ctx["eff"]["zero"]
    if "estimate" in zero:  # an atlas by triage
        out["loss_zero_estimate"] = float(zero["estimate"][i])
        if not ctx["exact"][i]:
            out |= {"effect_source": "estimated", "loss_zero": float(zero["estimate"][i])}
            om.append("effects: estimated by attribution only (triage); loss_zero is the estimate, without "
                      "an interval; no other replacement or class part measured")  # fmt: skip
        elif math.isnan(out[f"loss_{second}"]):
            om.append(f"{second} replacement and direct effect: measured for the triage's top block only "
                      "(this unit is in its random sample)")  # fmt: skip
        if ctx["lm"] and "mean" not in ctx["eff"]:
            om.append("mean replacement: not measured in an atlas made by triage (resample is the second)")
    return out


def _partners(i, ctx, om) -> dict:
    rows = []
    pv = ctx["pair_vals"]
    for p, (a, b) in enumerate(ctx["pair_list"]):
        if i in (a, b):
            other = b if a == i else a
            rows.append((str(ctx["units"][other]), float(pv["pair"][p]), float(pv["interaction"][p])))
    rows.sort(key=lambda r: -abs(r[2]))
    out = {
        "partners": tuple(r[0] for r in rows),
        "partner_pair": tuple(r[1] for r in rows),
        "partner_interaction": tuple(r[2] for r in rows),
        "pairs_tried": len(rows),
        "pairs_how": ctx["pairs_how"],
    }
    comp = ctx["comp"]
    where = np.flatnonzero(comp.get("units", np.array([])) == str(ctx["units"][i]))
    if len(where):
        r = where[0]
        keep = [q for q in range(comp["names"].shape[1]) if comp["names"][r, q]]
        out |= {
            "compensators": tuple(str(comp["names"][r, q]) for q in keep),
            "compensation": tuple(float(comp["values"][r, q]) for q in keep),
        }
    else:
        om.append("compensation: measured only for the units with the largest effects")
    if not rows:
        om.append("pairs: none tried (not among the units with the largest effects)")
    return out


def _causal_part(u, c: dict, ctx) -> dict:
    """The causal score of the group the unit is named in: its preferred class (a classifier) or token (a
    language model), with selectivity at or above the rules' threshold."""
    cz = ctx["causal"]
    lm = ctx["lm"]
    named = c.get("preferred_token" if lm else "preferred_class", -1)
    si = c.get("token_selectivity" if lm else "selectivity", math.nan)
    if not cz or named < 0 or not (si >= rules.THRESHOLDS["selective"]):
        return {}
    hit = np.flatnonzero((cz["layer"] == u.layer) & (cz["cls"] == named))
    if not len(hit):
        return {}
    r = hit[0]
    return {
        "causal_token" if lm else "causal_class": int(named),
        "causal_named": float(cz["named"][r]),
        "causal_random": float(cz["random"][r]),
        "causal_lo": float(cz["lo"][r]),
        "causal_hi": float(cz["hi"][r]),
        "causal_size": int(cz["size"][r]),
    }


def _mem_part(i, ctx) -> dict:
    mz = ctx["mem"]
    if not mz:
        return {}
    out = {}
    for g, name in ((1, "changed"), (0, "kept")):
        mean, lo, hi = interval(mz["dsum_group"][i, g], mz["dsq_group"][i, g], mz["count_group"][i, g])
        out |= {f"mem_{name}": float(mean), f"mem_{name}_lo": float(lo), f"mem_{name}_hi": float(hi)}
    out["memorisation"] = bool(rules._memorisation(out))
    return out
