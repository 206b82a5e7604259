"""Figures of the T1 (a ViT's neurons and heads vs label corruption) and T2 (grokking) studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesion.report.figures import ACC, Tables, _chance, _fig, _ramp, _save, band

WHAT = {"neurons": "MLP neurons", "heads": "attention heads"}


def draw_t1(t: Tables, stem: Path) -> list[Path]:
    fig, axes = _fig(3, 5.0)
    cur = t["curves"]
    levels = sorted(cur.corrupt.unique())
    for ax, (units, what) in zip(axes[:2], WHAT.items(), strict=True):
        sub = cur[cur.units == units]
        n = int(sub.n_ablated.max())
        for c, col in zip(levels, _ramp(len(levels)), strict=True):
            band(ax, sub[sub.corrupt == c], "fraction", "accuracy", color=col, marker="o" if n < 20 else None,
                 label=f"{c:.0%} labels shuffled")  # fmt: skip
        _chance(ax)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"Fraction of the {n} {what} deleted (random order)",
               ylabel=ACC + ", trained labels", title=f"ViT: deleting {what}")  # fmt: skip
        ax.legend(fontsize=7, frameon=False)
    ax = axes[2]
    per_net = t["auc"].groupby(["units", "corrupt", "seed"], as_index=False)["auc"].mean()
    for (units, what), col, dx in zip(WHAT.items(), ("C0", "C3"), (-0.015, 0.015), strict=True):
        sub = per_net[per_net.units == units]
        m = sub.groupby("corrupt")["auc"].mean()
        ax.plot(m.index, m.to_numpy(), "o-", color=col, label=what)
        ax.scatter(sub.corrupt + dx, sub.auc, color=col, s=14, alpha=0.5)
    ax.set(xlim=(-0.05, 1.05), ylim=(0, 1.02), xlabel="Fraction of training labels shuffled",
           ylabel="AUC of the deletion curve (dots: networks)", title="Robustness vs corruption")  # fmt: skip
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, stem)


def draw_t2(t: Tables, stem: Path) -> list[Path]:
    fig, axes = _fig(2, 6.5)
    ax = axes[0]
    hist, auc, ev = t["history"], t["auc"], t["events"]
    band(ax, hist, "step", "train_accuracy", color="0.35", ls="--", label="train accuracy")
    band(ax, hist, "step", "test_accuracy", color="C2", label="test accuracy")
    per_run = auc.groupby(["units", "seed", "step"], as_index=False)["relative_auc"].mean()
    for (units, what), col in zip(WHAT.items(), ("C0", "C3"), strict=True):
        band(ax, per_run[per_run.units == units].dropna(), "step", "relative_auc", color=col, marker="o",
             label=f"deletion AUC / intact, {what} (train acc. >= 0.5)")  # fmt: skip
    for v in ev.test_jump_step.dropna():
        ax.axvline(v, color="C2", lw=0.8, ls=":")
    for v in ev.memorised_step.dropna():
        ax.axvline(v, color="0.35", lw=0.8, ls=":")
    ax.set(
        ylim=(0, 1.4),
        yticks=np.linspace(0, 1, 6),
        xlabel="Training step (full batch); dotted: memorised (grey), test jump (green)",
        ylabel="Accuracy / relative AUC",
        title="Grokking a+b mod p: accuracy and deletion robustness",
    )
    ax.legend(fontsize=7, frameon=False, loc="upper center", ncol=2)
    ax = axes[1]
    cur = t["curves"]
    cur = cur[(cur.units == "neurons") & (cur.seed == cur.seed.min())]
    steps = np.sort(cur.step.unique())
    e = ev[ev.seed == ev.seed.min()].iloc[0]
    marks = [steps[0], e.memorised_step, e.test_jump_step, steps[-1]]
    shown = list(dict.fromkeys(int(steps[np.argmin(np.abs(steps - m))]) for m in marks if np.isfinite(m)))
    for s, col in zip(shown, _ramp(len(shown)), strict=True):
        band(ax, cur[cur.step == s], "fraction", "accuracy", color=col, label=f"step {s}")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="Fraction of MLP neurons deleted (random order)",
        ylabel=ACC + ", training pairs",
        title=f"Deletion curves at checkpoints (seed {int(e.seed)})",
    )
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, stem)
