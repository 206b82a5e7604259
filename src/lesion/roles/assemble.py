"""``roles(model, data)``: the card of every unit, from recipes that already exist (``collect_stats``,
``selectivity_index``, ``mutual_information``, ``sweep``) and the few new ones in this package.

Stages: statistics and top examples (streamed); single-unit effects under zero and mean (``sweep``,
fast engine checked against the slow path); output pushes (weights); pairs and compensation for the
units with the largest effects; explanations and their simulation scores; the causal (necessity) test
per layer and class; memorisation on the training data where labels were corrupted. The lesion stages
can be kept in a folder (``keep=``) and are then reused by a later run with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from lesion.analyses.measures import mutual_information, selectivity_index
from lesion.analyses.sweep import sites_for
from lesion.core.batch import Data, batches, first_batch, reusable
from lesion.core.replacements import Mean, Zero
from lesion.core.runner import Runner
from lesion.core.sites import Site
from lesion.core.stats import collect_stats, forward
from lesion.core.units import Unit
from lesion.errors import DataError, LesionError
from lesion.roles import rules
from lesion.roles.activity import activity, correlations
from lesion.roles.card import Card
from lesion.roles.effects import LossChange, compensation, interval, set_effects, single_effects
from lesion.roles.explain import Evidence, class_means_explainer, class_means_simulator, explain
from lesion.roles.pushes import pushes
from lesion.util.progress import progress_bar


@dataclass
class Atlas:
    """Every unit's card, and what holds for all of them (the data, the rules, the engine's notes)."""

    cards: list[Card]
    meta: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        df = pd.DataFrame([c.row() for c in self.cards])
        df.attrs.update(self.meta)
        return df


class _Keep:
    """Lesion stages kept as .npz files in a folder, reused when the settings' fingerprint matches."""

    def __init__(self, folder: Path | None, settings: dict):
        self.folder = folder
        self.tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, compute) -> dict[str, np.ndarray]:
        path = None if self.folder is None else self.folder / f"{name}-{self.tag}.npz"
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        got = compute()
        if path is not None:
            tmp = path.with_name(f".{path.stem}.tmp.npz")
            np.savez(tmp, **got)
            tmp.replace(path)
        return got


def roles(model: nn.Module, data: Data, **kwargs) -> pd.DataFrame:
    """One row per unit: every number of its card (see ``lesion.roles.Card``); ``df.attrs`` holds the
    settings, the rules and the stated omissions that hold for all. Keywords as ``build``."""
    return build(model, data, **kwargs).table()


