"""W3: each channel of the last three conv layers of the paper's convnet deleted alone."""

from __future__ import annotations

import functools

from lesion.bench import _common
from lesion.bench._common import (
    _bench,
    _captum_missing,
    _Context,
    _median,
    _summary,
    calibrated_convnet,
    mnist_examples,
)
from lesion.bench.floor import single_flops, site_costs
from lesion.bench.methods import (
    _split,
    captum_single,
    lesion_single,
)
from lesion.bench.notes import _NOTES
from lesion.core.sites import default_candidates, find_sites


def w3(ctx: _Context) -> dict:
    """Each channel of the convnet's last three conv layers deleted alone: lesion vs Captum."""
    s = ctx.sizes
    x, y = mnist_examples(s.conv_examples)
    model = calibrated_convnet(x, s.conv_batch)
    sites = default_candidates(find_sites(model, x[:2]))  # the ReLUs after the last three convs
    per_layer = {site.name: min(s.conv_channels or site.width, site.width) for site in sites}
    lesions = [(site.name, c) for site in sites for c in range(per_layer[site.name])]
    check = [k for k, (_, c) in enumerate(lesions) if c < s.check_units]
    batches, n, fallbacks = _split(x, y, s.conv_batch), len(y), {}

    def lesion_fn(ls, bar):
        return lesion_single(model, x, y, sites, ls, s.conv_batch, bar, fallbacks)

    runs: dict = {}
    runs["lesion"], ref, _ = _bench(ctx, "W3 lesion", lesion_fn, lesions, check, ctx.repeats, n)
    out = {"captum": _captum_missing(), "max_abs_diff": {}, "extrapolated": False}
    runs["captum"], scale = None, {}
    if _common._captum_version() is not None:
        timed = [k for k, (_, c) in enumerate(lesions) if c < s.captum_conv_channels]
        sub = [lesions[k] for k in timed]
        sub_check = [i for i, (_, c) in enumerate(sub) if c < s.check_units]
        fn = functools.partial(captum_single, model, batches, {site.name: site.shape for site in sites}, 1)
        runs["captum"], _, d = _bench(ctx, "W3 captum", fn, sub, sub_check, ctx.repeats, n, ref[:, timed])
        ext = _captum_extrapolation(sites, per_layer, s.captum_conv_channels, len(batches))
        scale = {"captum": 1 / ext["measured_fraction"]}
        ext["measured_seconds"] = _median(runs["captum"])
        version = _common._captum_version()
        out |= {"captum": {"available": True, "version": version, "perturbations_per_eval": 1},
                "max_abs_diff": {"captum": d}, "extrapolated": ext["measured_fraction"] < 1,
                "extrapolation": {"captum": ext}}  # fmt: skip
    flops = single_flops(site_costs(model, sites, x[:1]), lesions, n)
    del flops["hook_loop"]
    return {
        "description": "delete each channel of the last three conv layers of the paper's convnet "
        "(width 0.5, batch norm) alone; accuracy and loss",
        "n_examples": n, "n_lesions": len(lesions), "layers": per_layer, "batch_size": s.conv_batch,
        **_summary(ctx, runs, flops, scale), **out, "engine_fallbacks": fallbacks, "notes": _NOTES["W3"],
    }  # fmt: skip


def _captum_extrapolation(sites, per_layer: dict[str, int], timed: int, n_batches: int) -> dict:
    """Forward passes Captum runs on the timed channels vs on all: per call (layer, batch) one per
    feature (the untimed channels ablated together are one more) and two for the intact outputs."""
    measured = total = 0
    for site in sites:
        c = per_layer[site.name]
        rest = int(c < site.width)
        measured += n_batches * (min(timed, c) + int(min(timed, c) < site.width) + 2)
        total += n_batches * (c + rest + 2)
    return {
        "measured_fraction": measured / total, "measured_forward_passes": measured,
        "forward_passes": total,
        "how": f"the first {timed} channels of each layer timed, seconds scaled linearly per forward "
        "pass; compared with lesion on exactly those channels",
    }  # fmt: skip
