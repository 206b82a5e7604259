"""What every study's ``draw`` shares: a row of axes, a ± SD band, the chance line, PNG and SVG files.

Curves over repeats are drawn as mean lines with ± SD bands; every axis says what it measures and in
which unit. Built with matplotlib's object API, so no global pyplot state is touched; matplotlib loads
when a study draws, not when the studies are imported.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

Tables = dict[str, pd.DataFrame]
ACC = "Accuracy (fraction correct)"
FRAC = "Fraction of candidate units ablated"


def fig_axes(ncols: int = 1, width: float = 6.0) -> tuple:
    """A figure with ``ncols`` axes in a row, gridded, and the list of its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.4), layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, color="0.9", lw=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def save(fig, stem: Path) -> list[Path]:
    """``stem``.png and ``stem``.svg, PNG first."""
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


def chance_line(ax, level: float = 0.1) -> None:
    ax.axhline(level, color="0.55", lw=0.8, ls=":", zorder=0, label="chance")


def curve_axes(ax, title: str) -> None:
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=FRAC, ylabel=ACC, title=title)


def ramp(n: int) -> list:
    """``n`` colours along viridis, dark to light."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]