def build(
    model: nn.Module,
    data: Data,
    *,
    sites: Sequence[Site] | None = None,
    layers: Sequence[str] | None = None,
    train: Data | None = None,
    true_labels: torch.Tensor | None = None,
    top: int = 8,
    bins: int = 20,
    sample: int = 4000,
    pair_units: int = 16,
    partners: int = 3,
    causal_draws: int = 8,
    explainer=None,
    simulator=None,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = False,
    keep: str | Path | None = None,
) -> Atlas:
    """The card of every unit of ``model`` (its activation sites, or ``sites``/``layers``) on ``data``.

    ``train`` with ``true_labels``: the training data with the (corrupted) labels the network was trained
    on and the true labels, for the memorisation parts. ``pair_units`` units with the largest effects get
    pair lesions with ``partners`` candidates by activity correlation and as many by effect, and the
    compensation part. ``explainer``/``simulator``: see ``lesion.roles.explain``.
    """
    data = reusable(data)
    sites = [s for s in (list(sites) if sites is not None else sites_for(model, data, layers))]
    meta: dict = {"omissions": []}
    heads = [s.name for s in sites if s.heads]
    if heads:
        meta["omissions"].append(f"attention heads ({', '.join(heads)}) have no cards yet")
        sites = [s for s in sites if not s.heads]
    if not sites:
        raise LesionError("the model has no sites with units to make cards of (only attention heads)")
    say = progress_bar(None, "roles", progress, total=8)
    labeled, n_classes, data = _labels(model, data, batch_size)
    meta |= {"labels": labeled, "n_classes": n_classes}
    if not labeled:
        meta["omissions"].append(
            "no labels: no class parts (selectivity, class means, per-class effects, information, "
            "simulation and causal scores); effects are measured against the intact model's predictions"
        )
    stats = collect_stats(model, data, sites, labels=labeled, batch_size=batch_size)
    found, y_all, ids_sample = activity(
        model,
        data,
        sites,
        {s.name: stats[s.name].moments.lo for s in sites},
        {s.name: stats[s.name].moments.hi for s in sites},
        k=top,
        bins=bins,
        sample=sample,
        batch_size=batch_size,
    )
    n = stats[sites[0].name].moments.n_examples
    meta["n_examples"] = n
    say.update(1)
    units = [Unit(s.name, j) for s in sites for j in range(s.width)]
    settings = {
        "n": n,
        "units": len(units),
        "sites": [str(s) for s in sites],
        "seed": seed,
        "pair_units": pair_units,
        "partners": partners,
        "causal_draws": causal_draws,
    }
    kept = _Keep(Path(keep) if keep is not None else None, settings)
    eff = {}
    for name, rep in (("zero", Zero()), ("mean", Mean(stats=stats))):
        eff[name] = kept(
            f"effects-{name}",
            lambda rep=rep: single_effects(
                model, data, sites, units, rep, n_classes, batch_size=batch_size, progress=progress
            )[0],
        )
        say.update(1)
    pushed = pushes(model, first_batch(data, 1), sites)
    say.update(1)
    z_mean, _, _ = interval(eff["zero"]["dsum"], eff["zero"]["dsq"], eff["zero"]["count"])
    order = [i for i in np.argsort(-np.nan_to_num(z_mean, nan=-np.inf), kind="stable")[:pair_units]]
    samples = {s.name: found[s.name].sample.numpy().astype(np.float64) for s in sites}
    runner = Runner(model, data, sites, metric=LossChange(n_classes), batch_size=batch_size)
    pair_list = _pairs(units, order, samples, z_mean, partners)
    pair_vals = kept(
        "pairs",
        lambda: set_effects(runner, [[units[i], units[j]] for i, j in pair_list]) if pair_list else {},
    )
    say.update(1)
    intact = {s.name: stats[s.name].moments.mean.numpy() for s in sites}
    comp = kept(
        "compensation",
        lambda: _compensation(model, data, sites, [units[i] for i in order], intact, batch_size),
    )
    say.update(1)
    expl = _explanations(units, found, samples, y_all, ids_sample, explainer, simulator, labeled)
    say.update(1)
    si, pref, mi = _class_measures(sites, stats, labeled)
    causal = kept(
        "causal", lambda: _causal(runner, sites, si, pref, n_classes, causal_draws, seed) if labeled else {}
    )
    say.update(1)
    mem = {}
    if train is not None:
        mem = kept(
            "memorisation",
            lambda: _memorisation(model, train, true_labels, sites, units, n_classes, batch_size, progress),
        )
    elif true_labels is not None:
        raise LesionError("true_labels= needs train= (the data with the labels the network was trained on)")
    say.update(1)
    say.close()
    meta |= {
        "rules": rules.table(),
        "thresholds": dict(rules.THRESHOLDS),
        "pairs_tried": len(pair_list),
        "pairs_how": _PAIRS_HOW.format(k=pair_units, p=partners),
        "sites": [str(s) for s in sites],
        "site_shapes": {s.name: list(s.shape) for s in sites},
    }
    ctx = dict(
        found=found,
        stats=stats,
        eff=eff,
        pushed=pushed,
        pair_list=pair_list,
        pair_vals=pair_vals,
        comp=comp,
        order=order,
        expl=expl,
        si=si,
        pref=pref,
        mi=mi,
        causal=causal,
        mem=mem,
        labeled=labeled,
        labels=y_all,
        n=n,
        units=units,
        sites={s.name: s for s in sites},
        pairs_how=meta["pairs_how"],
    )
    cards = [_card(i, u, ctx) for i, u in enumerate(units)]
    return Atlas(cards, meta)


