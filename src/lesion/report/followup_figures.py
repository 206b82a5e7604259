"""Figures of the training-set-size study and of the recovery and class-unit follow-ups."""

from __future__ import annotations

from pathlib import Path

from lesion.report.figures import ACC, Tables, _chance, _fig, _ramp, _save, band


def draw_size(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = _fig(2)
    cur = t["curves"]
    sizes = sorted(cur.train_size.unique())
    for n, col in zip(sizes, _ramp(len(sizes)), strict=True):
        for c, ls, what in ((0.0, "-", "clean"), (1.0, "--", "100% shuffled")):
            sub = cur[(cur.train_size == n) & (cur.corrupt == c)]
            band(ax, sub, "fraction", "accuracy", color=col, ls=ls, label=f"{n:,} images, {what}")
    ax.axvline(400 / 1024, color="0.4", lw=0.8, ls=":")
    _chance(ax)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="Fraction of hidden units ablated (dotted: 400 of 1,024)",
        ylabel=ACC + ", trained labels",
        title="Cumulative ablation by training-set size",
    )
    ax.legend(fontsize=7, frameon=False)
    at = t["at_39pct"]
    for c, col, what in ((0.0, "C0", "clean labels"), (1.0, "C3", "100% shuffled")):
        per_net = at[at.corrupt == c].groupby(["train_size", "seed"])["accuracy"].mean().reset_index()
        m = per_net.groupby("train_size")["accuracy"].mean()
        ax2.plot(m.index, m.to_numpy(), "o-", color=col, label=what)
        ax2.scatter(per_net.train_size, per_net.accuracy, color=col, s=12, alpha=0.6)
    if "nets" in t:
        short = t["nets"][~t["nets"].memorised]
        acc = at.groupby(["train_size", "corrupt", "seed"])["accuracy"].mean()
        if len(short):
            ys = [acc[(r.train_size, r.corrupt, r.seed)] for r in short.itertuples()]
            ax2.scatter(
                short.train_size,
                ys,
                marker="x",
                color="black",
                s=60,
                zorder=4,
                label="did not reach the training-accuracy target",
            )
    ax2.set(
        xscale="log",
        ylim=(0, 1.02),
        xlabel="Training images (log axis)",
        ylabel="Accuracy at 39% of units deleted",
        title="Reliance on single directions vs data size",
    )
    ax2.legend(fontsize=8, frameon=False)
    return _save(fig, stem)


def draw_meyes(t: Tables, stem: Path) -> list[Path]:
    fig, (ax,) = _fig(1, 7.0)
    r = t["recovery"]
    band(ax, r, "fraction", "before", color="C3", marker="o", label="right after deletion")
    band(ax, r, "fraction", "after", color="C0", marker="o", label="after retraining the rest")
    ax.axhline(r["intact"].iloc[0], color="0.3", lw=1, ls="--", label="intact")
    _chance(ax)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="Fraction of hidden units deleted (random groups)",
        ylabel="Test accuracy",
        title="Recovery by retraining, deleted units held at 0",
    )
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, stem)


def draw_bau(t: Tables, stem: Path) -> list[Path]:
    fig, axes = _fig(2)
    t = t["class_units"]
    for ax, test, title in zip(
        axes,
        ("necessity", "sufficiency"),
        ("Delete a class's top k units", "Keep only a class's top k units"),
        strict=True,
    ):
        for order, col in (("top", "C3"), ("random", "0.5")):
            sub = t[(t.test == test) & (t.order == order)]
            band(ax, sub, "k", "relative", color=col, marker="o", label=f"{order} k: that class")
            if test == "sufficiency":
                m = sub.groupby("k")["other_accuracy"].mean()
                ax.plot(
                    m.index, m.to_numpy(), ls=":", color=col, label=f"{order} k: other classes (accuracy)"
                )
        ax.set(
            xscale="log",
            ylim=(0, 1.1),
            xlabel="k units (log axis)",
            title=title,
            ylabel="Class accuracy / intact (mean ± SD over classes)",
        )
        ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
        ax.legend(fontsize=8, frameon=False)
    return _save(fig, stem)
