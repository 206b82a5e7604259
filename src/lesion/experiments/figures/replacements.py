"""Two studies beyond the paper on F7's MLP and convnet and a small GPT-style decoder.

T3 (Li & Janson 2024; Pochinkov et al. 2024): how a unit is deleted (zero, mean, resample, optimal
constant) changes which units matter. T4 (Kramar et al. 2024, AtP*): the first-order attribution estimate
of every unit's deletion effect against the exact effect.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from lesion.experiments.claims import BOOT, SEED, correlation_check, make_check, percentile
from lesion.experiments.figures.common import Figure, Job, Outcome, Outputs, claim, fmt, interval, read
from lesion.experiments.figures.units import f7_nets
from lesion.experiments.profiles import Profile

NETS = {"mlp": "MLP", "convnet": "convnet (BN)", "gpt": "GPT decoder"}
METHODS = ("zero", "mean", "resample", "optimal")
RANK_CRITERION = 0.9  # "agree only partly": mean Spearman between methods below this
HIGH = 0.8  # T4 "high overall agreement": Spearman (estimate, exact) above this
TOP = 0.10  # T4: the top 10% of units by |exact| effect, and the estimate's top 10%
MISS_CRITERION = 0.1  # T4 "systematic misses": more than 1 in 10 of the top units missed
# T3's sizes, which T4 reads too (it measures T3's networks on T3's examples): a GPT-style decoder (d_model,
# layers, heads) joins F7's MLP and convnet, trained on a built-in corpus (3/4 train, 1/4 held out);
# resample draws per unit; Adam steps fitting each optimal constant (from the better of 0 and the mean);
# the held-out examples every unit is measured on (None: all; the convnet's optimal constants cost most)
T3_SIZES = {"corpus": "markov", "sequences": 512, "seq_len": 32, "gpt": (32, 2, 4), "gpt_epochs": 6,
            "resample_repeats": 3, "optimal_steps": 10, "examples": 500, "lm_sequences": 32,
            "conv_examples": 100}  # fmt: skip


def gpt_train(p: Profile) -> Job:
    """lesion's GPT-style decoder on the profile's built-in corpus (the ``train`` job's gpt branch)."""
    z = T3.sizes_in(p)
    d, layers, heads = z["gpt"]
    arch = {"kind": "gpt", "d_model": d, "n_layer": layers, "n_head": heads, "dropout": 0.0}
    train = {"epochs": z["gpt_epochs"], "lr": 3e-3, "batch_size": 32}
    if p.device != "cpu":  # a GPU run: a different job, as for every trained network
        train["device"] = p.device
    params = {
        "arch": arch,
        "dataset": z["corpus"],
        "sequences": z["sequences"],
        "seq_len": z["seq_len"],
        "corrupt": 0.0,
        "seed": 0,
        "train": train,
    }
    return Job("train", params)


def nets(p: Profile) -> dict[str, Job]:
    return f7_nets(p) | {"gpt": gpt_train(p)}


# ---- T3: replacement methods


def t3_jobs(p: Profile) -> dict[str, Job]:
    params = {
        "methods": list(METHODS),
        "resample_repeats": T3.size(p, "resample_repeats"),
        "seed": 0,
        "optimal_steps": T3.size(p, "optimal_steps"),
    }
    trained = nets(p)
    return {n: Job("replacements", params | _data(p, n), {"model": j}) for n, j in trained.items()} | {
        f"train/{n}": j for n, j in trained.items()
    }


def _data(p: Profile, net: str) -> dict:
    """Which held-out examples a network's units are measured on (the same in T3 and T4)."""
    if net == "gpt":
        return {"test_sequences": T3.size(p, "lm_sequences")}
    return {"test_examples": T3.size(p, "conv_examples" if net == "convnet" else "examples")}


def t3_analyse(p: Profile, out: Outputs) -> Outcome:
    table = pd.concat([read(out, n, "replacements.parquet").assign(net=n) for n in NETS], ignore_index=True)
    wide = {n: _wide(table[table.net == n]) for n in NETS}  # (units, methods) delta_loss
    pairs = list(combinations(range(len(METHODS)), 2))
    rows, points, draws = [], [], []
    for k, (n, w) in enumerate(wide.items()):
        x = w[list(METHODS)].to_numpy(np.float64)
        d = rho_draws(x, pairs, unit_draws(len(x), k))  # (boot, pairs): units resampled within the network
        for j, (a, b) in enumerate(pairs):
            lo, hi = percentile(d[:, j])
            rho = rank_corr(x[:, [a, b]])
            rows.append({"net": n, "a": METHODS[a], "b": METHODS[b], "spearman": rho, "ci_low": lo,
                         "ci_high": hi, "n": len(w)})  # fmt: skip
            points.append(rho)
        draws.append(d)
    ranks = pd.DataFrame(rows)
    est, ci = float(np.mean(points)), percentile(np.concatenate(draws, axis=1).mean(axis=1))
    n_units = sum(len(w) for w in wide.values())
    head = make_check(
        "mean Spearman rho of unit importance between two methods (6 pairs x 3 networks)",
        est,
        ci,
        criterion=RANK_CRITERION,
        direction="<",
        n=n_units,
        unit="units",
        method=f"bootstrap over units within each network ({BOOT:,} resamples, seed {SEED})",
    )
    lowest = ranks.loc[ranks.spearman.idxmin()]
    per_net = ranks.groupby("net", sort=False).spearman.agg(["min", "max"])
    c_rank = claim(
        "T3",
        f"How a unit is deleted changes which units matter: importance rankings under zero, mean, resample "
        f"and optimal-constant replacement agree only partly (criterion: mean Spearman rho over the method "
        f"pairs and networks below {RANK_CRITERION}, its whole 95% interval)",
        "Li & Janson 2024 (optimal ablation); Pochinkov et al. 2024: the choice of ablation method changes "
        "measured importance",
        f"mean Spearman rho {interval(head)} over {n_units} units; per network (min..max over the 6 pairs): "
        + "; ".join(f"{NETS[n]} {fmt(r['min'], 2)}..{fmt(r['max'], 2)}" for n, r in per_net.iterrows())
        + f"; lowest: {NETS[lowest.net]} {lowest.a} vs {lowest.b} {fmt(lowest.spearman)} "
        f"[{fmt(lowest.ci_low)}, {fmt(lowest.ci_high)}]",
        {"mean_spearman": est, "pairs": {f"{r.net}/{r.a}-{r.b}": r.spearman for r in ranks.itertuples()}},
        [head],
    )
    optimal, c_opt = _optimal_claim(p, wide)
    f7, c_f7 = _f7_claim(table)
    tables = {"importance": table, "rank_agreement": ranks, "optimal": optimal, "selectivity": f7}
    return Outcome(tables, [c_rank, c_opt, c_f7])


def _wide(t: pd.DataFrame) -> pd.DataFrame:
    w = t.pivot_table(index=["layer", "unit"], columns="method", values="delta_loss", sort=False)
    return w[list(METHODS)].reset_index()


def rank_corr(x: np.ndarray) -> float:
    """Spearman's rho of the two columns of ``x`` (n, 2) (ties: average ranks); NaN when one is constant."""
    from scipy.stats import rankdata

    r = rankdata(x, axis=0)
    if np.ptp(r[:, 0]) == 0 or np.ptp(r[:, 1]) == 0:
        return float("nan")
    return float(np.corrcoef(r[:, 0], r[:, 1])[0, 1])


def unit_draws(n: int, key: int = 0, *, boot: int = BOOT, seed: int = SEED) -> np.ndarray:
    """(boot, n) row indices drawn with replacement: the bootstrap over units (one stream per ``key``)."""
    return np.random.default_rng([seed, key]).integers(0, n, (boot, n))


def rho_draws(x: np.ndarray, pairs, idx: np.ndarray) -> np.ndarray:
    """Spearman's rho of each column pair of ``x`` (n, m) on every resample ``idx`` (boot, n):
    (boot, pairs), NaN where a resampled ranking is constant."""
    from scipy.stats import rankdata

    r = rankdata(x[idx], axis=1)  # (boot, n, m), ties: average ranks
    r -= r.mean(axis=1, keepdims=True)
    out = np.empty((len(idx), len(pairs)))
    for j, (a, b) in enumerate(pairs):
        num = (r[:, :, a] * r[:, :, b]).sum(1)
        den = np.sqrt((r[:, :, a] ** 2).sum(1) * (r[:, :, b] ** 2).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, j] = np.where(den > 0, num / den, np.nan)
    return out


def _optimal_claim(p: Profile, wide: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict]:
    """Is the optimal constant's loss change the smallest of the four methods, unit by unit?"""
    rows, steps = [], T3.size(p, "optimal_steps")
    for n, w in wide.items():
        others = w[[m for m in METHODS if m != "optimal"]]
        gap = w["optimal"] - others.min(axis=1)  # > 0: another method deletes the unit more gently
        gap_const = w["optimal"] - w[["zero", "mean"]].min(axis=1)  # the constants it is fitted against
        rows.append(
            pd.DataFrame({"net": n, "layer": w.layer, "unit": w.unit, "gap": gap, "gap_constants": gap_const})
        )
    t = pd.concat(rows, ignore_index=True)
    tol = 1e-6
    t["smallest"] = t.gap <= tol
    t["below_constants"] = t.gap_constants <= tol
    est, ci = _fraction_ci(t.smallest.to_numpy())
    check = make_check(
        "fraction of units whose optimal-constant loss change is the smallest of the four methods",
        est,
        ci,
        criterion=0.95,
        direction=">",
        n=len(t),
        unit="units",
    )
    worst = t.loc[t.gap.idxmax()]
    per = t.groupby("net", sort=False)[["smallest", "below_constants"]].mean()
    measured = (
        f"optimal constants fitted on the measured examples ({steps} Adam steps from the "
        "better of 0 and the mean); smallest for "
        f"{interval(check)} of {len(t)} units ("
        + ", ".join(f"{NETS[n]} {fmt(r.smallest, 2)}" for n, r in per.iterrows())
        + "); at or below both zero and mean for "
        + ", ".join(f"{NETS[n]} {fmt(r.below_constants, 2)}" for n, r in per.iterrows())
        + f"; worst violation: {NETS[worst.net]} {worst.layer}:{int(worst.unit)}, loss change "
        f"{worst.gap:.2g} above the smallest method's"
    )
    c = claim(
        "T3-optimal",
        "The optimal constant (fitted per unit to minimise the loss) deletes every unit most gently: its "
        "loss change is the smallest of the four methods for every unit (criterion: for more than 95% of "
        "units, 95% interval over units; fitted on the measured examples from the better of 0 and the mean, "
        "it cannot do worse than those two there, so the test is against resampling)",
        "Li & Janson 2024: optimal ablation gives the minimal loss change among constant replacements "
        "(by construction on the data it is fitted on)",
        measured,
        {
            "fraction": est,
            "worst_gap": float(worst.gap),
            "worst_unit": f"{worst.net} {worst.layer}:{worst.unit}",
            "fraction_below_constants": float(t.below_constants.mean()),
        },
        [check],
    )
    return t, c


def _fraction_ci(x: np.ndarray) -> tuple[float, tuple[float, float]]:
    rng = np.random.default_rng(SEED)
    boots = [x[rng.integers(0, len(x), len(x))].mean() for _ in range(BOOT)]
    return float(x.mean()), percentile(boots)


def _f7_claim(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """F7 (selectivity vs importance, pooled Pearson r) under each method, for the two classifiers."""
    from lesion.analyses.measures import correlate

    rows, checks = [], []
    for n in ("mlp", "convnet"):
        for m in METHODS:
            t = table[(table.net == n) & (table.method == m)].dropna(subset=["selectivity"])
            c = correlate(t.selectivity.to_numpy(np.float64), t.delta_loss.to_numpy(np.float64))
            rows.append({"net": n, "method": m, **c})
            checks.append(
                correlation_check(
                    f"{NETS[n]}, {m}: pooled Pearson r (selectivity, loss change)",
                    c["pearson_r"],
                    c["n"],
                    criterion=0.5,
                    direction="within",
                    unit="units",
                )
            )
    t = pd.DataFrame(rows)
    checks.sort(key=lambda ch: -abs(ch.estimate) if np.isfinite(ch.estimate) else 0)  # headline: largest |r|
    c = claim(
        "T3-F7",
        "The paper's F7 conclusion survives every deletion method: class selectivity is a poor predictor of "
        "importance under zero, mean, resample and optimal-constant replacement (criterion: |pooled Pearson "
        "r| < 0.5, the whole 95% interval, for the MLP and the convnet under each method)",
        "Morcos et al. 2018, Fig. 7 (zero ablation only): pooled r MNIST 0.095, CIFAR-10 -0.428",
        "pooled Pearson r (selectivity, loss change): "
        + "; ".join(
            f"{NETS[n]} " + ", ".join(f"{r.method} {fmt(r.pearson_r, 2)}" for r in g.itertuples())
            for n, g in t.groupby("net", sort=False)
        )
        + f"; largest |r|: {checks[0].name.split(':')[0]} {interval(checks[0])} (Fisher z)",
        {f"{r.net}/{r.method}": r.pearson_r for r in t.itertuples()},
        checks,
    )
    return t, c


T3 = Figure(
    "T3",
    "How a unit is deleted changes which units matter",
    "Li & Janson 2024; Pochinkov et al. 2024 (beyond the paper)",
    t3_jobs,
    t3_analyse,
    sizes=T3_SIZES,
)


# ---- T4: the attribution estimate against the exact effect


def t4_jobs(p: Profile) -> dict[str, Job]:
    trained = nets(p)
    return {n: Job("attribution", _data(p, n), {"model": j}) for n, j in trained.items()} | {
        f"train/{n}": j for n, j in trained.items()
    }


def t4_analyse(p: Profile, out: Outputs) -> Outcome:
    table = pd.concat([read(out, n, "attribution.parquet").assign(net=n) for n in NETS], ignore_index=True)
    frames = {n: table[table.net == n] for n in NETS}
    rows, overall = [], []
    for k, (n, f) in enumerate(frames.items()):
        for i, (layer, g) in enumerate([("all", f), *f.groupby("layer", sort=False)]):
            x = g[["estimate", "exact"]].to_numpy(np.float64)
            d = rho_draws(x, [(0, 1)], unit_draws(len(x), 100 * k + i))[:, 0]
            est, ci = rank_corr(x), percentile(d)
            if layer == "all":
                overall.append((est, d))
            rows.append(
                {
                    "net": n,
                    "layer": layer,
                    "kind": "all" if layer == "all" else g.kind.iloc[0],
                    "spearman": est,
                    "ci_low": ci[0],
                    "ci_high": ci[1],
                    "n": len(g),
                }
            )
    per_layer = pd.DataFrame(rows)
    est = float(np.mean([e for e, _ in overall]))
    ci = percentile(np.mean([d for _, d in overall], axis=0))
    n_units = len(table)
    agree = make_check(
        "mean over the 3 networks of Spearman rho (estimate, exact loss change), all units",
        est,
        ci,
        criterion=HIGH,
        direction=">",
        n=n_units,
        unit="units",
        method=f"bootstrap over units within each network ({BOOT:,} resamples, seed {SEED})",
    )
    misses = pd.concat([_false_negatives(f) for f in frames.values()], ignore_index=True)
    table = table.merge(
        misses[["net", "unit", "top_exact", "false_negative"]], on=["net", "unit"], how="left"
    )
    top = table[table.top_exact.fillna(False).astype(bool)]
    share, ci_m = _fraction_ci(top.false_negative.to_numpy(bool))
    miss = make_check(
        f"share of the top {TOP:.0%} units by |exact| that the estimate ranks outside its top {TOP:.0%}",
        share,
        ci_m,
        criterion=MISS_CRITERION,
        direction=">",
        n=len(top),
        unit="top units",
    )
    fn = top[top.false_negative]
    where = fn.groupby(["net", "kind"]).size()
    under = float((fn.exact > fn.estimate).mean()) if len(fn) else float("nan")
    overall = per_layer[per_layer.layer == "all"].set_index("net")
    measured = (
        f"Spearman rho (estimate, exact), mean over networks {interval(agree)}: "
        + ", ".join(
            f"{NETS[n]} {fmt(r.spearman)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]" for n, r in overall.iterrows()
        )
        + "; per layer from "
        + f"{fmt(per_layer.spearman.min(), 2)} to {fmt(per_layer.spearman.max(), 2)}"
        + f"; false negatives: {len(fn)} of {len(top)} top-{TOP:.0%} units ({interval(miss)})"
        + (": " + ", ".join(f"{NETS[n]} {k}s {v}" for (n, k), v in where.items()) if len(fn) else "")
        + (f"; {fmt(under, 2)} of them underestimated (exact above estimate)" if len(fn) else "")
    )
    c = claim(
        "T4",
        f"The gradient (attribution) estimate of a unit's deletion effect agrees highly with the "
        f"exact effect overall, with systematic misses (criteria: mean Spearman rho over the networks "
        f"above {HIGH}; more than {MISS_CRITERION:.0%} of the units with the largest exact effect, the "
        f"top {TOP:.0%}, ranked outside the estimate's top {TOP:.0%}; 95% intervals over units)",
        "Kramar et al. 2024 (AtP*): attribution patching is a good first approximation but has false "
        "negatives, large effects it underestimates (attention saturation, cancellation)",
        measured,
        {
            "mean_spearman": est,
            "false_negative_share": share,
            "false_negatives_underestimated": under,
            "false_negatives": list(fn.unit.astype(str)),
            "per_net": overall.spearman.to_dict(),
        },
        [agree, miss],
    )
    return Outcome({"attribution": table, "spearman": per_layer}, [c])


def _false_negatives(f: pd.DataFrame) -> pd.DataFrame:
    """Units in the top ``TOP`` by |exact| that the estimate ranks outside its top ``TOP`` by |estimate|."""
    k = max(1, int(np.ceil(TOP * len(f))))
    ex, es = f.exact.abs().to_numpy(), f.estimate.abs().to_numpy()
    top_exact = np.zeros(len(f), bool)
    top_exact[np.argsort(-ex, kind="stable")[:k]] = True
    top_est = np.zeros(len(f), bool)
    top_est[np.argsort(-es, kind="stable")[:k]] = True
    return pd.DataFrame(
        {
            "net": f.net.to_numpy(),
            "unit": f.unit.to_numpy(),
            "top_exact": top_exact,
            "false_negative": top_exact & ~top_est,
        }
    )


T4 = Figure(
    "T4",
    "The gradient estimate against the exact effect",
    "Kramar et al. 2024, AtP* (beyond the paper)",
    t4_jobs,
    t4_analyse,
)
