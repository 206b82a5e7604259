"""The figures of ``lesion reproduce``: one function per figure id, drawing its tables to PNG and SVG.

Curves over repeats are drawn as mean lines with ± SD bands; every axis says what it measures and in
which unit. Built with matplotlib's object API, so no global pyplot state is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

Tables = dict[str, pd.DataFrame]
ACC = "Accuracy (fraction correct)"
FRAC = "Fraction of candidate units ablated"


def _fig(ncols: int = 1, width: float = 6.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, 4.4), layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, color="0.9", lw=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def _save(fig: Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    fig.savefig(png, dpi=110)
    fig.savefig(svg)
    return [png, svg]


def band(
    ax, df: pd.DataFrame, x: str, y: str, *, label: str, color, ls: str = "-", marker: str | None = None
):
    """Mean of ``y`` over rows sharing ``x`` (repeats, seeds), with a ± SD band."""
    g = df.groupby(x)[y]
    mean, sd = g.mean(), g.std(ddof=1).fillna(0.0)
    ax.fill_between(mean.index, mean - sd, mean + sd, color=color, alpha=0.18, lw=0)
    ax.plot(mean.index, mean.to_numpy(), ls=ls, marker=marker, ms=3, color=color, lw=1.8, label=label)


def _chance(ax, level: float = 0.1) -> None:
    ax.axhline(level, color="0.55", lw=0.8, ls=":", zorder=0, label="chance")


def _curve_axes(ax, title: str) -> None:
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=FRAC, ylabel=ACC, title=title)


def _ramp(n: int):
    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]


def draw_f1(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = _fig(2)
    levels = sorted(t["curves"].corrupt.unique())
    for c, col in zip(levels, _ramp(len(levels)), strict=True):
        band(
            ax,
            t["curves"][t["curves"].corrupt == c],
            "fraction",
            "accuracy",
            label=f"{c:.0%} labels shuffled",
            color=col,
        )
    _chance(ax)
    _curve_axes(ax, "Cumulative ablation, random order (train accuracy on the trained labels)")
    ax.legend(fontsize=8, frameon=False)
    per_net = t["auc"].groupby(["corrupt", "seed"], as_index=False)["auc"].mean()
    m = per_net.groupby("corrupt")["auc"].mean()
    ax2.plot(m.index, m.to_numpy(), "-", color="C3", lw=1.5, label="mean over networks")
    ax2.scatter(
        per_net.corrupt, per_net.auc, color="0.15", s=16, zorder=3, label="one network (mean over orders)"
    )
    ax2.set(
        xlabel="Fraction of training labels shuffled",
        ylabel="Area under the ablation curve",
        ylim=(0, 1),
        title="Robustness to ablation falls with memorisation",
    )
    ax2.legend(fontsize=8, frameon=False)
    return _save(fig, stem)


def draw_f2(t: Tables, stem: Path) -> list[Path]:
    fig, (ax,) = _fig(1, 7.5)
    levels = sorted(t["noise"].corrupt.unique())
    for c, col in zip(levels, _ramp(len(levels)), strict=True):
        band(
            ax,
            t["noise"][t["noise"].corrupt == c],
            "scale",
            "accuracy",
            label=f"{c:.0%} shuffled",
            color=col,
            marker="o",
        )
    _chance(ax)
    ax.set_xscale("log")
    ax.set(
        ylim=(0, 1.02),
        xlabel="Noise scale (noise SD / unit's activity SD, log axis)",
        ylabel=ACC,
        title="Gaussian noise added to every unit at once",
    )
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, stem)


def draw_f3(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = _fig(2)
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
    _chance(ax)
    _curve_axes(ax, "Best vs worst generalisers (mean ± SD over nets and orders)")
    ax.legend(fontsize=8, frameon=False)
    for group, col in (("best", "C0"), ("middle", "0.6"), ("worst", "C3")):
        sub = nets[nets.group == group]
        ax2.scatter(sub.test_accuracy, sub.auc, color=col, s=24, label=f"{group} ({len(sub)})")
    ax2.legend(fontsize=8, frameon=False)
    ax2.set(xlabel="Test accuracy", ylabel="Area under the ablation curve", title="Each network")
    return _save(fig, stem)


def draw_f4a(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax3) = _fig(2)
    ax2 = ax.twinx()
    ep = t["checkpoints"]
    for k, (opt, sub) in enumerate(ep.groupby("optimizer", sort=True)):
        sub = sub.reset_index(drop=True)
        col, name = f"C{2 * k}", "Adam" if opt == "adam" else "SGD"
        top = sub.auc.max()
        ax.errorbar(
            sub.epoch,
            sub.auc_normalised,
            yerr=sub.auc_sd / top,
            fmt="o-",
            color=col,
            ms=4,
            capsize=2,
            label=f"{name}: ablation AUC / its max",
        )
        ax2.plot(sub.epoch, sub.test_loss, "s--", color=col, ms=3, alpha=0.7, label=f"{name}: test loss")
        ax.axvline(sub.epoch[sub.test_loss.idxmin()], color=col, lw=0.8, ls=":")
        ax3.scatter(sub.test_loss, sub.auc_normalised, color=col, s=26, label=name)
    ax.set(
        xscale="log",
        xlabel="Epoch (log axis; dotted: test-loss minimum)",
        ylabel="Ablation AUC, normalised by its maximum",
        title="Over training: AUC and test loss",
    )
    ax2.set_ylabel("Test loss (cross-entropy, nats), dashed")
    fig.legend(loc="outside lower center", ncols=4, frameon=False, fontsize=8)
    ax3.set(xlabel="Test loss (nats)", ylabel="Ablation AUC / its max", title="Checkpoints")
    return _save(fig, stem)


def draw_f4c(t: Tables, stem: Path) -> list[Path]:
    fig, (ax,) = _fig(1, 7.0)
    nets = t["nets"]
    markers = dict(zip(sorted(nets.batch_size.unique()), "os^Dv", strict=False))
    lrs = sorted(nets.lr.unique())
    for lr, col in zip(lrs, _ramp(len(lrs)), strict=True):
        for bs, mk in markers.items():
            sub = nets[(nets.lr == lr) & (nets.batch_size == bs)]
            ax.scatter(sub.auc, sub.test_accuracy, color=col, marker=mk, s=30, label=f"lr {lr:g}, batch {bs}")
    ax.set(
        xlabel="Area under the ablation curve",
        ylabel="Test accuracy",
        title="Hyperparameter sweep: robustness vs generalisation",
    )
    ax.legend(fontsize=7, frameon=False, ncols=2)
    return _save(fig, stem)


def draw_f5a(t: Tables, stem: Path) -> list[Path]:
    fig, (ax,) = _fig(1, 8.0)
    cur = t["curves"]
    ds = sorted(cur.dropout.unique())
    for d, col in zip(ds, _ramp(len(ds)), strict=True):
        for c, ls, what in ((0.0, "-", "clean labels"), (1.0, "--", "random labels")):
            band(
                ax,
                cur[(cur.dropout == d) & (cur.corrupt == c)],
                "fraction",
                "accuracy",
                color=col,
                ls=ls,
                label=f"dropout {d:g}, {what}",
            )
        ax.axvline(d, color=col, lw=0.8, ls=":")
    _chance(ax)
    _curve_axes(ax, "Dropout: memorising nets hold only up to the dropout fraction (dotted)")
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, stem)


def draw_f5b(t: Tables, stem: Path) -> list[Path]:
    fig, (ax,) = _fig(1, 7.0)
    cur = t["curves"]
    for bn, col, label in ((True, "C0", "with batch norm"), (False, "C3", "without batch norm")):
        band(ax, cur[cur.batchnorm == bn], "fraction", "accuracy", color=col, label=label)
    _chance(ax)
    _curve_axes(ax, "Convnet, feature maps of the last three conv layers")
    ax.set_xlabel("Fraction of candidate feature maps ablated")
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, stem)


def draw_f6(t: Tables, stem: Path) -> list[Path]:
    fig, axes = _fig(2)
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
    return _save(fig, stem)


def draw_f7(t: Tables, stem: Path) -> list[Path]:
    fig, axes = _fig(2)
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
    return _save(fig, stem)


def draw_zhou(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = _fig(2)
    u = t["units"].nlargest(40, "max_class_drop")
    cls = [c for c in t["units"].columns if c.startswith("delta_accuracy_class_")]
    mat = -u[cls].to_numpy()
    im = ax.imshow(mat, aspect="auto", cmap="magma_r", vmin=0, vmax=max(mat.max(), 1e-6))
    ax.set_xticks(range(len(cls)), [c.rsplit("_", 1)[1] for c in cls])
    ax.set_yticks(range(len(u)), [f"{a}:{b}" for a, b in zip(u.layer, u.unit, strict=True)], fontsize=5)
    ax.set(xlabel="Class", title="Accuracy drop per class, 40 most damaging units")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="Drop in class accuracy")
    a = t["units"]
    last = [layer for layer in dict.fromkeys(a.layer) if layer != "relu_fc"][-1]
    rest, top = a[a.layer != last], a[a.layer == last]
    ax2.scatter(
        rest.selectivity, rest.preferred_class_drop, s=8, alpha=0.5, lw=0, color="0.65", label="other layers"
    )
    ax2.scatter(top.selectivity, top.preferred_class_drop, s=14, alpha=0.8, lw=0, color="C3", label=last)
    ax2.set(
        xlabel="Class selectivity index",
        ylabel="Accuracy drop on the unit's preferred class",
        title="Selectivity vs drop on the preferred class",
    )
    ax2.legend(fontsize=8, frameon=False, markerscale=2)
    return _save(fig, stem)


def draw_amjad(t: Tables, stem: Path) -> list[Path]:
    cur = t["curves"]
    layers = list(dict.fromkeys(cur.layer))
    fig, axes = _fig(len(layers), 5.5)
    styles = {
        "mutual_info_high": ("C3", "-"),
        "mutual_info_low": ("C3", "--"),
        "selectivity_high": ("C0", "-"),
        "selectivity_low": ("C0", "--"),
    }
    for ax, layer in zip(axes, layers, strict=True):
        sub = cur[cur.layer == layer]
        band(
            ax, sub[sub.order == "random"], "fraction", "accuracy", color="black", label="random (mean ± SD)"
        )
        for order, (col, ls) in styles.items():
            c = sub[sub.order == order].sort_values("fraction")
            ax.plot(
                c.fraction, c.accuracy, color=col, ls=ls, lw=1.6, label=order.replace("_", " ") + " first"
            )
        _chance(ax)
        _curve_axes(ax, f"Ordered ablation within {layer}")
        ax.set_xlabel(f"Fraction of {layer}'s units ablated")
    axes[0].legend(fontsize=8, frameon=False)
    return _save(fig, stem)


def draw_leavitt(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = _fig(2)
    nets = t["nets"].assign(x=lambda d: d.alpha.rank(method="dense"))
    ticks = nets.drop_duplicates("alpha").sort_values("alpha")
    for a, col, ylabel in (
        (ax, "mean_selectivity", "Mean class selectivity"),
        (ax2, "test_accuracy", "Test accuracy"),
    ):
        band(a, nets, "x", col, color="C0", label="mean ± SD over seeds", marker="o")
        a.scatter(nets.x, nets[col], color="0.3", s=12, zorder=3, label="one network")
        a.set_xticks(ticks.x, [f"{v:g}" for v in ticks.alpha])
        a.set(xlabel="Regulariser strength alpha (< 0 lowers selectivity)", ylabel=ylabel)
        a.legend(fontsize=8, frameon=False)
    ax.set_title("Selectivity moves as the regulariser asks")
    ax2.set_title("and test accuracy")
    return _save(fig, stem)


def draw_rotation(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = _fig(2)
    cur = t["curves"]
    band(ax, cur[cur.basis == "units"], "fraction", "accuracy", color="C0", label="units")
    band(
        ax,
        cur[cur.basis == "random"],
        "fraction",
        "accuracy",
        color="C1",
        label="random orthonormal directions",
    )
    _chance(ax)
    _curve_axes(ax, "Deleting units vs random directions")
    ax.set_xlabel("Fraction of each layer's dimensions deleted")
    ax.legend(fontsize=8, frameon=False)
    info = t["information"]
    bins = np.linspace(0, max(info.mutual_info.max(), 1e-6), 30)
    for basis, col in (("units", "C0"), ("random", "C1")):
        ax2.hist(
            info[info.basis == basis].mutual_info,
            bins=bins,
            alpha=0.5,
            color=col,
            density=True,
            label="units" if basis == "units" else "random directions",
        )
    ax2.set(
        xlabel="Mutual information with the label (bits)",
        ylabel="Density",
        title="Class information per direction",
    )
    ax2.legend(fontsize=8, frameon=False)
    return _save(fig, stem)


DRAW: dict[str, Callable[[Tables, Path], list[Path]]] = {
    "F1": draw_f1,
    "F2": draw_f2,
    "F3": draw_f3,
    "F4a": draw_f4a,
    "F4c": draw_f4c,
    "F5a": draw_f5a,
    "F5b": draw_f5b,
    "F6": draw_f6,
    "F7": draw_f7,
    "zhou-class-drops": draw_zhou,
    "amjad-info-order": draw_amjad,
    "leavitt-selectivity-reg": draw_leavitt,
    "bau-rotation": draw_rotation,
}