_PAIRS_HOW = (
    "the {k} units with the largest single effect (zero), each with the {p} units of its layer most "
    "correlated in activity (|r|) and the {p} with the largest effects; every pair deleted together, exactly"
)


def _labels(model: nn.Module, data: Data, batch_size: int) -> tuple[bool, int, Data]:
    """(labelled, classes, data): without integer labels, the intact model's predictions become the
    targets (one tensor input needed)."""
    b = first_batch(data)
    out = forward(model, b, check=False)
    if out.ndim != 2:
        raise DataError(
            f"the model returned {tuple(out.shape)}; cards need a classifier's logits (batch, classes) "
            "(language models are not covered yet)"
        )
    c = out.shape[-1]
    y = b.target
    if y is not None and y.ndim == 1 and not y.dtype.is_floating_point and y.dtype != torch.bool:
        return True, c, data
    xs, preds = [], []
    for bb in batches(data, batch_size=batch_size):
        xs.append(bb.x)
        preds.append(forward(model, bb, check=False).argmax(-1))
    return False, c, (torch.cat(xs), torch.cat(preds))


def _class_measures(sites, stats, labeled):
    si, pref, mi = {}, {}, {}
    for s in sites:
        w = s.width
        if labeled and (~torch.isnan(stats[s.name].class_means).any(1)).sum() >= 2:
            si[s.name], pref[s.name] = selectivity_index(stats[s.name].class_means)
            mi[s.name] = mutual_information(stats[s.name].histogram.counts)
        else:
            si[s.name], pref[s.name], mi[s.name] = np.full(w, np.nan), np.full(w, -1), np.full(w, np.nan)
    return si, pref, mi


def _pairs(units, order, samples, effect, partners) -> list[tuple[int, int]]:
    """Unordered pairs (i, j) of unit positions: each chosen unit with its candidates, deduplicated."""
    first = {}
    for i, u in enumerate(units):
        first.setdefault(u.layer, i)
    chosen, seen = [], set()
    corr_of = {}
    for i in order:
        u = units[i]
        if u.layer not in corr_of:
            corr_of[u.layer] = np.abs(correlations(samples[u.layer]))
        base = first[u.layer]
        r = corr_of[u.layer][u.index].copy()
        r[u.index] = -1
        width = len(r)
        by_corr = np.argsort(-r, kind="stable")[:partners]
        eff = np.nan_to_num(effect[base : base + width], nan=-np.inf).copy()
        eff[u.index] = -np.inf
        by_eff = np.argsort(-eff, kind="stable")[:partners]
        for j in [*by_corr, *by_eff]:
            key = tuple(sorted((i, base + int(j))))
            if key not in seen and width > 1:
                seen.add(key)
                chosen.append(key)
    return chosen


def _compensation(model, data, sites, chosen, intact, batch_size) -> dict[str, np.ndarray]:
    """For each chosen unit: its 5 units of largest |mean activity change| and those changes."""
    names, values = [], []
    for u in chosen:
        change = compensation(model, data, sites, u, intact, batch_size=batch_size)
        flat = [(abs(v), f"{layer}:{j}", v) for layer, arr in change.items() for j, v in enumerate(arr)]
        best = sorted(flat, key=lambda t: -t[0])[:5]
        names.append([b[1] for b in best] + [""] * (5 - len(best)))
        values.append([b[2] for b in best] + [math.nan] * (5 - len(best)))
    return {
        "units": np.array([str(u) for u in chosen]),
        "names": np.array(names, dtype=str).reshape(-1, 5),
        "values": np.array(values, dtype=np.float64).reshape(-1, 5),
    }


