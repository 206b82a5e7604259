"""The ROLES study's four claims. Their statistics and criteria were written here (and in docs/paper.md)
before the study was first run, and are not to be moved after seeing a result: a claim that does not
hold is reported with its interval.

- ROLES-none: more corrupted labels, fewer units with no measurable role (Figure 1's mechanism).
- ROLES-memorisation: more corrupted labels, more memorisation units (read over 0 < corruption < 1).
- ROLES-simulation: an explanation's simulation score does not predict the unit's importance (F7's
  criterion: |pooled Pearson r| < 0.5, its whole Fisher interval inside).
- ROLES-necessity: the necessity test holds for the sets that hold the convnet's class detectors.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lesion.experiments.claims import (
    BOOT,
    SEED,
    Check,
    bootstrap,
    bootstrap_rows,
    correlation_check,
    make_check,
)
from lesion.experiments.figures.common import claim, corr, fmt, interval, spearman

NAN = math.nan
NETS_AND_UNITS = (
    f"bootstrap over networks within each corruption level and units within each ({BOOT:,} resamples, "
    f"seed {SEED})"
)


def _per_net(mlp: pd.DataFrame, col: str, levels) -> dict[float, list[np.ndarray]]:
    """{corruption: [one network's per-unit 0/1 values of ``col``, ...]}: the input of ``bootstrap``."""
    return {
        c: [g[col].to_numpy(dtype=np.float64) for _, g in mlp[mlp.corrupt == c].groupby("seed", sort=True)]
        for c in levels
    }


def _trend(groups: dict, what: str, direction: str) -> list[Check]:
    """Spearman rho (corruption, per-network share) in ``direction`` of 0, and the share at the highest
    level minus at the lowest (">": rises) or lowest minus highest ("<": falls) above 0."""
    levels = sorted(groups)
    n = sum(len(v) for v in groups.values())
    rho_name = f"Spearman rho (corruption, {what})"
    if len(levels) < 2:
        return [make_check(rho_name, NAN, (NAN, NAN), criterion=0.0, direction=direction, n=n,
                           unit="networks", method=NETS_AND_UNITS)]  # fmt: skip

    def rho(m) -> float:
        x = np.concatenate([[c] * len(m[c]) for c in levels])
        return spearman(x, np.concatenate([m[c] for c in levels]))

    est, ci = bootstrap(groups, rho)
    a = make_check(rho_name, est, ci, criterion=0.0, direction=direction, n=n, unit="networks",
                   method=NETS_AND_UNITS)  # fmt: skip
    lo, hi = levels[0], levels[-1]
    first, second = (lo, hi) if direction == "<" else (hi, lo)
    est, ci = bootstrap({lo: groups[lo], hi: groups[hi]}, lambda m: m[first].mean() - m[second].mean())
    b = make_check(f"{what} at {first:.0%} minus at {second:.0%} corrupted", est, ci, criterion=0.0,
                   direction=">", n=len(groups[lo]) + len(groups[hi]), unit="networks",
                   method=NETS_AND_UNITS)  # fmt: skip
    return [a, b]


def _by_level(mlp: pd.DataFrame, col: str) -> str:
    m = mlp.groupby(["corrupt", "seed"])[col].mean().groupby("corrupt").mean()
    return ", ".join(f"{fmt(v, 3)} ({c:.0%})" for c, v in m.items())


def no_role_claim(mlp: pd.DataFrame) -> dict:
    levels = sorted(mlp.corrupt.unique())
    checks = _trend(_per_net(mlp, "no_role", levels), "share of units with no measurable role", "<")
    measured = (
        f"share of units whose deletion leaves the training loss unchanged within its interval: "
        f"{_by_level(mlp, 'no_role')}; Spearman rho {interval(checks[0])}"
        + (f"; 0% minus 100%: {interval(checks[1])}" if len(checks) > 1 else "")
        + f" ({mlp.groupby(['corrupt', 'seed']).ngroups} networks, {len(mlp)} units)"
    )
    return claim(
        "ROLES-none",
        "Networks trained on more corrupted labels have fewer units with no measurable role: on the "
        "training examples with the labels each was trained on, the share of units whose deletion (zero) "
        "leaves the loss unchanged within its 95% interval falls as corruption rises (criterion: Spearman "
        "rho of corruption vs that share < 0, and the share at the lowest corruption minus at the highest "
        "> 0; bootstrap over networks and units)",
        "not measured in the paper; its Figure 1 (memorising networks lose training accuracy sooner when "
        "units are deleted) implies that more of their units matter",
        measured,
        {"by_corruption": _shares(mlp, "no_role"), "networks": mlp.groupby(["corrupt", "seed"]).ngroups},
        checks,
    )


def memorisation_claim(mlp: pd.DataFrame) -> dict:
    inner = sorted(c for c in mlp.corrupt.unique() if 0 < c < 1)
    checks = _trend(_per_net(mlp, "memorisation", inner), "share of memorisation units", ">")
    measured = f"share of memorisation units: {_by_level(mlp[mlp.corrupt > 0], 'memorisation')}; " + (
        f"over {', '.join(f'{c:.0%}' for c in inner)}: Spearman rho {interval(checks[0])}, highest "
        f"minus lowest {interval(checks[1])}"
        if len(checks) > 1
        else f"{len(inner)} corruption level(s) strictly between 0 and 100% in this profile: no trend "
        "to read (two needed)"
    )
    return claim(
        "ROLES-memorisation",
        "Networks trained on more corrupted labels have more memorisation units (units the card's rule "
        "marks as needed by the mislabeled training examples only: loss change on them with its interval "
        "above 0 and >= 3x that on the others), read over the corruption levels strictly between 0 and "
        "100% (at 0% nothing is mislabeled; at 100% the examples whose shuffled label happens to be right "
        "are memorised too, so no unit can be needed by the mislabeled ones only) (criterion: Spearman "
        "rho of corruption vs the share > 0, and the share at the highest of those levels minus at the "
        "lowest > 0; bootstrap over networks and units)",
        "Maini et al. 2023: memorisation of mislabeled examples is concentrated in a few units (deleting "
        "about 5 takes memorised accuracy from 100% to 3%); not measured by Morcos et al.",
        measured,
        {"by_corruption": _shares(mlp[mlp.corrupt > 0], "memorisation"), "levels": inner},
        checks,
    )


def _shares(df: pd.DataFrame, col: str) -> dict[str, float]:
    m = df.groupby(["corrupt", "seed"])[col].mean().groupby("corrupt").mean()
    return {f"{c:g}": float(v) for c, v in m.items()}


def simulation_claim(units: pd.DataFrame) -> dict:
    parts = (
        ("clean MLPs", units[(units.net == "mlp") & (units.corrupt == 0.0)]),
        ("convnet", units[units.net == "convnet"]),
    )
    checks, stat, texts = [], {}, []
    for label, t in parts:
        t = t[np.isfinite(t.simulation.astype(float)) & np.isfinite(t.loss_zero.astype(float))]
        none = {"pearson_r": NAN, "spearman_rho": NAN, "n": len(t)}
        c = corr(t.simulation, t.loss_zero) if len(t) > 2 else none
        r, n = c["pearson_r"], int(c["n"])
        checks.append(correlation_check(f"{label}: pooled Pearson r (simulation score, loss change)", r,
                                        n, criterion=0.5, direction="within", unit="units"))  # fmt: skip
        stat[label] = {"pearson_r": r, "spearman_rho": c["spearman_rho"], "n": n}
        texts.append(f"{label} {interval(checks[-1])} (Spearman {fmt(c['spearman_rho'], 2)}, n = {n})")
    return claim(
        "ROLES-simulation",
        "An explanation's simulation score does not predict the unit's importance: the paper's "
        "selectivity result restated for the cards' explanations (criterion as F7: |pooled Pearson r "
        "(simulation score, loss change when the unit is deleted)| < 0.5, its whole 95% interval inside "
        "(-0.5, 0.5), for the clean MLPs (F1's 0%-corrupted networks, seeds pooled, cards on their "
        "training examples) and for the convnet (cards on held-out images); units without a score, dead or "
        "constant, left out)",
        "Morcos et al. 2018, Fig. 7: pooled r (selectivity, importance) MNIST 0.095, CIFAR-10 -0.428; "
        "Huang et al. 2023 found automated neuron explanations to have little to no causal efficacy",
        "pooled Pearson r (simulation score, loss change): " + "; ".join(texts),
        stat,
        checks,
    )


def necessity_claim(sets: pd.DataFrame) -> dict:
    held = sets[sets.detectors > 0]
    scored = held[np.isfinite(held["difference"].astype(float))]
    d = scored["difference"].to_numpy(dtype=np.float64)
    name = "mean over the detectors' (layer, class) sets of named minus random class-c loss change"
    if len(d) >= 2:
        est, ci = bootstrap_rows({"d": d}, lambda m: float(m["d"]))
        method = f"bootstrap over the sets ({BOOT:,} resamples, seed {SEED})"
    elif len(d) == 1:
        est, ci = float(d[0]), (float(scored["lo"].iloc[0]), float(scored["hi"].iloc[0]))
        method = "the one set's interval over its random draws (1.96 SE)"
    else:
        est, ci, method = NAN, (NAN, NAN), "no set to test"
    check = make_check(name, est, ci, criterion=0.0, direction=">", n=len(d), unit="(layer, class) sets",
                       method=method)  # fmt: skip
    every = sets[np.isfinite(sets["difference"].astype(float))]
    detectors = int(held.detectors.sum())
    measured = (
        f"{detectors} units called class detectors, in {len(held)} (layer, class) sets"
        + (f" ({len(held) - len(scored)} without a causal score)" if len(held) > len(scored) else "")
        + (
            f"; named minus random class loss change {interval(check)} nats (named "
            f"{fmt(scored.named.mean())}, random {fmt(scored.random.mean())}); sets with their own "
            f"interval above 0: {int((scored.lo > 0).sum())} of {len(scored)}"
            if len(scored)
            else "; no set to test"
        )
        + f"; every named set ({len(every)}, with or without a detector): mean difference "
        f"{fmt(every.difference.mean())}, {int((every.lo > 0).sum())} with their interval above 0"
    )
    return claim(
        "ROLES-necessity",
        "The necessity test holds for the units the convnet's cards call class detectors: for each layer "
        "and class c with at least one class-c detector, deleting all the layer's units whose explanation "
        "names c (selectivity >= 0.5, preferred class c) raises the loss on class c's held-out images more "
        "than deleting as many random units of the layer (criterion: the mean over those sets of named "
        "minus random > 0; bootstrap over the sets, or with one set its interval over the random draws)",
        "Bau et al. 2020: deleting the ~20 units of 512 most important for a class destroys that class "
        "(necessity); here the units are chosen by their explanations, not by their effects",
        measured,
        {
            "detectors": detectors,
            "sets": len(held),
            "scored_sets": len(scored),
            "all_named_sets": len(every),
            "all_named_mean_difference": float(every.difference.mean()) if len(every) else NAN,
        },
        [check],
    )
