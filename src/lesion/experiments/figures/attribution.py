"""Beyond the paper, T4 (Kramar et al. 2024, AtP*): the first-order attribution estimate of every unit's
deletion effect against the exact effect, on T3's networks and examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lesion.experiments.claims import BOOT, SEED, make_check, percentile
from lesion.experiments.figures.common import Figure, Job, Outcome, Outputs, claim, fmt, interval, read
from lesion.experiments.figures.plot import (
    Tables,
    fig_axes,
    save,
)
from lesion.experiments.figures.replacements import (
    NETS,
    examples_of,
    fraction_ci,
    nets,
    rank_corr,
    rho_draws,
    symlog,
    unit_draws,
)
from lesion.experiments.profiles import Profile

HIGH = 0.8  # "high overall agreement": Spearman (estimate, exact) above this
TOP = 0.10  # the top 10% of units by |exact| effect, and the estimate's top 10%
MISS_CRITERION = 0.1  # "systematic misses": more than 1 in 10 of the top units missed

# ---- T4: the attribution estimate against the exact effect


def t4_jobs(p: Profile) -> dict[str, Job]:
    trained = nets(p)
    return {n: Job("attribution", examples_of(p, n), {"model": j}) for n, j in trained.items()} | {
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
    share, ci_m = fraction_ci(top.false_negative.to_numpy(bool))
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


def draw_t4(t: Tables, stem: Path) -> list[Path]:
    """One panel per network: estimate (x) against exact loss change (y), false negatives circled; and
    the per-layer Spearman rho with its 95% interval."""
    a = t["attribution"]
    nets = list(dict.fromkeys(a.net))
    fig, axes = fig_axes(len(nets) + 1, 4.2)
    for i, (ax, n) in enumerate(zip(axes, nets, strict=False)):
        g = a[a.net == n]
        for kind, marker in (("neuron", "o"), ("head", "^")):
            k = g[g.kind == kind]
            if len(k):
                ax.scatter(
                    k.estimate, k.exact, s=8, alpha=0.6, marker=marker, color=f"C{i}", label=f"{kind}s"
                )
        fn = g[g.false_negative.fillna(False).astype(bool)]
        ax.scatter(
            fn.estimate,
            fn.exact,
            s=60,
            facecolors="none",
            edgecolors="red",
            lw=1.2,
            label="false negatives (top 10% exact,\nnot top 10% estimate)",
        )
        lo = float(min(g.estimate.min(), g.exact.min()))
        hi = float(max(g.estimate.max(), g.exact.max()))
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--")
        ax.set(
            xlabel="Attribution estimate of loss change (symlog)",
            ylabel="Exact loss change (symlog)",
            title=NETS.get(n, n),
        )
        symlog(ax, np.r_[g.estimate, g.exact])
        ax.legend(fontsize=6, frameon=False, loc="upper left")
    ax = axes[-1]
    s = t["spearman"]
    s = s[s.layer != "all"].reset_index(drop=True)
    colors = [f"C{nets.index(n)}" for n in s.net]
    err = np.vstack([s.spearman - s.ci_low, s.ci_high - s.spearman]).clip(min=0)
    ax.barh(np.arange(len(s)), s.spearman, xerr=err, color=colors, capsize=2)
    ax.set_yticks(
        np.arange(len(s)),
        [f"{NETS.get(n, n)}: {layer}" for n, layer in zip(s.net, s.layer, strict=True)],
        fontsize=6,
    )
    ax.invert_yaxis()
    ax.axvline(1.0, color="0.4", lw=0.8, ls=":")
    ax.set(
        xlim=(min(0.0, float(s.ci_low.min()) - 0.05), 1.05),
        xlabel="Spearman rho (estimate, exact)",
        title="Agreement per layer (95% CI)",
    )
    return save(fig, stem)


T4 = Figure(
    "T4",
    "The gradient estimate against the exact effect",
    "Kramar et al. 2024, AtP* (beyond the paper)",
    t4_jobs,
    t4_analyse,
    draw=draw_t4,
)
