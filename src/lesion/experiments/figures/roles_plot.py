"""The figure of the ROLES study: the roles of every unit against label corruption, the simulation score
against importance, and the necessity test of the convnet's named units."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesion.experiments.figures.plot import Tables, save
from lesion.roles.rules import RULES


def draw_roles(t: Tables, stem: Path) -> list[Path]:
    from matplotlib.figure import Figure  # matplotlib loads when a study draws

    fig = Figure(figsize=(13.0, 9.2), layout="constrained")
    axes = [fig.add_subplot(2, 2, i + 1) for i in range(4)]
    for ax in axes:
        ax.grid(True, color="0.9", lw=0.8)
        ax.set_axisbelow(True)
    _role_bars(axes[0], t["roles"])
    _shares(axes[1], t["networks"])
    _simulation(axes[2], t["units"])
    _necessity(axes[3], t["necessity"])
    return save(fig, stem)


def _role_bars(ax, roles) -> None:
    """Share of units by role (mean over seeds), one stacked bar per corruption level of the MLPs."""
    mlp = roles[roles.net == "mlp"]
    levels = sorted(mlp.corrupt.unique())
    names = [r.name for r in RULES if r.name in set(mlp.role_rule)]
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    colors = {r.name: cmap(i % 20) for i, r in enumerate(RULES)}
    nets = mlp.groupby("corrupt")["seed"].nunique()
    bottom = np.zeros(len(levels))
    x = np.arange(len(levels))
    for name in names:
        share = np.array([mlp[(mlp.corrupt == c) & (mlp.role_rule == name)]["share"].sum() / nets[c]
                          for c in levels])  # fmt: skip
        ax.bar(x, share, bottom=bottom, color=colors[name], label=name, width=0.7)
        bottom += share
    ax.set_xticks(x, [f"{c:.0%}" for c in levels])
    ax.set(ylim=(0, 1), xlabel="Fraction of training labels shuffled (MLPs of Figure 1)",
           ylabel="Share of units (mean over seeds)",
           title="Each unit's role (the card's rule), on the labels it was trained on")  # fmt: skip
    ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4)


def _shares(ax, nets) -> None:
    mlp = nets[nets.net == "mlp"]
    kinds = (("no_role", "no measurable role", "C0"), ("memorisation", "memorisation units", "C3"))
    for col, what, color in kinds:
        sub = mlp[np.isfinite(mlp[col].astype(float))]
        if col == "memorisation":  # the claim reads 0 < corruption < 1 only; 100% drawn hollow
            inner = sub[(sub.corrupt > 0) & (sub.corrupt < 1)]
            edge = sub[sub.corrupt >= 1]
            ax.scatter(edge.corrupt, edge[col], facecolors="none", edgecolors=color, s=30, zorder=3,
                       label="memorisation at 100% (not in the claim)")  # fmt: skip
            sub = inner
        m = sub.groupby("corrupt")[col].mean()
        ax.plot(m.index, m.to_numpy(), "-", color=color, lw=1.5, label=f"{what} (mean over seeds)")
        ax.scatter(sub.corrupt, sub[col], color=color, s=16, zorder=3)
    ax.set(xlim=(-0.05, 1.05), ylim=(0, 1.02), xlabel="Fraction of training labels shuffled",
           ylabel="Share of the network's units",
           title="No measurable role vs memorisation units")  # fmt: skip
    ax.legend(fontsize=8, frameon=False)


def _simulation(ax, units) -> None:
    parts = (
        ("clean MLPs (training images)", units[(units.net == "mlp") & (units.corrupt == 0.0)], "C0"),
        ("convnet (held-out images)", units[units.net == "convnet"], "C1"),
    )
    for label, sub, color in parts:
        ok = np.isfinite(sub.simulation.astype(float)) & np.isfinite(sub.loss_zero.astype(float))
        sub = sub[ok]
        r = np.corrcoef(sub.simulation, sub.loss_zero)[0, 1] if len(sub) > 2 else np.nan
        ax.scatter(sub.simulation, sub.loss_zero, s=7, alpha=0.5, color=color,
                   label=f"{label}: r = {r:.2f}, {len(sub)} units")  # fmt: skip
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set(xlabel="Simulation score of the unit's explanation (r, held-out half)",
           ylabel="Loss change when deleted (nats, symlog)",
           title="Does a good explanation mark an important unit?")  # fmt: skip
    ax.legend(fontsize=8, frameon=False)


def _necessity(ax, sets) -> None:
    s = sets[np.isfinite(sets["difference"].astype(float))].sort_values("difference").reset_index(drop=True)
    if not len(s):
        ax.text(0.5, 0.5, "no unit of the convnet names a class (selectivity >= 0.5)", ha="center",
                transform=ax.transAxes)  # fmt: skip
    colors = ["C3" if d > 0 else "0.6" for d in s.detectors]
    y = s["difference"].to_numpy()
    err = np.vstack([y - s["lo"].to_numpy(), s["hi"].to_numpy() - y])
    ax.bar(np.arange(len(s)), y, color=colors, width=0.7)
    ax.errorbar(np.arange(len(s)), y, yerr=np.nan_to_num(err), fmt="none", ecolor="0.2", lw=0.8, capsize=2)
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(np.arange(len(s)), [f"{r.layer}:{r['class']}" for _, r in s.iterrows()], rotation=90,
                  fontsize=7)  # fmt: skip
    from matplotlib.patches import Patch

    kinds = [Patch(color="C3", label="the set holds a class detector (the claim)"),
             Patch(color="0.6", label="named units, no detector")]  # fmt: skip
    ax.set(xlabel="Convnet layer : class named by the units' explanations",
           ylabel="Class loss change, named minus random (nats)",
           title="Necessity test, named units vs as many random ones")  # fmt: skip
    ax.legend(handles=kinds, fontsize=8, frameon=False)
