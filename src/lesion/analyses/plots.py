"""Figures of an analysis: ablation curves, noise curves, selectivity against importance.

Each function takes the tidy DataFrame an analysis returned, draws one figure and saves it as PNG
(150 dpi) and as SVG beside it. Figures are built with matplotlib's object API (no pyplot), so no global
backend or figure registry is touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

_RANDOM = "random"
_STYLES = ("-", "--", "-.", ":")


def plot_curves(
    curves: pd.DataFrame,
    path: str | Path,
    *,
    title: str = "Cumulative ablation",
    ylabel: str = "Accuracy (fraction correct)",
) -> list[Path]:
    """Accuracy against fraction of units ablated: random orders as mean ± SD band, ranked orders as lines.

    ``curves`` has the columns of ``lesion.ablation_curves``. Returns the PNG and SVG paths.
    """
    fig, ax = _figure()
    rand = curves[curves["order"] == _RANDOM]
    if len(rand):
        g = rand.groupby("fraction")["accuracy"]
        mean, sd = g.mean(), g.std(ddof=1).fillna(0.0)
        n = rand["repeat"].nunique()
        ax.fill_between(mean.index, mean - sd, mean + sd, color="0.6", alpha=0.35, lw=0, label="random ± SD")
        ax.plot(mean.index, mean.to_numpy(), color="black", lw=2, label=f"random order (mean of {n})")
    ranked = [o for o in dict.fromkeys(curves["order"]) if o != _RANDOM]
    for k, order in enumerate(ranked):
        c = curves[curves["order"] == order].sort_values("fraction")
        ax.plot(c["fraction"], c["accuracy"], lw=1.8, ls=_STYLES[k % len(_STYLES)], color=f"C{k}",
                label=order.replace("_", " ") + " first")  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Fraction of candidate units ablated", ylabel=ylabel)
    _units_axis(ax, curves)
    ax.set_title(title)
    fig.legend(loc="outside right upper", frameon=False)
    return _save(fig, path)


def _units_axis(ax, curves: pd.DataFrame) -> None:
    """A top axis counting ablated units, when the curves tell how many candidates there are."""
    last = curves[curves["fraction"] > 0]
    if not len(last):
        return
    total = float((last["n_ablated"] / last["fraction"]).median())
    top = ax.secondary_xaxis("top", functions=(lambda f: f * total, lambda n: n / total))
    top.set_xlabel(f"Units ablated (of {round(total)})")


def plot_noise(
    noise: pd.DataFrame,
    path: str | Path,
    *,
    title: str = "Per-unit Gaussian noise",
    ylabel: str = "Accuracy (fraction correct)",
) -> list[Path]:
    """Accuracy against noise scale (log axis), mean ± SD over repeats; columns of ``lesion.noise_curves``."""
    fig, ax = _figure()
    g = noise.groupby("scale")["accuracy"]
    mean, sd = g.mean(), g.std(ddof=1).fillna(0.0)
    n = noise["repeat"].nunique()
    ax.fill_between(mean.index, mean - sd, mean + sd, color="C0", alpha=0.25, lw=0, label="± SD")
    ax.plot(mean.index, mean.to_numpy(), "o-", color="C0", lw=2, ms=4, label=f"mean of {n} draws")
    ax.set_xscale("log")
    ax.set(ylim=(0, 1.02), xlabel="Noise scale (noise SD / unit's activity SD)", ylabel=ylabel, title=title)
    fig.legend(loc="outside right upper", frameon=False)
    return _save(fig, path)


def plot_selectivity_importance(
    units: pd.DataFrame, path: str | Path, *, x: str = "selectivity", y: str = "delta_loss"
) -> list[Path]:
    """Scatter of each unit's selectivity against its importance, coloured by layer, with Pearson r.

    ``units`` has the columns of ``lesion.unit_table``; dead units (NaN selectivity) are left out.
    """
    fig, ax = _figure()
    live = units[np.isfinite(units[x]) & np.isfinite(units[y])]
    for k, (layer, g) in enumerate(live.groupby("layer", sort=False)):
        ax.scatter(g[x], g[y], s=10, alpha=0.6, color=f"C{k}", lw=0,
                   label=f"{layer} (n={len(g)}, r={_pearson(g[x], g[y]):+.2f})")  # fmt: skip
    ax.axhline(0.0, color="0.5", lw=0.8, zorder=0)
    ax.set(xlabel="Class selectivity index (0 = unselective, 1 = one class only)",
           ylabel="Δ loss when the unit alone is deleted (nats)" if y == "delta_loss" else y)  # fmt: skip
    dead = len(units) - len(live)
    note = f", {dead} dead unit{'s' * (dead != 1)} left out" if dead else ""
    ax.set_title(f"Selectivity vs importance: pooled r = {_pearson(live[x], live[y]):+.3f}{note}")
    if len(live):
        fig.legend(loc="outside right upper", frameon=False, markerscale=2)
    return _save(fig, path)


def _pearson(a: pd.Series, b: pd.Series) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _figure():
    fig = Figure(figsize=(9.0, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="0.9", lw=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _save(fig: Figure, path: str | Path) -> list[Path]:
    png = Path(path).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=150)
    svg = png.with_suffix(".svg")
    fig.savefig(svg)
    return [png, svg]


__all__ = ["plot_curves", "plot_noise", "plot_selectivity_importance"]
