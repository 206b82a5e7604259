"""Redraw docs/figures/concepts.png, the one picture of docs/concepts.md.

    python docs/figures/make_concepts_png.py --out docs/figures/concepts.png

A 2x6 MLP drawn as a site (``relu1``) whose units sit on one axis; a lesion (units ``relu1:1`` and
``relu1:4`` with a replacement) held by hooks; the metric scoring the output against the intact run;
and the sweep's table, one row per lesion. Only matplotlib; nothing is measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

INK, MUTED, ACCENT, FILL = "#222222", "#777777", "#c0392b", "#eef3fb"


def box(ax, x, y, w, h, text, *, face=FILL, edge=INK, size=10, weight="normal"):
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=face,
            edgecolor=edge,
            linewidth=1.2,
        )
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, color=INK, weight=weight)


def arrow(ax, a, b, *, color=INK, style="-|>", ls="-"):
    ax.add_patch(
        FancyArrowPatch(
            a,
            b,
            arrowstyle=style,
            mutation_scale=12,
            color=color,
            linewidth=1.2,
            linestyle=ls,
            shrinkA=2,
            shrinkB=2,
        )
    )


def label(ax, x, y, text, *, color=MUTED, size=9, ha="center", va="center", **kw):
    ax.text(x, y, text, ha=ha, va=va, fontsize=size, color=color, **kw)


def draw(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(13, 6))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 6)
    ax.axis("off")

    # the data and the model's first module
    box(ax, 0.1, 2.5, 1.2, 1.0, "batch\n(x, y)")
    box(ax, 1.7, 2.5, 1.0, 1.0, "fc1\nLinear")
    arrow(ax, (1.3, 3.0), (1.7, 3.0))
    arrow(ax, (2.7, 3.0), (3.1, 3.0))

    # the site: relu1, its units on one axis
    ax.add_patch(
        FancyBboxPatch(
            (3.1, 1.1),
            1.5,
            3.7,
            boxstyle="round,pad=0.02,rounding_size=0.1",
            facecolor="white",
            edgecolor=INK,
            linewidth=1.6,
        )
    )
    label(ax, 3.85, 5.45, "site  relu1", color=INK, size=12, weight="bold")
    label(
        ax, 3.85, 5.05, "a name from model.named_modules();\nits output (batch, 6): one unit axis", size=8.5
    )
    lesioned = {1, 4}
    for i in range(6):
        y = 4.4 - i * 0.6
        hit = i in lesioned
        ax.add_patch(Circle((3.5, y), 0.2, facecolor=ACCENT if hit else FILL, edgecolor=INK, linewidth=1.1))
        label(ax, 4.1, y, f"relu1:{i}", color=ACCENT if hit else INK, size=9)
        if hit:
            ax.plot([3.36, 3.64], [y - 0.14, y + 0.14], color="white", linewidth=1.8)
            ax.plot([3.36, 3.64], [y + 0.14, y - 0.14], color="white", linewidth=1.8)
    ax.annotate(
        "a unit: (layer, index),\nwritten relu1:4",
        xy=(4.45, 2.0),
        xytext=(5.75, 1.45),
        fontsize=9,
        color=INK,
        ha="center",
        va="center",
        arrowprops={"arrowstyle": "-|>", "color": MUTED, "linewidth": 1.0},
    )

    # the lesion and its replacement, applied by hooks
    box(
        ax,
        0.3,
        0.45,
        2.3,
        1.15,
        'lesion = Lesion(\n  "relu1:1,4", Mean())',
        face="#fdecea",
        edge=ACCENT,
        size=9.5,
    )
    label(
        ax,
        0.3,
        0.12,
        "a forward hook puts the replacement in place; removed in finally",
        color=ACCENT,
        size=8.5,
        ha="left",
    )
    arrow(ax, (2.6, 1.3), (3.28, 3.75), color=ACCENT)
    arrow(ax, (2.6, 1.1), (3.28, 1.95), color=ACCENT)

    # the rest of the network and the output
    arrow(ax, (4.6, 3.0), (5.0, 3.0))
    box(ax, 5.0, 2.5, 1.5, 1.0, "fc2 → relu2\n→ fc3")
    arrow(ax, (6.5, 3.0), (6.9, 3.0))
    box(ax, 6.9, 2.5, 1.0, 1.0, "output\n(logits)")
    label(ax, 6.45, 5.05, "replacement", color=ACCENT, size=10, weight="bold")
    label(ax, 6.45, 4.7, "what the deleted units' activity becomes", color=INK, size=8.5)
    label(
        ax,
        6.45,
        4.1,
        "Zero() · Constant(c) · Mean()\nPositionalMean() · Resample(seed)\nPatch(source) · Optimal()",
        size=8.5,
    )

    # the metric: lesioned against intact
    arrow(ax, (7.9, 3.0), (8.3, 3.0))
    box(ax, 8.3, 2.4, 1.5, 1.2, "metric\nClassification()\nloss, accuracy", size=9)
    box(ax, 8.3, 4.2, 1.5, 0.75, "intact run\n(no lesion)", face="white", size=9)
    arrow(ax, (9.05, 4.2), (9.05, 3.6), color=MUTED)
    label(ax, 9.05, 2.05, "delta = lesioned − intact", size=8.5)

    # the sweep's table
    arrow(ax, (9.8, 3.0), (10.2, 3.0))
    rows = [
        ("lesion", "loss", "delta_loss"),
        ("relu1:1,4", "0.27", "+0.07"),
        ("relu1:3", "0.21", "+0.01"),
        ("relu2:0-9", "0.35", "+0.15"),
    ]
    ax.add_patch(
        FancyBboxPatch(
            (10.2, 1.9),
            2.7,
            2.2,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor="white",
            edgecolor=INK,
            linewidth=1.2,
        )
    )
    for r, row in enumerate(rows):
        y = 3.75 - r * 0.5
        for x, cell in zip((10.75, 11.6, 12.35), row, strict=True):
            label(
                ax,
                x,
                y,
                cell,
                color=ACCENT if r == 1 and x == 10.75 else INK,
                size=9,
                weight="bold" if r == 0 else "normal",
            )
    ax.plot([10.3, 12.8], [3.5, 3.5], color=MUTED, linewidth=0.8)
    label(ax, 11.55, 5.45, "sweep(model, data, lesions, metric)", color=INK, size=11, weight="bold")
    label(ax, 11.55, 5.05, "one row per lesion: a tidy DataFrame", size=8.5)
    label(ax, 11.55, 1.55, "(illustrative numbers)", size=8, style="italic")

    fig.savefig(out, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/figures/concepts.png"))
    draw(p.parse_args().out)


if __name__ == "__main__":
    main()
