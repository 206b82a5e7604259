"""Beyond the paper, T3 (Li & Janson 2024; Pochinkov et al. 2024): how a unit is deleted (zero, mean,
resample, optimal constant) changes which units matter, on F7's MLP and convnet and a small GPT-style
decoder. T4 (``attribution``) measures the same networks on the same examples: they and the bootstrap
over units are here.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from lesion.experiments.claims import BOOT, SEED, correlation_check, make_check, percentile
from lesion.experiments.figures.common import Figure, Job, Outcome, Outputs, claim, fmt, interval, read
from lesion.experiments.figures.plot import (
    Tables,
    fig_axes,
    save,
)
from lesion.experiments.figures.units import f7_nets
from lesion.experiments.profiles import Profile

NETS = {"mlp": "MLP", "convnet": "convnet (BN)", "gpt": "GPT decoder"}
METHODS = ("zero", "mean", "resample", "optimal")
RANK_CRITERION = 0.9  # "agree only partly": mean Spearman between methods below this
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
    return {n: Job("replacements", params | examples_of(p, n), {"model": j}) for n, j in trained.items()} | {
        f"train/{n}": j for n, j in trained.items()
    }


def examples_of(p: Profile, net: str) -> dict:
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
    est, ci = fraction_ci(t.smallest.to_numpy())
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


def fraction_ci(x: np.ndarray) -> tuple[float, tuple[float, float]]:
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


def draw_t3(t: Tables, stem: Path) -> list[Path]:
    """Left: Spearman rho between each pair of methods, per network, with 95% intervals; middle: zero
    vs optimal loss change per unit; right: F7's pooled Pearson r under each method."""
    fig, (ax, ax2, ax3) = fig_axes(3, 5.0)
    r = t["rank_agreement"]
    pairs = list(dict.fromkeys(zip(r.a, r.b, strict=True)))
    nets = list(dict.fromkeys(r.net))
    width = 0.8 / max(1, len(nets))
    for i, n in enumerate(nets):
        g = r[r.net == n].set_index(["a", "b"]).loc[pairs]
        x = np.arange(len(pairs)) + (i - (len(nets) - 1) / 2) * width
        err = np.vstack([g.spearman - g.ci_low, g.ci_high - g.spearman]).clip(min=0)
        ax.bar(x, g.spearman, width, yerr=err, capsize=2, color=f"C{i}", label=NETS.get(n, n))
    ax.axhline(1.0, color="0.4", lw=0.8, ls=":")
    ax.set_xticks(np.arange(len(pairs)), [f"{a}\nvs {b}" for a, b in pairs], fontsize=7)
    ax.set(
        ylim=(min(0.0, float(r.ci_low.min()) - 0.05), 1.25),
        ylabel="Spearman rho of unit importance",
        title="Rank agreement between deletion methods",
    )
    ax.legend(fontsize=7, frameon=False, loc="upper left", ncols=3)
    imp = t["importance"]
    for i, n in enumerate(nets):
        w = imp[imp.net == n].pivot_table(index=["layer", "unit"], columns="method", values="delta_loss")
        ax2.scatter(w["zero"], w["optimal"], s=6, alpha=0.6, color=f"C{i}", label=NETS.get(n, n))
    lo = float(np.nanmin(imp.delta_loss))
    hi = float(np.nanmax(imp.delta_loss))
    ax2.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--")
    ax2.set(
        xlabel="Loss change, zero replacement (symlog)",
        ylabel="Loss change, optimal constant (symlog)",
        title="Optimal constant vs zero, per unit",
    )
    symlog(ax2, imp.delta_loss)
    ax2.legend(fontsize=7, frameon=False)
    s = t["selectivity"]
    cls = list(dict.fromkeys(s.net))
    for n in cls:
        g = s[s.net == n].set_index("method").loc[list(METHODS)]
        ax3.plot(np.arange(len(METHODS)), g.pearson_r, "o-", color=f"C{nets.index(n)}", label=NETS.get(n, n))
    ax3.axhspan(-0.5, 0.5, color="0.92", zorder=0, label="|r| < 0.5 (criterion)")
    ax3.axhline(0, color="0.4", lw=0.8)
    ax3.set_xticks(np.arange(len(METHODS)), list(METHODS))
    ax3.set(
        ylim=(-1, 1),
        xlabel="Deletion method",
        ylabel="Pearson r (selectivity, loss change)",
        title="F7 under each method",
    )
    ax3.legend(fontsize=7, frameon=False)
    return save(fig, stem)


def symlog(ax, values) -> None:
    """Both axes symlog, linear within the smallest quarter of the nonzero magnitudes (many tiny effects,
    a few large ones)."""
    from matplotlib.ticker import FuncFormatter

    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v) & (v > 0)]
    lt = float(np.quantile(v, 0.25)) if len(v) else 1.0
    for axis, scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
        scale("symlog", linthresh=lt)
        base = axis.get_major_formatter()
        # the ticks at +-linthresh sit right beside 0: label 0 and the decades outside the linear range only
        axis.set_major_formatter(
            FuncFormatter(lambda t, pos, base=base: "" if 0 < abs(t) <= lt * 1.001 else base(t, pos))
        )


T3 = Figure(
    "T3",
    "How a unit is deleted changes which units matter",
    "Li & Janson 2024; Pochinkov et al. 2024 (beyond the paper)",
    t3_jobs,
    t3_analyse,
    sizes=T3_SIZES,
    draw=draw_t3,
)
