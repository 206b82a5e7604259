"""Figures 3 and 4c: robustness to deletion against generalisation, among clean-label networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lesion.experiments.claims import bootstrap, correlation_check, make_check
from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    aucs,
    by_net,
    claim,
    corr,
    curves,
    final_metrics,
    fmt,
    gather,
    interval,
    pval,
    read,
    train,
)
from lesion.experiments.figures.plot import (
    Tables,
    band,
    chance_line,
    curve_axes,
    fig_axes,
    ramp,
    save,
)
from lesion.experiments.profiles import Profile

# ---- F3: an ensemble of clean-label networks, best vs worst generalisers

# networks differing only in seed (100, 101, ...), trained for ``epochs``; the best and worst ``extremes``
# generalisers are compared
F3_SIZES = {"ensemble": 12, "extremes": 3, "epochs": 10}


def _ensemble(p: Profile) -> dict[int, Job]:
    epochs = F3.size(p, "epochs")
    return {
        s: train(p, p.sweep_widths, seed=100 + s, until=False, epochs=epochs, subset=True)
        for s in range(F3.size(p, "ensemble"))
    }


def f3_jobs(p: Profile) -> dict[str, Job]:
    return {f"net{s}": curves(p, net) for s, net in _ensemble(p).items()} | {
        f"train/net{s}": net for s, net in _ensemble(p).items()
    }


def f3_analyse(p: Profile, out: Outputs) -> Outcome:
    ensemble = range(F3.size(p, "ensemble"))
    table = gather(out, {f"net{s}": {"net": s} for s in ensemble}, "curves.parquet")
    nets = pd.DataFrame([{"net": s, **final_metrics(out, f"train/net{s}")} for s in ensemble])
    nets = nets.merge(aucs(table, ["net", "repeat"]).groupby("net", as_index=False)["auc"].mean(), on="net")
    nets = nets.sort_values("test_accuracy", ascending=False, ignore_index=True)
    k = F3.size(p, "extremes")
    nets["group"] = ["best"] * k + ["middle"] * (len(nets) - 2 * k) + ["worst"] * k
    best, worst = nets[nets.group == "best"], nets[nets.group == "worst"]
    stat = corr(nets["test_accuracy"], nets["auc"])
    per_curve = aucs(table, ["net", "repeat"])
    groups = by_net(per_curve, None, ["net"], "auc")
    accuracy = nets.set_index("net").test_accuracy.sort_index().to_numpy()

    def gap(m, acc) -> float:
        ranked = m["all"][np.argsort(-acc["all"], kind="stable")]
        return ranked[:k].mean() - ranked[-k:].mean()

    est, ci = bootstrap(groups, gap, attrs={"all": accuracy})
    check = make_check(
        f"mean AUC of the best {k} minus the worst {k}",
        est,
        ci,
        criterion=0.0,
        direction=">",
        n=len(nets),
        unit="networks",
    )
    measured = (
        f"best {k} (test error {fmt(1 - best.test_accuracy.mean())}): AUC {fmt(best.auc.mean())}; worst "
        f"{k} (test error {fmt(1 - worst.test_accuracy.mean())}): AUC {fmt(worst.auc.mean())}; difference "
        f"{interval(check)}; Pearson r "
        f"(test accuracy, AUC) over {len(nets)} nets = {fmt(stat['pearson_r'], 2)} "
        f"(p = {pval(stat['pearson_p'])})"
    )
    c = claim(
        "F3",
        f"Among clean-label networks differing only in seed, the {k} worst generalisers are less "
        f"robust to ablation than the {k} best (criterion: mean AUC best > worst)",
        "200 CIFAR-10 nets: best 5 (test error 0.14) fall to 0.5 accuracy at ~1550 maps ablated, worst 5 "
        "(error 0.35) at ~450",
        measured,
        {
            "auc_best": best.auc.mean(),
            "auc_worst": worst.auc.mean(),
            "test_error_best": 1 - best.test_accuracy.mean(),
            "test_error_worst": 1 - worst.test_accuracy.mean(),
            "pearson_r": stat["pearson_r"],
            "pearson_p": stat["pearson_p"],
            "n": len(nets),
        },
        [check],
    )
    return Outcome({"curves": table.merge(nets[["net", "group"]], on="net"), "nets": nets}, [c])


def draw_f3(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = fig_axes(2)
    nets, cur = t["nets"], t["curves"]
    for group, col in (("best", "C0"), ("worst", "C3")):
        sub = nets[nets.group == group]
        band(
            ax,
            cur[cur.group == group],
            "fraction",
            "accuracy",
            color=col,
            label=f"{group} {len(sub)} (test error {1 - sub.test_accuracy.mean():.3f})",
        )
    chance_line(ax)
    curve_axes(ax, "Best vs worst generalisers (mean ± SD over nets and orders)")
    ax.legend(fontsize=8, frameon=False)
    for group, col in (("best", "C0"), ("middle", "0.6"), ("worst", "C3")):
        sub = nets[nets.group == group]
        ax2.scatter(sub.test_accuracy, sub.auc, color=col, s=24, label=f"{group} ({len(sub)})")
    ax2.legend(fontsize=8, frameon=False)
    ax2.set(xlabel="Test accuracy", ylabel="Area under the ablation curve", title="Each network")
    return save(fig, stem)


F3 = Figure(
    "F3",
    "Best vs worst generalisers among clean-label networks",
    "Morcos et al. 2018, Fig. 3",
    f3_jobs,
    f3_analyse,
    sizes=F3_SIZES,
    draw=draw_f3,
)


# ---- F4c: a hyperparameter sweep, AUC against test accuracy

# every learning rate x batch size x seed, each net trained for ``epochs``
F4C_SIZES = {"lrs": (1e-4, 3e-4, 1e-3, 3e-3), "batch_sizes": (32, 512), "seeds": (0, 1), "epochs": 8}


def _sweep(p: Profile) -> dict[str, Job]:
    z = F4C.sizes_in(p)
    return {
        f"lr{lr:g}/bs{bs}/seed{s}": train(
            p, p.sweep_widths, seed=s, until=False, epochs=z["epochs"], lr=lr, batch_size=bs, subset=True
        )
        for lr in z["lrs"]
        for bs in z["batch_sizes"]
        for s in z["seeds"]
    }


def f4c_jobs(p: Profile) -> dict[str, Job]:
    nets = _sweep(p)
    return {f"curves/{n}": curves(p, net) for n, net in nets.items()} | {
        f"train/{n}": j for n, j in nets.items()
    }


def f4c_analyse(p: Profile, out: Outputs) -> Outcome:
    z, rows = F4C.sizes_in(p), []
    for name, job in _sweep(p).items():
        opts = job.params["train"]
        a = aucs(read(out, f"curves/{name}", "curves.parquet"), ["repeat"])["auc"]
        rows.append(
            {
                "lr": opts["lr"],
                "batch_size": opts["batch_size"],
                "seed": job.params["seed"],
                "auc": a.mean(),
                **final_metrics(out, f"train/{name}"),
            }
        )
    nets = pd.DataFrame(rows)
    stat = corr(nets["auc"], nets["test_accuracy"])
    c = claim(
        "F4c",
        "Across hyperparameter settings, ablation AUC predicts test accuracy (criterion: Pearson r > 0: "
        "its 95% interval above 0)",
        "96 CIFAR-10 settings x 2 seeds: r = 0.914",
        f"Pearson r (AUC, test accuracy) over {stat['n']} nets ({len(z['lrs'])} learning rates x "
        f"{len(z['batch_sizes'])} batch sizes x {len(z['seeds'])} seeds) = {fmt(stat['pearson_r'], 3)} "
        f"(p = {pval(stat['pearson_p'])}); Spearman rho = {fmt(stat['spearman_rho'], 2)}",
        {k: stat[k] for k in ("pearson_r", "pearson_p", "spearman_rho", "spearman_p", "n")},
        [
            correlation_check(
                "Pearson r (AUC, test accuracy)",
                stat["pearson_r"],
                stat["n"],
                criterion=0.0,
                direction=">",
                unit="networks",
            )
        ],
    )
    return Outcome({"nets": nets}, [c])


def draw_f4c(t: Tables, stem: Path) -> list[Path]:
    fig, (ax,) = fig_axes(1, 7.0)
    nets = t["nets"]
    markers = dict(zip(sorted(nets.batch_size.unique()), "os^Dv", strict=False))
    lrs = sorted(nets.lr.unique())
    for lr, col in zip(lrs, ramp(len(lrs)), strict=True):
        for bs, mk in markers.items():
            sub = nets[(nets.lr == lr) & (nets.batch_size == bs)]
            ax.scatter(sub.auc, sub.test_accuracy, color=col, marker=mk, s=30, label=f"lr {lr:g}, batch {bs}")
    ax.set(
        xlabel="Area under the ablation curve",
        ylabel="Test accuracy",
        title="Hyperparameter sweep: robustness vs generalisation",
    )
    ax.legend(fontsize=7, frameon=False, ncols=2)
    return save(fig, stem)


F4C = Figure(
    "F4c",
    "Hyperparameter sweep: AUC vs test accuracy",
    "Morcos et al. 2018, Fig. 4c",
    f4c_jobs,
    f4c_analyse,
    sizes=F4C_SIZES,
    draw=draw_f4c,
)
