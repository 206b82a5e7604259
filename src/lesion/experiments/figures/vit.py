"""Beyond the paper, T1: does generalisation predict robustness in a ViT?

Small ViT-style classifiers trained on clean, half and fully shuffled labels; cumulative deletion curves
(random orders) of the MLP neurons and, separately, of the attention heads; AUC against the corruption
fraction (the paper's F1 claim, per unit kind).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    aucs,
    by_net,
    claim,
    curves,
    final_metrics,
    fmt,
    gather,
    interval,
    train,
)
from lesion.experiments.figures.corruption import corruption_checks
from lesion.experiments.figures.plot import (
    ACC,
    Tables,
    band,
    chance_line,
    fig_axes,
    ramp,
    save,
)
from lesion.experiments.profiles import Profile

KINDS = {"neurons": "MLP neurons", "heads": "attention heads"}

# ---- T1: a ViT's neurons and heads against label corruption

T1_SIZES = {
    "dataset": "digits",
    "vit": {"patch": 2, "d_model": 32, "n_layer": 2, "n_head": 4},
    "corruptions": (0.0, 0.5, 1.0),
    "seeds": (0, 1),
    "train_size": 720,  # training images (None: all); memorising shuffled labels is the cost
    "lr": 3e-3,
    "until": 0.95,  # train accuracy target, corrupted labels too (at most max_epochs)
    "max_epochs": 80,
    "repeats": 4,  # random deletion orders per network and unit kind
    "fractions": 11,  # points per neuron curve (head curves: every head count)
}


def _t1_net(p: Profile, c: float, s: int) -> Job:
    z = T1.sizes_in(p)
    return train(
        p,
        arch={"kind": "vit", **z["vit"]},
        dataset=z["dataset"],
        corrupt=c,
        seed=s,
        train_size=z["train_size"],
        lr=z["lr"],
        until_train_acc=z["until"],
        max_epochs=z["max_epochs"],
    )


def _layers(p: Profile, units: str) -> list[str]:
    site = "mlp.act" if units == "neurons" else "attn"
    return [f"h.{i}.{site}" for i in range(int(T1.size(p, "vit")["n_layer"]))]


def t1_jobs(p: Profile) -> dict[str, Job]:
    z, jobs = T1.sizes_in(p), {}
    for c in z["corruptions"]:
        for s in z["seeds"]:
            net = _t1_net(p, c, s)
            jobs[f"vit_c{c:g}_s{s}"] = net
            for units in KINDS:
                frac = z["fractions"] if units == "neurons" else None  # heads: every head count
                jobs[f"{units}_c{c:g}_s{s}"] = curves(
                    p, net, repeats=z["repeats"], fractions=frac, candidates=_layers(p, units)
                )
    return jobs


def t1_analyse(p: Profile, out: Outputs) -> Outcome:
    z, frames, nets = T1.sizes_in(p), [], []
    for c in z["corruptions"]:
        for s in z["seeds"]:
            nets.append({"corrupt": c, "seed": s, **final_metrics(out, f"vit_c{c:g}_s{s}")})
            for units in KINDS:
                frames.append(gather(out, {f"{units}_c{c:g}_s{s}": {"units": units, "corrupt": c, "seed": s}},
                                     "curves.parquet"))  # fmt: skip
    table = pd.concat(frames, ignore_index=True)
    nets = pd.DataFrame(nets)
    nets["memorised"] = nets["train_accuracy"] >= z["until"]
    per_curve = aucs(table, ["units", "corrupt", "seed", "repeat"])
    claims = []
    for units, what in KINDS.items():
        sub = per_curve[per_curve.units == units]
        checks = corruption_checks(by_net(sub, "corrupt", ["seed"], "auc"), f"AUC ({what})")
        by_c = sub.groupby(["corrupt", "seed"])["auc"].mean().groupby("corrupt").mean()
        n_units = int(table[table.units == units]["n_ablated"].max())
        measured = (
            f"{len(z['seeds'])} ViT(s) per corruption level, {n_units} {what} deleted in random order "
            f"({z['repeats']} orders each); AUC by corruption: "
            + ", ".join(f"{fmt(v)} ({c:.0%})" for c, v in by_c.items())
            + f"; clean minus fully shuffled {interval(checks[1])}; Spearman rho (corruption, AUC) "
            f"{interval(checks[0])}; train accuracy reached: "
            + ", ".join(
                f"{fmt(r.train_accuracy, 2)} ({r.corrupt:.0%}, seed {r.seed})" for r in nets.itertuples()
            )
            + f"; test accuracy (clean labels): {fmt(nets[nets.corrupt == 0].test_accuracy.mean(), 2)}"
        )
        claims.append(
            claim(
                f"T1-{units}",
                f"In a ViT, networks trained on more corrupted labels depend more on single {what}: "
                "accuracy falls sooner under cumulative deletion (criterion as F1: Spearman rho of "
                "corruption vs AUC < -0.8 and AUC(0%) > AUC(100%))",
                "Morcos et al. 2018 (Fig. 1, MLPs and convnets): memorising networks depend more on single "
                "directions; not measured on transformers",
                measured,
                {
                    "auc_by_corruption": {f"{k:g}": v for k, v in by_c.items()},
                    "units": n_units,
                    "nets_memorised": int(nets.memorised.sum()),
                    "nets": len(nets),
                },
                checks,
            )
        )
    return Outcome({"curves": table, "auc": per_curve, "nets": nets}, claims)


def draw_t1(t: Tables, stem: Path) -> list[Path]:
    fig, axes = fig_axes(3, 5.0)
    cur = t["curves"]
    levels = sorted(cur.corrupt.unique())
    for ax, (units, what) in zip(axes[:2], KINDS.items(), strict=True):
        sub = cur[cur.units == units]
        n = int(sub.n_ablated.max())
        for c, col in zip(levels, ramp(len(levels)), strict=True):
            band(ax, sub[sub.corrupt == c], "fraction", "accuracy", color=col, marker="o" if n < 20 else None,
                 label=f"{c:.0%} labels shuffled")  # fmt: skip
        chance_line(ax)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"Fraction of the {n} {what} deleted (random order)",
               ylabel=ACC + ", trained labels", title=f"ViT: deleting {what}")  # fmt: skip
        ax.legend(fontsize=7, frameon=False)
    ax = axes[2]
    per_net = t["auc"].groupby(["units", "corrupt", "seed"], as_index=False)["auc"].mean()
    for (units, what), col, dx in zip(KINDS.items(), ("C0", "C3"), (-0.015, 0.015), strict=True):
        sub = per_net[per_net.units == units]
        m = sub.groupby("corrupt")["auc"].mean()
        ax.plot(m.index, m.to_numpy(), "o-", color=col, label=what)
        ax.scatter(sub.corrupt + dx, sub.auc, color=col, s=14, alpha=0.5)
    ax.set(xlim=(-0.05, 1.05), ylim=(0, 1.02), xlabel="Fraction of training labels shuffled",
           ylabel="AUC of the deletion curve (dots: networks)", title="Robustness vs corruption")  # fmt: skip
    ax.legend(fontsize=8, frameon=False)
    return save(fig, stem)


T1 = Figure(
    "T1",
    "A ViT's MLP neurons and heads vs label corruption",
    "beyond the paper: Morcos et al. 2018 Fig. 1 asked of a ViT",
    t1_jobs,
    t1_analyse,
    sizes=T1_SIZES,
    draw=draw_t1,
)
