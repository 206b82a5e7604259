"""The lesion stages of ``build`` beyond single units: pairs, compensation, explanations and their
simulation scores, the causal (necessity) test, memorisation. Each returns plain arrays (kept as .npz)."""

from __future__ import annotations

import math

import numpy as np
import torch

from lesion.core.batch import batches, reusable
from lesion.core.replacements import Zero
from lesion.core.runner import Runner
from lesion.core.units import Unit
from lesion.errors import DataError, LesionError
from lesion.roles import rules
from lesion.roles.activity import correlations
from lesion.roles.effects import (
    LossChange,
    compensation,
    interval,
    mean_activity,
    set_effects,
    single_effects,
)
from lesion.roles.explain import Evidence, class_means_explainer, class_means_simulator, describe, explain

PAIRS_HOW = (
    "the {k} units with the largest single effect (zero), each with the {p} units of its layer most "
    "correlated in activity (|r|) and the {p} with the largest effects; every pair deleted together, "
    "exactly (lesion.analyses.pairs.pair_effects)"
)
PAIRS_TRIAGED = "; under triage only units whose effects were measured exactly, as candidates and partners"


def pairs(units, order, samples, effect, partners, eligible=None) -> list[tuple[int, int]]:
    """Unordered pairs (i, j) of unit positions: each chosen unit with its candidates, deduplicated.
    ``eligible`` (units,) bool: the units that may be partners (default: all)."""
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
        width = len(r)
        ok = (
            np.ones(width, dtype=bool)
            if eligible is None
            else np.array(eligible[base : base + width], dtype=bool)
        )
        ok[u.index] = False
        r[~ok] = -np.inf
        by_corr = [j for j in np.argsort(-r, kind="stable")[:partners] if ok[j]]
        eff = np.nan_to_num(effect[base : base + width], nan=-np.inf).copy()
        eff[~ok] = -np.inf
        by_eff = [j for j in np.argsort(-eff, kind="stable")[:partners] if ok[j]]
        for j in [*by_corr, *by_eff]:
            key = tuple(sorted((i, base + int(j))))
            if key not in seen:
                seen.add(key)
                chosen.append(key)
    return chosen


def pair_values(model, data, units, chosen, metric, batch_size, seed) -> dict[str, np.ndarray]:
    """``pair`` (the mean loss change with both deleted) and ``interaction`` (pair minus each alone) of
    every pair of ``chosen``, through ``lesion.analyses.pairs.pair_effects``, one call per layer (a layer's
    pairs share its batched pair path)."""
    from lesion.analyses.pairs import pair_effects

    out = {k: np.full(len(chosen), np.nan) for k in ("pair", "interaction")}
    by_layer: dict[str, list[int]] = {}
    for p, (i, _) in enumerate(chosen):
        by_layer.setdefault(units[i].layer, []).append(p)
    for ps in by_layer.values():
        asked = [(str(units[chosen[p][0]]), str(units[chosen[p][1]])) for p in ps]
        df = pair_effects(model, data, asked, metric=metric(), batch_size=batch_size, seed=seed)
        out["pair"][ps] = df["delta_loss"].to_numpy(np.float64)
        out["interaction"][ps] = df["interaction_loss"].to_numpy(np.float64)
    return out


COMPENSATION_EXAMPLES = 2000  # examples whose mean activity change is measured (paired: the same ones)


def compensations(model, data, sites, chosen, batch_size) -> dict[str, np.ndarray]:
    """For each chosen unit: its 5 units of largest |mean activity change| and those changes, over the
    first ``COMPENSATION_EXAMPLES`` examples."""
    limit = COMPENSATION_EXAMPLES
    intact = mean_activity(model, data, sites, batch_size=batch_size, limit=limit) if chosen else {}
    names, values = [], []
    for u in chosen:
        change = compensation(model, data, sites, u, intact, batch_size=batch_size, limit=limit)
        flat = [(abs(v), f"{layer}:{j}", v) for layer, arr in change.items() for j, v in enumerate(arr)]
        best = sorted(flat, key=lambda t: -t[0])[:5]
        names.append([b[1] for b in best] + [""] * (5 - len(best)))
        values.append([b[2] for b in best] + [math.nan] * (5 - len(best)))
    return {
        "units": np.array([str(u) for u in chosen]),
        "names": np.array(names, dtype=str).reshape(-1, 5),
        "values": np.array(values, dtype=np.float64).reshape(-1, 5),
    }


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample split in two by a seeded permutation (each half in data order): the explanation is
    made from the first and scored on the second."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: (n + 1) // 2]), np.sort(perm[(n + 1) // 2 :])


