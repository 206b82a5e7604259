"""Figures 1-4: robustness to deletion against memorisation, generalisation and training time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lesion.analyses.paper import DEFAULT_SCALES
from lesion.experiments.claims import bootstrap, correlation_check, make_check
from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    accuracy_at,
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
    spearman,
    train,
)
from lesion.experiments.profiles import Profile


def _corruption_nets(p: Profile) -> dict[tuple[float, int], Job]:
    return {(c, s): train(p, corrupt=c, seed=s) for c in p.corruptions for s in p.seeds}


def _name(c: float, s: int) -> str:
    return f"corrupt{c:g}/seed{s}"


# ---- F1: cumulative ablation against label corruption


def f1_jobs(p: Profile) -> dict[str, Job]:
    return {_name(c, s): curves(p, net) for (c, s), net in _corruption_nets(p).items()}


def f1_analyse(p: Profile, out: Outputs) -> Outcome:
    cols = {_name(c, s): {"corrupt": c, "seed": s} for c in p.corruptions for s in p.seeds}
    table = gather(out, cols, "curves.parquet")
    per_curve = aucs(table, ["corrupt", "seed", "repeat"])
    per_net = per_curve.groupby(["corrupt", "seed"], as_index=False)["auc"].mean()
    stat = corr(per_net["corrupt"], per_net["auc"])
    by_c = per_net.groupby("corrupt")["auc"].mean()
    lo, hi = by_c.index.min(), by_c.index.max()
    at = accuracy_at(table, 0.39, ["corrupt"])  # the paper reads its MNIST curves at 400 of 1024 units
    checks = corruption_checks(by_net(per_curve, "corrupt", ["seed"], "auc"), "AUC")
    measured = (
        f"AUC {fmt(by_c[lo])} at {lo:.0%} corrupted vs {fmt(by_c[hi])} at {hi:.0%} (difference "
        f"{interval(checks[1])}); Spearman rho (corruption, AUC) = {interval(checks[0])} over {stat['n']} "
        "nets; accuracy at 39% ablated: " + ", ".join(f"{fmt(v, 2)} ({c:.0%})" for c, v in at.items())
    )
    c = claim(
        "F1",
        "More corrupted labels, so more memorisation: accuracy falls sooner under cumulative "
        "ablation (criterion: Spearman rho of corruption vs AUC < -0.8 and AUC(0%) > AUC(100%))",
        "MNIST 2x512, at 400 of 1024 units ablated: accuracy ~0.97 (0% corrupted), ~0.70 (20%), ~0.30 (100%)",
        measured,
        {
            "spearman_rho": stat["spearman_rho"],
            "spearman_p": stat["spearman_p"],
            "n": stat["n"],
            "auc_clean": by_c[lo],
            "auc_corrupted": by_c[hi],
            "auc_by_corruption": {f"{k:g}": v for k, v in by_c.items()},
        },
        checks,
    )
    return Outcome({"curves": table, "auc": per_curve}, [c])


F1 = Figure(
    "F1", "Cumulative ablation vs label corruption", "Morcos et al. 2018, Fig. 1", f1_jobs, f1_analyse
)


def corruption_checks(groups: dict, what: str) -> list:
    """Spearman rho (corruption, per-net ``what``) <= -0.8 and clean minus fully corrupted > 0, each with
    a bootstrap interval over networks (within each corruption level) and their repeats."""
    levels = sorted(groups)
    lo, hi = levels[0], levels[-1]
    n = sum(len(v) for v in groups.values())

    def rho(m) -> float:
        return spearman(
            np.concatenate([[c] * len(m[c]) for c in levels]), np.concatenate([m[c] for c in levels])
        )

    est, ci = bootstrap(groups, rho)
    a = make_check(
        f"Spearman rho (corruption, {what})", est, ci, criterion=-0.8, direction="<", n=n, unit="networks"
    )
    est, ci = bootstrap({lo: groups[lo], hi: groups[hi]}, lambda m: m[lo].mean() - m[hi].mean())
    b = make_check(
        f"{what} at {lo:.0%} minus at {hi:.0%} corrupted",
        est,
        ci,
        criterion=0.0,
        direction=">",
        n=len(groups[lo]) + len(groups[hi]),
        unit="networks",
    )
    return [a, b]


# ---- F2: per-unit noise against label corruption

F2_SIZES = {"repeats": 2, "scales": 11}  # noise draws per scale; scales log-spaced 10^-1.5 .. 10^1


def f2_jobs(p: Profile) -> dict[str, Job]:
    n = F2.size(p, "scales")
    scales = list(np.logspace(-1.5, 1, n)) if n != len(DEFAULT_SCALES) else None
    params = {"repeats": F2.size(p, "repeats")} | ({"scales": scales} if scales else {})
    return {_name(c, s): Job("noise", params, {"model": net}) for (c, s), net in _corruption_nets(p).items()}


def f2_analyse(p: Profile, out: Outputs) -> Outcome:
    cols = {_name(c, s): {"corrupt": c, "seed": s} for c in p.corruptions for s in p.seeds}
    table = gather(out, cols, "noise.parquet")
    table["log10_scale"] = np.log10(table["scale"])
    span = table["log10_scale"].max() - table["log10_scale"].min()
    rob = (
        table.groupby(["corrupt", "seed", "repeat"])
        .apply(
            lambda g: (
                np.trapezoid(g.sort_values("scale")["accuracy"], g.sort_values("scale")["log10_scale"]) / span
            ),
            include_groups=False,
        )
        .rename("robustness")
        .reset_index()
    )
    per_net = rob.groupby(["corrupt", "seed"], as_index=False)["robustness"].mean()
    stat = corr(per_net["corrupt"], per_net["robustness"])
    scales = np.sort(table["scale"].unique())
    one = scales[np.argmin(np.abs(np.log10(scales)))]
    at1 = table[table["scale"] == one].groupby("corrupt")["accuracy"].mean()
    lo, hi = at1.index.min(), at1.index.max()
    checks = corruption_checks(by_net(rob, "corrupt", ["seed"], "robustness"), "noise robustness")
    measured = (
        f"accuracy at noise scale {one:.2g}: {fmt(at1[lo], 2)} ({lo:.0%} corrupted) vs {fmt(at1[hi], 2)} "
        f"({hi:.0%}); Spearman rho (corruption, mean accuracy over log scale) = "
        f"{interval(checks[0])} over {stat['n']} nets; robustness clean minus fully corrupted "
        f"{interval(checks[1])}"
    )
    c = claim(
        "F2",
        "Per-unit Gaussian noise tells the same story: memorising nets are less robust "
        "(criterion: Spearman rho of corruption vs robustness < -0.8 and clean more robust than fully "
        "corrupted)",
        "MNIST at noise scale 1.0: accuracy ~0.7 (0% corrupted) vs ~0.35 (100%)",
        measured,
        {
            "spearman_rho": stat["spearman_rho"],
            "spearman_p": stat["spearman_p"],
            "n": stat["n"],
            "scale": one,
            "accuracy_clean": at1[lo],
            "accuracy_corrupted": at1[hi],
        },
        checks,
    )
    return Outcome({"noise": table.drop(columns="log10_scale"), "robustness": rob}, [c])


F2 = Figure("F2", "Per-unit noise vs label corruption", "Morcos et al. 2018, Fig. 2", f2_jobs, f2_analyse,
            sizes=F2_SIZES)  # fmt: skip


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


F3 = Figure(
    "F3",
    "Best vs worst generalisers among clean-label networks",
    "Morcos et al. 2018, Fig. 3",
    f3_jobs,
    f3_analyse,
    sizes=F3_SIZES,
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


F4C = Figure(
    "F4c",
    "Hyperparameter sweep: AUC vs test accuracy",
    "Morcos et al. 2018, Fig. 4c",
    f4c_jobs,
    f4c_analyse,
    sizes=F4C_SIZES,
)