def _explanations(units, found, samples, y, ids, explainer, simulator, labeled):
    """unit position -> (explanation, simulation score, omissions); fit on even, test on odd samples."""
    out = {}
    explainer = explainer or class_means_explainer
    simulator = simulator or class_means_simulator
    ids = ids.numpy()
    labels = y.numpy()[ids] if (y is not None and labeled) else None
    fit, test = np.arange(0, len(ids), 2), np.arange(1, len(ids), 2)
    for i, u in enumerate(units):
        if len(test) == 0:
            out[i] = (
                "",
                math.nan,
                ["simulation score: needs at least 2 examples (one to explain, one to test)"],
            )
            continue
        a = samples[u.layer][:, u.index]
        top = tuple(int(t) for t in found[u.layer].top.ids[:, u.index])
        lab = (lambda idx: None) if labels is None else (lambda idx: labels[idx])
        ev_fit = Evidence(str(u), ids[fit], lab(fit), a[fit], top)
        ev_test = Evidence(str(u), ids[test], lab(test), None, top)
        out[i] = explain(ev_fit, ev_test, a[test], explainer, simulator)
    return out


def _causal(runner, sites, si, pref, n_classes, draws, seed) -> dict[str, np.ndarray]:
    """Bau et al.'s necessity test per (layer, class): the units whose explanation names the class
    (selectivity >= the rules' threshold, preferred class c) deleted together, against ``draws`` random
    sets of as many other units of the layer. Arrays by (layer, class) row."""
    g = np.random.default_rng(seed)
    rows, sets = [], []
    for s in sites:
        named_all = np.nan_to_num(si[s.name], nan=-1) >= rules.THRESHOLDS["selective"]
        for c in range(n_classes):
            named = np.flatnonzero(named_all & (pref[s.name] == c))
            others = np.setdiff1d(np.arange(s.width), named)
            if len(named) == 0 or len(others) < len(named):
                continue
            rows.append((s.name, c, len(named)))
            sets.append([Unit(s.name, int(j)) for j in named])
            for _ in range(draws):
                sets.append([Unit(s.name, int(j)) for j in g.choice(others, len(named), replace=False)])
    if not rows:
        return {}
    v = set_effects(runner, sets)
    m, _, _ = interval(v["dsum_class"], v["dsq_class"], v["count_class"])  # (sets, C)
    named_eff, rand_mean, lo, hi = [], [], [], []
    for r, (_, c, _) in enumerate(rows):
        block = m[r * (draws + 1) : (r + 1) * (draws + 1), c]
        rnd = block[1:]
        diff = block[0] - rnd.mean()
        half = 1.96 * rnd.std(ddof=1) / math.sqrt(len(rnd)) if len(rnd) > 1 else math.nan
        named_eff.append(block[0])
        rand_mean.append(rnd.mean())
        lo.append(diff - half)
        hi.append(diff + half)
    return {
        "layer": np.array([r[0] for r in rows]),
        "cls": np.array([r[1] for r in rows]),
        "size": np.array([r[2] for r in rows]),
        "named": np.array(named_eff),
        "random": np.array(rand_mean),
        "lo": np.array(lo),
        "hi": np.array(hi),
    }


def _memorisation(model, train, true_labels, sites, units, n_classes, batch_size, progress):
    if true_labels is None:
        raise LesionError("train= needs true_labels= (the labels before corruption) for memorisation")
    train = reusable(train)
    trained = torch.cat([b.target.cpu() for b in batches(train, batch_size=batch_size)])
    true_labels = torch.as_tensor(true_labels).long().cpu()
    if trained.shape != true_labels.shape:
        raise DataError(f"true_labels has {len(true_labels)} labels; the training data has {len(trained)}")
    groups = (trained != true_labels).long()  # 1: mislabeled
    if not bool(groups.any()):
        raise DataError("no training label differs from its true label: nothing was memorised")
    groups = torch.cat([groups, torch.zeros(0, dtype=torch.long)])
    got, _ = single_effects(
        model, train, sites, units, Zero(), n_classes, groups=groups, batch_size=batch_size, progress=progress
    )
    return {k: got[k] for k in ("dsum_group", "dsq_group", "count_group")}