def explanations(units, found, samples, labels, ids, explainer, simulator, kind, seed=0):
    """unit position -> (explanation, simulation score, omissions); fit on one half of the sample, test
    on the other. ``labels``: the class (``kind`` "class") or current token ("token") of each sampled
    example, or None. The default explainer's texts are made for a whole layer at once (the same text
    ``class_means_explainer`` writes for each unit)."""
    out = {}
    default = explainer is None and simulator is None
    explainer = explainer or class_means_explainer
    simulator = simulator or class_means_simulator
    ids = ids.numpy()
    labels = None if labels is None else labels.numpy()
    fit, test = halves(len(ids), seed)
    texts = _default_texts(units, samples, labels[fit], fit, kind) if default and labels is not None else {}
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
        ev_fit = Evidence(str(u), ids[fit], lab(fit), a[fit], top, kind)
        ev_test = Evidence(str(u), ids[test], lab(test), None, top, kind)
        said = (lambda ev, text=texts[i]: text) if i in texts else explainer
        out[i] = explain(ev_fit, ev_test, a[test], said, simulator)
    return out


def _default_texts(units, samples, labels, fit, kind) -> dict[int, str]:
    """unit position -> the default explanation, from each layer's class (token) means on ``fit``."""
    if len(fit) == 0:
        return {}
    classes, inv = np.unique(labels, return_inverse=True)
    counts = np.bincount(inv, minlength=len(classes))
    means, texts = {}, {}
    for i, u in enumerate(units):
        if u.layer not in means:
            a = torch.from_numpy(np.asarray(samples[u.layer][fit], dtype=np.float64))  # (fit, width)
            sums = torch.zeros(len(classes), a.shape[1], dtype=torch.float64).index_add_(
                0, torch.from_numpy(inv.astype(np.int64)), a
            )
            means = {u.layer: (sums / torch.from_numpy(counts)[:, None]).numpy()}
        texts[i] = describe(kind, classes, means[u.layer][:, u.index], counts)
    return texts


def causal(model, data, sites, si, pref, n_classes, draws, seed, metric, batch_size) -> dict[str, np.ndarray]:
    """Bau et al.'s necessity test per (layer, class): the units whose explanation names the class
    (selectivity >= the rules' threshold, preferred class c) deleted together, against ``draws`` random
    sets of as many other units of the layer, scored on the examples of class c only (the others do not
    enter a class-c loss). Arrays by (layer, class) row."""
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
    m = np.full(len(sets), np.nan)  # class-c loss change of each set
    for c in sorted({r[1] for r in rows}):
        idx = [r * (draws + 1) + q for r, row in enumerate(rows) if row[1] == c for q in range(draws + 1)]
        subset = _of_class(data, c, batch_size)
        if isinstance(subset, tuple) and len(subset[1]) == 0:
            continue  # no example of class c: no score (NaN)
        runner = Runner(model, subset, sites, metric=metric, batch_size=batch_size)
        v = set_effects(runner, [sets[i] for i in idx])
        m[idx] = interval(v["dsum_class"][:, c], v["dsq_class"][:, c], v["count_class"][:, c])[0]
    return necessity(rows, m, draws)


def necessity(rows, m: np.ndarray, draws: int) -> dict[str, np.ndarray]:
    """The test's rows: each (layer, class or token, size) row's named-set effect (``m`` in blocks of
    ``draws + 1``: the named set, then the random sets), the random sets' mean and a 95% interval of
    the difference (1.96 SE over the random draws)."""
    named_eff, rand_mean, lo, hi = [], [], [], []
    for r in range(len(rows)):
        block = m[r * (draws + 1) : (r + 1) * (draws + 1)]
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


def _of_class(data, c: int, batch_size: int):
    """The examples of class ``c`` as one (inputs, labels) pair where the batches have one tensor input;
    else ``data`` itself (every example scored; the class-c columns are the same)."""
    xs, ys = [], []
    for b in batches(data, batch_size=batch_size):
        if len(b.args) != 1 or b.kwargs or not isinstance(b.args[0], torch.Tensor):
            return data
        keep = b.target == c
        xs.append(b.args[0][keep])
        ys.append(b.target[keep])
    return torch.cat(xs), torch.cat(ys)


def memorisation(model, train, true_labels, sites, units, n_classes, batch_size, progress):
    """Each unit deleted (zero) on the training data: the loss-change sums of the examples whose label
    was changed (group 1) and of the others (group 0), against the labels the network was trained on."""
    if true_labels is None:
        raise LesionError("train= needs true_labels= (the labels before corruption) for memorisation")
    train = reusable(train)
    trained = torch.cat([b.target.cpu() for b in batches(train, batch_size=batch_size)])
    true_labels = torch.as_tensor(true_labels).long().cpu()
    if trained.dtype.is_floating_point or trained.ndim != 1:
        raise DataError(
            f"train= needs integer class labels (examples,); got {trained.dtype} {tuple(trained.shape)}"
        )
    if trained.shape != true_labels.shape:
        raise DataError(f"true_labels has {len(true_labels)} labels; the training data has {len(trained)}")
    groups = (trained != true_labels).long()  # 1: mislabeled
    if not bool(groups.any()):
        raise DataError("no training label differs from its true label: nothing was memorised")
    metric = LossChange(n_classes, groups)
    got, _ = single_effects(
        model, train, sites, units, Zero(), metric, batch_size=batch_size, progress=progress
    )
    return {k: got[k] for k in ("dsum_group", "dsq_group", "count_group")}
