"""W10: every unit of GPT-2 small (36,864 MLP neurons and 144 heads) by triage: the attribution estimate
for all, exact effects for a budget chosen by it plus a random sample, and the estimated recall of the
top 1%; the hook loop's time for every unit extrapolated from a timed subset."""

from __future__ import annotations

from lesion.bench._common import _Context
from lesion.bench._real import agree, clock, gpt2_small, hook_loop, on_device, shared, tokens


def w10(ctx: _Context) -> dict:
    from lesion.analyses.sweep import sweep
    from lesion.core.metric_lm import NextTokenLoss

    model = shared(ctx, "gpt2_small", gpt2_small)
    data = tokens(ctx.sizes, model.config.vocab_size, ctx.device)
    start = clock(ctx)
    df = sweep(model, data, metric=NextTokenLoss(), triage=ctx.sizes.real_triage,
               batch_size=len(data[0]["input_ids"]), precision=ctx.precision)  # fmt: skip
    seconds = clock(ctx) - start
    tri = df.attrs["triage"]
    exact = df[df["source"] == "exact"]
    sample = list(exact["lesion"][:: max(1, len(exact) // ctx.sizes.real_peer_units)])
    t0 = clock(ctx)
    ref = hook_loop(model, data, sample, ctx)
    per_unit = (clock(ctx) - t0) / len(sample)
    diff = agree(ctx, "W10 (exact rows)", ref, exact.set_index("lesion").loc[sample, "loss"].to_numpy())
    t_hook = per_unit * len(df)
    return {
        "description": "every MLP neuron and attention head of GPT-2 small by triage: estimate for all, "
                       f"exact for a budget of {ctx.sizes.real_triage} chosen by it and a random sample",
        "n_lesions": len(df), "n_exact": int(tri["exact"]), "peer_units_timed": len(sample),
        "seconds": {"lesion": seconds, "hook_loop": t_hook}, "floor_seconds": {},
        "ratios": {"hook_loop/lesion": t_hook / seconds, "lesion/floor": None},
        "units_per_second": {"lesion_triaged": len(df) / seconds, "hook_loop": 1 / per_unit},
        "recall": {k: tri[k] for k in ("k", "recall", "low", "high", "level", "sampled", "claim")},
        "max_abs_diff": {"hook_loop": {"loss": diff}}, **on_device(ctx),
        "notes": "hook_loop: one full pass per unit for every unit, extrapolated from the units timed; "
                 "lesion: the triaged sweep (its exact rows equal the hook loop on the units timed)",
    }  # fmt: skip