def _card(i: int, u: Unit, ctx: dict) -> Card:
    s = ctx["sites"][u.layer]
    f, st = ctx["found"][u.layer], ctx["stats"][u.layer]
    j = u.index
    om: list[str] = []
    c: dict = {
        "unit": str(u),
        "layer": u.layer,
        "index": j,
        "kind": "feature map" if s.spatial else "neuron",
        "n_examples": ctx["n"],
    }
    m = st.moments
    c |= {
        "mean": float(f.mean[j]),
        "sd": float(f.sd[j]),
        "lo": float(m.lo[j]),
        "hi": float(m.hi[j]),
        "frequency_active": float(f.active[j]) / max(f.n, 1),
        "dead": bool(m.max_abs[j] == 0),
        "hist_edges": tuple(map(float, f.edges[j])),
        "hist_counts": tuple(map(int, f.counts[j])),
    }
    c["constant"] = bool(m.lo[j] == m.hi[j]) and not c["dead"]
    c |= _examples(f, j, ctx)
    if ctx["labeled"]:
        c |= {
            "selectivity": float(ctx["si"][u.layer][j]),
            "preferred_class": int(ctx["pref"][u.layer][j]),
            "mutual_info": float(ctx["mi"][u.layer][j]),
            "class_means": tuple(float(x) for x in st.class_means[:, j]),
        }
    else:
        om.append(
            "class parts: the data has no labels (no selectivity, class means, information, per-class "
            "effects or causal score); effects are against the intact model's predictions"
        )
    c |= _effects(i, ctx, om)
    push, how = ctx["pushed"][u.layer]
    if push is None:
        om.append(f"output push: {how}")
    else:
        c |= {"push": tuple(float(x) for x in push[:, j]), "push_path": how}
    c |= _partners(i, ctx, om)
    text, score, why = ctx["expl"][i]
    c |= {"explanation": text, "simulation": float(score)}
    om += why
    c |= _causal_part(u, c.get("preferred_class", -1), c.get("selectivity", math.nan), ctx)
    c |= _mem_part(i, ctx)
    if ctx["n"] < 2:
        om.append("intervals: one example gives no interval over examples")
    c["omissions"] = tuple(om)
    full = {**Card(**{k: c[k] for k in ("unit", "layer", "index", "kind", "n_examples")}).row(), **c}
    full["role"], full["role_rule"] = rules.role(full)
    full = {k: tuple(v) if isinstance(v, list) else v for k, v in full.items()}
    return Card(**full)


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
    if ctx["sites"][f.site.name].spatial:
        out["top_where"] = tuple(int(x) for x in f.top.where[:k, j])
    return out


def _effects(i, ctx, om) -> dict:
    out = {}
    for name in ("zero", "mean"):
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
    out["sign_disagree"] = rules.sign_disagree(
        *(out[f"loss_{n}{s}"] for n in ("zero", "mean") for s in ("", "_lo", "_hi"))
    )
    return out


def _partners(i, ctx, om) -> dict:
    zero = ctx["eff"]["zero"]
    single = zero["dsum"] / zero["count"]
    rows = []
    pv = ctx["pair_vals"]
    for p, (a, b) in enumerate(ctx["pair_list"]):
        if i in (a, b):
            other = b if a == i else a
            pair = pv["dsum"][p] / pv["count"][p]
            rows.append((str(ctx["units"][other]), float(pair), float(pair - single[a] - single[b])))
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


def _causal_part(u, pref, si, ctx) -> dict:
    cz = ctx["causal"]
    if not cz or pref < 0 or not (si >= rules.THRESHOLDS["selective"]):
        return {}
    hit = np.flatnonzero((cz["layer"] == u.layer) & (cz["cls"] == pref))
    if not len(hit):
        return {}
    r = hit[0]
    return {
        "causal_class": int(pref),
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
