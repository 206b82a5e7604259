"""W1: each hidden unit of a 784-512-512-10 MLP deleted alone."""

from __future__ import annotations

import functools

from lesion.bench import _common
from lesion.bench._common import (
    PERTURBATIONS_PER_EVAL,
    _bench,
    _captum_missing,
    _Context,
    _median,
    _summary,
)
from lesion.bench.floor import single_flops, site_costs
from lesion.bench.methods import (
    _evaluate,
    _split,
    captum_single,
    hook_single,
    lesion_single,
)
from lesion.bench.notes import _NOTES
from lesion.core.sites import find_sites

# -------------------------------------------------------------------------------------- workloads


def w1(ctx: _Context) -> dict:
    """Each hidden unit of the MLP deleted alone: lesion vs the hook loop vs Captum (1, 4, 16 per eval)."""
    s, model, (x, y) = ctx.sizes, ctx.mlp, ctx.digits
    sites = find_sites(model, x[:2])
    lesions = [(site.name, i) for site in sites for i in range(min(s.units, site.width))]
    check = [k for k, (_, i) in enumerate(lesions) if i < s.check_units]
    batches, n, fallbacks, sparsity = _split(x, y, s.mlp_batch), len(y), {}, {}

    def lesion_fn(ls, bar):
        return lesion_single(model, x, y, sites, ls, s.mlp_batch, bar, fallbacks, sparsity=sparsity)

    runs: dict = {}
    runs["lesion"], ref, _ = _bench(ctx, "W1 lesion", lesion_fn, lesions, check, ctx.repeats, n)
    bf16 = _bf16(ctx, model, x, y, sites, lesions, ref)
    hook = functools.partial(hook_single, model, batches)
    runs["hook_loop"], _, d_hook = _bench(ctx, "W1 hook loop", hook, lesions, check, ctx.repeats, n, ref)
    diffs, captum = {"hook_loop": d_hook}, _captum_missing()
    runs["captum"] = runs["captum_best"] = None
    if _common._captum_version() is not None:
        shapes = {site.name: site.shape for site in sites}
        by_ppe, diffs["captum"], best = _captum_scan(ctx, model, batches, lesions, check, shapes, n, ref)
        runs["captum"], runs["captum_best"] = by_ppe[1], by_ppe[best]
        captum = {
            "available": True,
            "version": _common._captum_version(),
            "best_perturbations_per_eval": best,
        }
        captum["seconds_by_perturbations_per_eval"] = {str(k): _median(t) for k, t in by_ppe.items()}
    flops = single_flops(site_costs(model, sites, x[:1]), lesions, n)
    return {
        "description": "delete each hidden unit of a 784-512-512-10 MLP alone; accuracy and loss",
        "n_examples": n, "n_lesions": len(lesions), "batch_size": s.mlp_batch,
        **_summary(ctx, runs, flops), "max_abs_diff": diffs, "captum": captum,
        "intact": dict(zip(("accuracy", "loss"), _evaluate(model, batches), strict=True)),
        "engine_fallbacks": fallbacks, "exact_sparsity": sparsity, "notes": _NOTES["W1"], "bf16": bf16,
    }  # fmt: skip


def _bf16(ctx: _Context, model, x, y, sites, lesions, ref) -> dict:
    """lesion's W1 in bfloat16 (``precision="bf16"``: the engine under CPU autocast), timed like fp32,
    with its largest deviation from the fp32 answer; no equality check (bf16 rounds at ~3 digits)."""
    s, info = ctx.sizes, {}

    def fn(ls, bar):
        return lesion_single(model, x, y, sites, ls, s.mlp_batch, bar, info, precision="bf16")

    times, got, _ = _bench(ctx, "W1 lesion bf16", fn, lesions, [0], ctx.repeats, len(y))
    return {
        "seconds": _median(times), "runs": times, "other_cores_busy": times.loads,
        "max_abs_diff_from_fp32": {"accuracy": float(abs(got[0] - ref[0]).max()),
                                   "loss": float(abs(got[1] - ref[1]).max())},
        "engine_fallbacks": info,
    }  # fmt: skip


def _captum_scan(ctx, model, batches, lesions, check, shapes, n, ref) -> tuple[dict, dict, int]:
    """Captum at each perturbations_per_eval: checked, timed once (ppe=1 ``repeats`` times), then the
    fastest topped up to ``repeats`` runs. Returns the runs by ppe, the worst differences, the fastest."""
    by_ppe: dict[int, list[float]] = {}
    worst = {"accuracy": 0.0, "loss": 0.0}
    for ppe in PERTURBATIONS_PER_EVAL:
        fn = functools.partial(captum_single, model, batches, shapes, ppe)
        reps = ctx.repeats if ppe == 1 else 1
        by_ppe[ppe], _, d = _bench(ctx, f"W1 captum ppe={ppe}", fn, lesions, check, reps, n, ref)
        worst = {k: max(v, d[k]) for k, v in worst.items()}
    best = min(PERTURBATIONS_PER_EVAL, key=lambda k: by_ppe[k][0])
    if best != 1 and ctx.repeats > 1:
        fn = functools.partial(captum_single, model, batches, shapes, best)
        more, _, _ = _bench(ctx, f"W1 captum ppe={best}", fn, lesions, [], ctx.repeats - 1, n, ref)
        by_ppe[best] += more
    return by_ppe, worst, best
