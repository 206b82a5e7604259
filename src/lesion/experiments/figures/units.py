"""Figures 5b-7: batch norm, and whether selective units matter more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from lesion.experiments.claims import (
    bootstrap,
    bootstrap_medians,
    correlation_check,
    fisher_ci,
    make_check,
)
from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    accuracy_at,
    aucs,
    by_net,
    claim,
    conv_train,
    corr,
    curves,
    fmt,
    gather,
    interval,
    pval,
    train,
    units,
)
from lesion.experiments.figures.plot import (
    Tables,
    band,
    chance_line,
    curve_axes,
    fig_axes,
    save,
)
from lesion.experiments.profiles import Profile

# ---- F5b: batch norm makes nets more robust to ablation

F5B_SIZES = {"repeats": 3, "fractions": 11}  # the convnets' curves: random orders, points per curve


def _conv_nets(p: Profile) -> dict[tuple[bool, int], Job]:
    return {(bn, s): conv_train(p, batchnorm=bn, seed=s) for bn in (True, False) for s in p.conv_seeds}


def _bn(bn: bool) -> str:
    return "bn" if bn else "nobn"


def f5b_jobs(p: Profile) -> dict[str, Job]:
    nets = _conv_nets(p)
    shape = F5B.sizes_in(p)
    return {f"{_bn(bn)}/seed{s}": curves(p, n, **shape) for (bn, s), n in nets.items()} | {
        f"train/{_bn(bn)}/seed{s}": n for (bn, s), n in nets.items()
    }


def f5b_analyse(p: Profile, out: Outputs) -> Outcome:
    names = {f"{_bn(bn)}/seed{s}": {"batchnorm": bn, "seed": s} for bn, s in _conv_nets(p)}
    table = gather(out, names, "curves.parquet")
    per_curve = aucs(table, ["batchnorm", "seed", "repeat"])
    a = per_curve.groupby("batchnorm")["auc"].mean()
    est, ci = bootstrap(
        by_net(per_curve, "batchnorm", ["seed"], "auc"), lambda m: m[True].mean() - m[False].mean()
    )
    check = make_check(
        "AUC with minus without batch norm",
        est,
        ci,
        criterion=0.0,
        direction=">",
        n=int(per_curve.groupby("batchnorm").size().min()),
        unit="random orders",
    )
    at = accuracy_at(table, 800 / 1536, ["batchnorm"])
    intact = accuracy_at(table, 0.0, ["batchnorm"])
    n = int(table.loc[table.fraction > 0, "n_ablated"].div(table.fraction).median())
    measured = (
        f"AUC {fmt(a[True])} with batch norm vs {fmt(a[False])} without (difference {interval(check)}); "
        "accuracy at 52% of the "
        f"{n} candidate maps ablated: {fmt(at[True], 2)} vs {fmt(at[False], 2)} (intact "
        f"{fmt(intact[True], 2)}"
        f" vs {fmt(intact[False], 2)})"
    )
    c = claim(
        "F5b",
        "Batch norm makes a convnet more robust to cumulative ablation (criterion: AUC with BN > without)",
        "CIFAR-10, at 800 of 1536 maps ablated: accuracy ~0.88 with BN vs ~0.37 without",
        measured,
        {
            "auc_bn": a[True],
            "auc_no_bn": a[False],
            "accuracy_at_52pct_bn": at[True],
            "accuracy_at_52pct_no_bn": at[False],
        },
        [check],
    )
    return Outcome({"curves": table}, [c])


def draw_f5b(t: Tables, stem: Path) -> list[Path]:
    fig, (ax,) = fig_axes(1, 7.0)
    cur = t["curves"]
    for bn, col, label in ((True, "C0", "with batch norm"), (False, "C3", "without batch norm")):
        band(ax, cur[cur.batchnorm == bn], "fraction", "accuracy", color=col, label=label)
    chance_line(ax)
    curve_axes(ax, "Convnet, feature maps of the last three conv layers")
    ax.set_xlabel("Fraction of candidate feature maps ablated")
    ax.legend(fontsize=8, frameon=False)
    return save(fig, stem)


F5B = Figure("F5b", "Batch norm and robustness", "Morcos et al. 2018, Fig. 5b", f5b_jobs, f5b_analyse,
             sizes=F5B_SIZES, draw=draw_f5b)  # fmt: skip


# ---- F6: batch norm lowers selectivity and raises mutual information


def f6_jobs(p: Profile) -> dict[str, Job]:
    return {f"{_bn(bn)}/seed{s}": units(p, n, importance=False) for (bn, s), n in _conv_nets(p).items()}


def f6_analyse(p: Profile, out: Outputs) -> Outcome:
    names = {f"{_bn(bn)}/seed{s}": {"batchnorm": bn, "seed": s} for bn, s in _conv_nets(p)}
    table = gather(out, names, "units.parquet")
    conv_layers = [c for c in table.layer.unique() if c != "relu_fc"]
    live = table[table.layer.isin(conv_layers) & ~table.dead]
    med = live.groupby("batchnorm")[["selectivity", "mutual_info"]].median()
    si_p = sps.mannwhitneyu(live[live.batchnorm].selectivity, live[~live.batchnorm].selectivity).pvalue
    mi_p = sps.mannwhitneyu(live[live.batchnorm].mutual_info, live[~live.batchnorm].mutual_info).pvalue
    checks = []
    for col, what, direction in (
        ("selectivity", "selectivity", "<"),
        ("mutual_info", "mutual information", ">"),
    ):
        est, ci = bootstrap_medians(
            {bn: live[live.batchnorm == bn][col] for bn in (True, False)}, lambda m: m[True] - m[False]
        )
        checks.append(
            make_check(
                f"median {what} with minus without batch norm",
                est,
                ci,
                criterion=0.0,
                direction=direction,
                n=len(live),
                unit="feature maps",
            )
        )
    measured = (
        f"median selectivity {fmt(med.selectivity[True])} with BN vs {fmt(med.selectivity[False])} without "
        f"(Mann-Whitney p = {si_p:.2g}); median mutual information {fmt(med.mutual_info[True])} vs "
        f"{fmt(med.mutual_info[False])} bits (p = {mi_p:.2g}); {len(live)} live feature maps of "
        f"{len(conv_layers)} conv layers; differences {interval(checks[0])} (selectivity), "
        f"{interval(checks[1])} (information)"
    )
    c = claim(
        "F6",
        "Batch norm lowers class selectivity and raises mutual information with the label (criterion: "
        "both medians move that way, bootstrap over feature maps)",
        "with BN, selectivity peaks near 0.1; without BN, mass at 0.6-1.0 and a spike at 1.0",
        measured,
        {
            "median_selectivity_bn": med.selectivity[True],
            "median_selectivity_no_bn": med.selectivity[False],
            "median_mi_bn": med.mutual_info[True],
            "median_mi_no_bn": med.mutual_info[False],
            "selectivity_p": si_p,
            "mi_p": mi_p,
        },
        checks,
    )
    return Outcome({"units": table}, [c])


def draw_f6(t: Tables, stem: Path) -> list[Path]:
    fig, axes = fig_axes(2)
    u = t["units"]
    u = u[(u.layer != "relu_fc") & ~u.dead]
    for ax, col, xlabel in zip(
        axes,
        ("selectivity", "mutual_info"),
        ("Class selectivity index", "Mutual information with the label (bits)"),
        strict=True,
    ):
        bins = np.linspace(0, 1, 26) if col == "selectivity" else np.linspace(0, max(u[col].max(), 1e-6), 26)
        for bn, c, label in ((True, "C0", "with batch norm"), (False, "C3", "without batch norm")):
            ax.hist(u[u.batchnorm == bn][col], bins=bins, density=True, alpha=0.5, color=c, label=label)
        ax.set(
            xlabel=xlabel, ylabel="Density (feature maps)", title=f"{xlabel.split(' (')[0]}, all conv layers"
        )
        ax.legend(fontsize=8, frameon=False)
    return save(fig, stem)


F6 = Figure(
    "F6",
    "Selectivity and information with and without batch norm",
    "Morcos et al. 2018, Fig. 6",
    f6_jobs,
    f6_analyse,
    draw=draw_f6,
)


# ---- F7: selectivity is a poor predictor of importance


def f7_nets(p: Profile) -> dict[str, Job]:
    return {
        "mlp": train(p, p.small_widths, subset=True),
        "convnet": conv_train(p, batchnorm=True, seed=p.conv_seeds[0]),
    }


def f7_jobs(p: Profile) -> dict[str, Job]:
    return {name: units(p, net) for name, net in f7_nets(p).items()}


def f7_analyse(p: Profile, out: Outputs) -> Outcome:
    table = gather(out, {"mlp": {"net": "mlp"}, "convnet": {"net": "convnet"}}, "units.parquet")
    claims = []
    corrs = []
    for net, label in (("mlp", "MNIST MLP"), ("convnet", "convnet (BN)")):
        t = table[table.net == net]
        pooled = corr(t.selectivity, t.delta_loss)
        layers = {layer: corr(g.selectivity, g.delta_loss) for layer, g in t.groupby("layer", sort=False)}
        corrs += [{"net": net, "layer": "all", **pooled}] + [
            {"net": net, "layer": k, **v} for k, v in layers.items()
        ]
        r = pooled["pearson_r"]
        per_layer = ", ".join(f"{k} {fmt(v['pearson_r'], 2)}" for k, v in layers.items())
        claims.append(
            claim(
                "F7" if net == "mlp" else "F7-conv",
                f"Class selectivity is a poor predictor of a unit's importance ({label}; criterion: "
                "|pooled Pearson r| "
                "< 0.5, its whole 95% interval inside (-0.5, 0.5): selectivity explains < 25% of the "
                "variance of the loss change)",
                "pooled r: MNIST 0.095, CIFAR-10 -0.428, ImageNet -0.012; first layer about -0.7, "
                "deeper layers ~0",
                f"pooled Pearson r (selectivity, loss change when deleted) = {fmt(r, 3)} "
                f"[{', '.join(fmt(v) for v in fisher_ci(r, pooled['n']))}] (p = "
                f"{pval(pooled['pearson_p'])},"
                f" n = {pooled['n']}); per layer: {per_layer}",
                {
                    "pearson_r": r,
                    "pearson_p": pooled["pearson_p"],
                    "spearman_rho": pooled["spearman_rho"],
                    "n": pooled["n"],
                    "per_layer": {k: v["pearson_r"] for k, v in layers.items()},
                },
                [
                    correlation_check(
                        "pooled Pearson r (selectivity, loss change)",
                        r,
                        pooled["n"],
                        criterion=0.5,
                        direction="within",
                        unit="units",
                    )
                ],
            )
        )
    return Outcome({"units": table, "correlations": pd.DataFrame(corrs)}, claims)


def draw_f7(t: Tables, stem: Path) -> list[Path]:
    fig, axes = fig_axes(2)
    u = t["units"]
    corrs = t["correlations"].set_index(["net", "layer"])
    for ax, net in zip(axes, ("mlp", "convnet"), strict=True):
        sub = u[(u.net == net) & np.isfinite(u.selectivity)]
        pooled = corrs.loc[(net, "all"), "pearson_r"]
        for k, (layer, g) in enumerate(sub.groupby("layer", sort=False)):
            r = corrs.loc[(net, layer), "pearson_r"]
            ax.scatter(
                g.selectivity,
                g.delta_loss,
                s=9,
                alpha=0.6,
                lw=0,
                color=f"C{k}",
                label=f"{layer} (r={r:+.2f})",
            )
        ax.axhline(0, color="0.5", lw=0.8, zorder=0)
        ax.set(
            xlabel="Class selectivity index",
            ylabel="Δ test loss when deleted alone (nats)",
            title=f"{'MLP' if net == 'mlp' else 'Convnet (BN)'}: pooled r = {pooled:+.3f}",
        )
        ax.legend(fontsize=7, frameon=False, markerscale=2)
    return save(fig, stem)


F7 = Figure(
    "F7", "Selectivity vs importance", "Morcos et al. 2018, Fig. 7", f7_jobs, f7_analyse, draw=draw_f7
)
