"""W2: cumulative curves, random orders over every hidden unit, at every count."""

from __future__ import annotations

import functools

import numpy as np

from lesion.bench._common import (
    _bench,
    _Context,
    _median,
    _summary,
)
from lesion.bench.floor import curve_flops, site_costs
from lesion.bench.methods import (
    _split,
    hook_curves,
    lesion_curves,
)
from lesion.bench.notes import _NOTES
from lesion.core.sites import find_sites


def w2(ctx: _Context) -> dict:
    """Cumulative curves in random orders at every count: lesion vs the hook loop (timed on a subset)."""
    s, model, (x, y) = ctx.sizes, ctx.mlp, ctx.digits
    sites = find_sites(model, x[:2])
    units = [(site.name, i) for site in sites for i in range(min(s.units, site.width))]
    rng = np.random.default_rng(0)
    orders = [[units[i] for i in rng.permutation(len(units))] for _ in range(s.orders)]
    counts, n, fallbacks, sparsity = len(units) + 1, len(y), {}, {}
    picks = [(o, c) for o in range(s.orders) for c in range(o % s.hook_stride, counts, s.hook_stride)]

    def lesion_fn(os_, bar):
        return lesion_curves(model, x, y, sites, os_, s.mlp_batch, bar, fallbacks, sparsity=sparsity)

    runs: dict = {}
    runs["lesion"], curves, _ = _bench(ctx, "W2 lesion", lesion_fn, orders, [0], ctx.repeats, n)
    ref = curves[:, [o for o, _ in picks], [c for _, c in picks]]  # (2, picks)
    widths = {site.name: site.width for site in sites}
    hook = functools.partial(hook_curves, model, _split(x, y, s.mlp_batch), orders, widths)
    check = list(range(0, len(picks), max(1, len(picks) // 4)))[:4]
    runs["hook_loop"], _, d_hook = _bench(ctx, "W2 hook loop", hook, picks, check, ctx.repeats, n, ref)
    fraction = len(picks) / (s.orders * counts)
    summary = _summary(ctx, runs, curve_flops(site_costs(model, sites, x[:1]), orders, n),
                       scale={"hook_loop": 1 / fraction})  # fmt: skip
    return {
        "description": "cumulative curves: random orders over all hidden units, every count",
        "n_examples": n, "n_orders": s.orders, "n_units": len(units), "n_points": s.orders * counts,
        "batch_size": s.mlp_batch, **summary, "max_abs_diff": {"hook_loop": d_hook},
        "extrapolated": fraction < 1,
        "extrapolation": {"hook_loop": {
            "measured_fraction": fraction, "measured_forward_passes": len(picks),
            "forward_passes": s.orders * counts, "measured_seconds": _median(runs["hook_loop"]),
            "how": f"one count in {s.hook_stride} of each order (offset by the order) timed, seconds "
                   "scaled linearly per forward pass; compared with lesion on exactly those counts",
        }},
        "engine_fallbacks": fallbacks, "exact_sparsity": sparsity, "notes": _NOTES["W2"],
    }  # fmt: skip
