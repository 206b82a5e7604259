"""The measuring stages of ``build`` in order: ``lesions`` (parts b to d: single-unit effects, exact or
by triage, output pushes, pairs and compensation) and ``scores`` (part f and the transformer extras:
explanations and simulation scores, direct effects, attention patterns, class measures, the causal test).
Each stage's arrays can be kept (``Keep``) and are then reused by a later run with the same settings."""

from __future__ import annotations

import numpy as np
import torch

from lesion.analyses.measures import mutual_information, selectivity_index
from lesion.core.batch import first_batch
from lesion.core.replacements import Mean, Resample, Zero
from lesion.roles import scale, stages, tokens
from lesion.roles.effects import LossChange, interval, single_effects
from lesion.roles.heads import head_patterns
from lesion.roles.next_token import NextTokenChange, causal_tokens, target_tokens
from lesion.roles.pushes import lm_pushes, pushes


def lesions(model, data, sites, ctx, opt, kept, say) -> dict:
    """Parts b to d: single-unit effects under each replacement, pushes, pairs and compensation for the
    units with the largest exact effects."""
    targets = target_tokens(data, opt.batch_size) if ctx["lm"] else None

    def metric():
        return NextTokenChange(ctx["n_classes"], targets) if ctx["lm"] else LossChange(ctx["n_classes"])

    eff = effects(model, data, sites, ctx, opt, kept, say, metric)
    top_block = None if opt.budget is None else scale.top_block(eff["zero"])
    if ctx["lm"]:
        pushed = lm_pushes(model, data, sites, ctx["token_parts"])
    else:
        pushed = pushes(model, first_batch(data, 1), sites)
    say.lap("pushes")
    units, zero = ctx["units"], eff["zero"]
    exact = zero["exact"].astype(bool) if "exact" in zero else np.ones(len(units), dtype=bool)
    z_mean, _, _ = interval(zero["dsum"], zero["dsq"], zero["count"])  # NaN where estimated
    ranked = np.argsort(-np.nan_to_num(z_mean, nan=-np.inf), kind="stable")
    order = [int(i) for i in ranked if exact[i]][: opt.pair_units]
    pair_list = stages.pairs(units, order, ctx["samples"], z_mean, opt.partners, eligible=exact)
    pair_vals = kept("pairs", lambda: stages.pair_values(
        model, data, units, pair_list, metric, opt.batch_size, opt.seed), pair_list)  # fmt: skip
    say.lap("pairs")
    comp = kept("compensation", lambda: stages.compensations(
        model, data, sites, [units[i] for i in order], opt.batch_size), order)  # fmt: skip
    say.lap("compensation")
    how = stages.PAIRS_HOW.format(k=opt.pair_units, p=opt.partners)
    how += stages.PAIRS_TRIAGED if opt.budget is not None else ""
    return {"eff": eff, "pushed": pushed, "order": order, "pair_list": pair_list, "pair_vals": pair_vals,
            "comp": comp, "exact": exact, "triage": scale.report(zero), "pairs_how": how,
            "top_block": top_block, "targets": targets, "metric": metric}  # fmt: skip


def effects(model, data, sites, ctx, opt, kept, say, metric) -> dict:
    """Each unit deleted alone under zero and mean (and resample for a language model): every unit
    exactly, or, with a triage budget, zero by triage and the others for the top block only."""
    units = ctx["units"]
    kw = {"batch_size": opt.batch_size, "progress": opt.progress, "spread": opt.spread}
    replacements = [("mean", Mean(stats=ctx["stats"]))]
    if ctx["lm"]:  # transformers: another sequence's activity too (by triage: in place of the mean)
        replacements = [*replacements[: opt.budget is None], ("resample", Resample(seed=opt.seed))]
    eff = {}
    if opt.budget is None:
        eff["zero"] = kept("effects-zero", lambda: single_effects(model, data, sites, units, Zero(), metric(),
                                                                  **kw)[0])  # fmt: skip
        chosen = None
    else:
        eff["zero"] = kept("effects-zero-triage", lambda: scale.zero_effects(
            model, data, sites, metric(), opt.budget, seed=opt.seed, **kw))  # fmt: skip
        chosen = scale.top_block(eff["zero"])
    say.lap("effects-zero")
    for name, rep in replacements:
        if chosen is None:
            eff[name] = kept(f"effects-{name}", lambda rep=rep: single_effects(
                model, data, sites, units, rep, metric(), **kw)[0])  # fmt: skip
        else:
            eff[name] = kept(f"effects-{name}-top", lambda rep=rep: scale.subset_effects(
                model, data, sites, units, chosen, rep, metric(), **kw))  # fmt: skip
        say.lap(f"effects-{name}")
    return eff


def scores(model, data, sites, ctx, opt, kept, say) -> dict:
    """Part f and the transformer extras: explanations and simulation scores, direct effects, attention
    patterns, class measures and the causal test."""
    lm = ctx["lm"]
    expl = stages.explanations(
        ctx["units"], ctx["found"], ctx["samples"], ctx["y_sample"], ctx["ids_sample"], opt.explainer,
        opt.simulator, "token" if lm else "class", opt.seed,
    )  # fmt: skip
    neurons = [s for s in sites if not s.heads]
    direct = {}
    if lm and neurons:  # by triage: for the top block (the units with every replacement) only
        asked = None if opt.budget is None else [str(ctx["units"][i]) for i in ctx["top_block"]]
        direct = kept("direct", lambda: tokens.direct(model, data, neurons, opt.batch_size, asked), asked)
    head_sites = [s for s in sites if s.heads]
    patterns = head_patterns(model, data, head_sites, opt.batch_size) if head_sites else {}
    say.lap("explanations and direct effects")
    si, pref, mi = class_measures(sites, ctx["stats"], ctx["found"], ctx["labeled"])
    if lm:
        causal = kept("causal", lambda: causal_tokens(
            model, data, sites, ctx["token_parts"], ctx["n_classes"], opt.causal_draws, opt.seed,
            opt.batch_size))  # fmt: skip
    elif ctx["labeled"]:
        causal = kept("causal", lambda: stages.causal(
            model, data, sites, si, pref, ctx["n_classes"], opt.causal_draws, opt.seed, ctx["metric"](),
            opt.batch_size))  # fmt: skip
    else:
        causal = {}
    say.lap("causal")
    return {"expl": expl, "direct": direct, "patterns": patterns, "si": si, "pref": pref, "mi": mi,
            "causal": causal}  # fmt: skip


def class_measures(sites, stats, found, labeled):
    """Selectivity, preferred class and information per unit; a head's class means are of its output
    norm (the activity pass), and it has no information (no joint histogram)."""
    si, pref, mi = {}, {}, {}
    for s in sites:
        w = s.width
        means = None
        if labeled:
            f = found.get(s.name)
            means = (
                (f.class_sum / f.class_count[:, None])
                if s.heads and f is not None
                else stats[s.name].class_means
            )
        if means is not None and (~torch.isnan(means).any(1)).sum() >= 2:
            si[s.name], pref[s.name] = selectivity_index(means)
            mi[s.name] = np.full(w, np.nan) if s.heads else mutual_information(stats[s.name].histogram.counts)
        else:
            si[s.name], pref[s.name], mi[s.name] = np.full(w, np.nan), np.full(w, -1), np.full(w, np.nan)
    return si, pref, mi
