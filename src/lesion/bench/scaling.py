"""S1: how lesion's W1 time grows with the number of examples and with the layer width.

Each point is W1's workload (every hidden unit of a 784-w-w-10 MLP deleted alone, accuracy and loss)
timed with lesion alone: the examples scan keeps W1's trained 2x512 MLP and takes 1,000 to 60,000
examples; the width scan trains a 2xw MLP the same way (mnist5k, seed 0, W1's epochs) for w = 128 to
2,048 and reads it on W1's 10,000 examples. Each point is checked against the hook loop on a few units
first (that is its warm-up). A line fitted to log(seconds) against log(size) gives the exponent: the
engine does n x w arithmetic per deleted unit of the first layer, so about 1 in examples and about 2 in
width (2w units) is what the arithmetic predicts, until caches and fixed costs bend it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesion.bench._common import _agree, _bench, _Context, _median, mnist_examples, trained_mlp
from lesion.bench.methods import _split, hook_single, lesion_single
from lesion.core.sites import find_sites

EXAMPLES = (1_000, 3_000, 10_000, 30_000, 60_000)
WIDTHS = (128, 256, 512, 1_024, 2_048)
QUICK_EXAMPLES = (200, 400, 800)
QUICK_WIDTHS = (16, 32, 64)


def s1(ctx: _Context) -> dict:
    """lesion's W1 time against examples (W1's MLP) and against width (W1's 10,000 examples)."""
    quick = ctx.sizes.examples < 10_000
    examples = QUICK_EXAMPLES if quick else EXAMPLES
    widths = QUICK_WIDTHS if quick else WIDTHS
    scans = {"examples": [], "width": []}
    for n in examples:
        scans["examples"].append(_point(ctx, ctx.mlp, *mnist_examples(n), f"S1 n={n:,}", n))
    x, y = ctx.digits
    for w in widths:
        model = ctx.mlp if w == 512 else trained_mlp(ctx.sizes.mlp_epochs, width=w)
        scans["width"].append(_point(ctx, model, x, y, f"S1 w={w:,}", w))
    fits = {}
    for name, sizes in (("examples", examples), ("width", widths)):
        seconds = [p["seconds"] for p in scans[name]]
        slope, intercept = np.polyfit(np.log(sizes), np.log(seconds), 1)
        fits[name] = {"sizes": list(sizes), "seconds": seconds, "exponent": float(slope),
                      "coefficient": float(np.exp(intercept)), "points": scans[name]}  # fmt: skip
    return {
        "description": "lesion's W1 time (every hidden unit of a 784-w-w-10 MLP deleted alone) against "
        "the number of examples (w = 512) and the width (10,000 examples); log-log fit",
        "repeats": 1,
        "scans": fits,
        "notes": "one timed run per point (after a checked warm-up), lesion alone; the fitted exponent is "
        "the slope of log(seconds) on log(size)",
    }


def _point(ctx: _Context, model, x, y, label: str, size: int) -> dict:
    """One timed run of W1's workload at this size, checked against the hook loop on a few units."""
    sites = find_sites(model, x[:2])
    lesions = [(site.name, i) for site in sites for i in range(site.width)]
    check = [k for k, (_, i) in enumerate(lesions) if i < ctx.sizes.check_units]
    batches, n, info = _split(x, y, ctx.sizes.mlp_batch), len(y), {}

    def fn(ls, bar):
        return lesion_single(model, x, y, sites, ls, ctx.sizes.mlp_batch, bar, info)

    times, got, _ = _bench(ctx, label, fn, lesions, check, 1, n)  # the check units are its warm-up
    _agree(label, hook_single(model, batches, [lesions[k] for k in check]), got[:, check], n)
    return {"size": size, "seconds": _median(times), "n_examples": n, "n_units": len(lesions),
            "other_cores_busy": times.loads, "engine_fallbacks": info}  # fmt: skip


def plot_scaling(result: dict, path: str | Path) -> None:
    """Two log-log panels: seconds against examples and against width, with the fitted power laws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:.2g}")  # 1,000 not 1e+03
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    n = result["scans"]["width"]["points"][0]["n_examples"]
    labels = {"examples": "examples (width 512)", "width": f"layer width w ({n:,} examples; 2w units)"}
    for ax, (name, fit) in zip(axes, result["scans"].items(), strict=True):
        sizes, seconds = np.array(fit["sizes"], float), np.array(fit["seconds"], float)
        ax.loglog(sizes, seconds, "o", color="C0", label="lesion, measured")
        grid = np.geomspace(sizes.min(), sizes.max(), 50)
        ax.loglog(grid, fit["coefficient"] * grid ** fit["exponent"], "-", color="C1",
                  label=f"fit: seconds ∝ size^{fit['exponent']:.2f}")  # fmt: skip
        ax.set_xlabel(labels[name])
        ax.set_ylabel("seconds (every unit deleted alone)")
        ax.set_xticks(sizes)  # the measured sizes themselves
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(plain)  # minor labels only on a short range
        ax.yaxis.set_minor_formatter(plain if seconds.max() / seconds.min() < 10 else NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("W1 scaling: lesion's single-unit sweep of a 784-w-w-10 MLP", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
