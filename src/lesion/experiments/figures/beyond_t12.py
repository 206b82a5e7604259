"""Beyond the paper, T1 and T2: the paper's question asked of transformers.

T1: does generalisation predict robustness in a ViT? Small ViT-style classifiers trained on clean, half
and fully shuffled labels; cumulative deletion curves (random orders) of the MLP neurons and, separately,
of the attention heads; AUC against the corruption fraction (the paper's F1 claim, per unit kind).

T2: single directions through grokking. A one-layer decoder learns a + b mod p (full batch, AdamW with
weight decay 1, Nanda et al. 2023 scaled down); at every checkpoint, the cumulative-deletion AUC of its
MLP neurons and of its heads on the training pairs, against train and test accuracy: does robustness to
deletion rise at or before the jump in test accuracy, i.e. flag generalisation without a test set?
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lesion.experiments.claims import bootstrap, make_check
from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    aucs,
    by_net,
    claim,
    curves,
    final_metrics,
    fmt,
    gather,
    interval,
    train,
)
from lesion.experiments.figures.generalisation import corruption_checks
from lesion.experiments.profiles import Profile

KINDS = {"neurons": "MLP neurons", "heads": "attention heads"}

# ---- T1: a ViT's neurons and heads against label corruption


def _t1_net(p: Profile, c: float, s: int) -> Job:
    return train(
        p,
        arch={"kind": "vit", **p.t1_vit},
        dataset=p.t1_dataset,
        corrupt=c,
        seed=s,
        train_size=p.t1_train_size,
        lr=p.t1_lr,
        until_train_acc=p.t1_until,
        max_epochs=p.t1_max_epochs,
    )


def _layers(p: Profile, units: str) -> list[str]:
    site = "mlp.act" if units == "neurons" else "attn"
    return [f"h.{i}.{site}" for i in range(int(p.t1_vit["n_layer"]))]


def t1_jobs(p: Profile) -> dict[str, Job]:
    jobs = {}
    for c in p.t1_corruptions:
        for s in p.t1_seeds:
            net = _t1_net(p, c, s)
            jobs[f"vit_c{c:g}_s{s}"] = net
            for units in KINDS:
                frac = p.t1_fractions if units == "neurons" else None  # heads: every head count
                jobs[f"{units}_c{c:g}_s{s}"] = curves(
                    p, net, repeats=p.t1_repeats, fractions=frac, candidates=_layers(p, units)
                )
    return jobs


def t1_analyse(p: Profile, out: Outputs) -> Outcome:
    frames, nets = [], []
    for c in p.t1_corruptions:
        for s in p.t1_seeds:
            nets.append({"corrupt": c, "seed": s, **final_metrics(out, f"vit_c{c:g}_s{s}")})
            for units in KINDS:
                frames.append(gather(out, {f"{units}_c{c:g}_s{s}": {"units": units, "corrupt": c, "seed": s}},
                                     "curves.parquet"))  # fmt: skip
    table = pd.concat(frames, ignore_index=True)
    nets = pd.DataFrame(nets)
    nets["memorised"] = nets["train_accuracy"] >= p.t1_until
    per_curve = aucs(table, ["units", "corrupt", "seed", "repeat"])
    claims = []
    for units, what in KINDS.items():
        sub = per_curve[per_curve.units == units]
        checks = corruption_checks(by_net(sub, "corrupt", ["seed"], "auc"), f"AUC ({what})")
        by_c = sub.groupby(["corrupt", "seed"])["auc"].mean().groupby("corrupt").mean()
        n_units = int(table[table.units == units]["n_ablated"].max())
        measured = (
            f"{len(p.t1_seeds)} ViT(s) per corruption level, {n_units} {what} deleted in random order "
            f"({p.t1_repeats} orders each); AUC by corruption: "
            + ", ".join(f"{fmt(v)} ({c:.0%})" for c, v in by_c.items())
            + f"; clean minus fully shuffled {interval(checks[1])}; Spearman rho (corruption, AUC) "
            f"{interval(checks[0])}; train accuracy reached: "
            + ", ".join(
                f"{fmt(r.train_accuracy, 2)} ({r.corrupt:.0%}, seed {r.seed})" for r in nets.itertuples()
            )
            + f"; test accuracy (clean labels): {fmt(nets[nets.corrupt == 0].test_accuracy.mean(), 2)}"
        )
        claims.append(
            claim(
                f"T1-{units}",
                f"In a ViT, networks trained on more corrupted labels depend more on single {what}: "
                "accuracy falls sooner under cumulative deletion (criterion as F1: Spearman rho of "
                "corruption vs AUC < -0.8 and AUC(0%) > AUC(100%))",
                "Morcos et al. 2018 (Fig. 1, MLPs and convnets): memorising networks depend more on single "
                "directions; not measured on transformers",
                measured,
                {
                    "auc_by_corruption": {f"{k:g}": v for k, v in by_c.items()},
                    "units": n_units,
                    "nets_memorised": int(nets.memorised.sum()),
                    "nets": len(nets),
                },
                checks,
            )
        )
    return Outcome({"curves": table, "auc": per_curve, "nets": nets}, claims)


T1 = Figure(
    "T1",
    "A ViT's MLP neurons and heads vs label corruption",
    "beyond the paper: Morcos et al. 2018 Fig. 1 asked of a ViT",
    t1_jobs,
    t1_analyse,
)


# ---- T2: single directions through grokking

MEMORISED = 0.95  # train accuracy at which a network counts as having memorised its training pairs


def t2_jobs(p: Profile) -> dict[str, Job]:
    jobs = {}
    for s in p.t2_seeds:
        device = {"device": p.device} if p.device != "cpu" else {}  # a GPU run: a different job
        net = Job("grok", {**p.t2_grok, "seed": int(s), "data_seed": 0, **device})
        jobs[f"grok_s{s}"] = net
        params = {"repeats": p.t2_repeats, "fractions": p.t2_fractions, "seed": 0}
        jobs[f"curves_s{s}"] = Job("grok_curves", params, {"model": net})
    return jobs


def crossing(steps: np.ndarray, values: np.ndarray, start: int) -> float:
    """The first step from index ``start`` on at which ``values`` has gone halfway from its value there
    to its last value (in that direction); NaN when it never moves.

    >>> crossing(np.array([0, 10, 20, 30]), np.array([0.2, 0.3, 0.9, 1.0]), 0)
    20.0
    >>> crossing(np.array([0, 10, 20]), np.array([1.0, 0.2, 0.0]), 0)
    10.0
    """
    a, b = values[start], values[-1]
    if not np.isfinite(a) or not np.isfinite(b) or a == b:
        return float("nan")
    half = (a + b) / 2
    moved = (values[start:] >= half) if b > a else (values[start:] <= half)
    return float(steps[start:][np.argmax(moved)])


def jump_step(h: pd.DataFrame) -> tuple[float, float]:
    """(memorisation step, test-accuracy jump step) of one run's history: the first checkpoint with
    train accuracy >= ``MEMORISED``, then the first at which test accuracy has gone halfway from there to
    its final value (NaN if it never memorised or test accuracy rose by less than 0.2)."""
    h = h.sort_values("step")
    ok = np.flatnonzero(h["train_accuracy"].to_numpy() >= MEMORISED)
    if not len(ok):
        return float("nan"), float("nan")
    m = int(ok[0])
    test = h["test_accuracy"].to_numpy()
    if test[-1] - test[m] < 0.2:
        return float(h["step"].iloc[m]), float("nan")
    return float(h["step"].iloc[m]), crossing(h["step"].to_numpy(), test, m)


def t2_analyse(p: Profile, out: Outputs) -> Outcome:
    hist = gather(out, {f"grok_s{s}": {"seed": s} for s in p.t2_seeds}, "history.parquet")
    table = gather(out, {f"curves_s{s}": {"seed": s} for s in p.t2_seeds}, "curves.parquet")
    per_curve = aucs(table, ["seed", "step", "units", "repeat"])
    keys = ["seed", "step", "units", "repeat"]
    intact = table[table.n_ablated == 0][[*keys, "accuracy"]].rename(columns={"accuracy": "intact"})
    per_curve = per_curve.merge(intact, on=keys, how="left")
    per_curve["relative_auc"] = per_curve["auc"] / per_curve["intact"].clip(lower=1e-9)
    events, leads = [], []
    for s in p.t2_seeds:
        h = hist[hist.seed == s].sort_values("step")
        mem, jump = jump_step(h)
        steps = h["step"].to_numpy()
        start = int(np.searchsorted(steps, mem)) if np.isfinite(mem) else None
        for units in KINDS:
            for r, g in per_curve[(per_curve.seed == s) & (per_curve.units == units)].groupby("repeat"):
                v = g.set_index("step")["relative_auc"].reindex(steps).to_numpy()
                rise = crossing(steps, v, start) if start is not None else float("nan")
                low, high = (v[start], v[-1]) if start is not None else (np.nan, np.nan)
                leads.append((s, units, r, mem, jump, rise, jump - rise, low, high))
        events.append({"seed": s, "memorised_step": mem, "test_jump_step": jump,
                       "final_train_accuracy": float(h.train_accuracy.iloc[-1]),
                       "final_test_accuracy": float(h.test_accuracy.iloc[-1])})  # fmt: skip
    cols = ["seed", "units", "repeat", "memorised_step", "test_jump_step", "auc_rise_step", "lead",
            "auc_memorised", "auc_final"]  # fmt: skip
    leads = pd.DataFrame(leads, columns=cols)
    events = pd.DataFrame(events)
    every = int(p.t2_grok["every"])
    grokked = events.test_jump_step.notna()
    claims = []
    for units, what in KINDS.items():
        sub = leads[(leads.units == units) & leads.lead.notna()]
        lead = _seed_check(sub, "lead", f"test-accuracy jump minus {what} AUC rise, steps", -every / 2)
        sub2 = leads[(leads.units == units) & leads.auc_memorised.notna()].assign(
            rise=lambda d: d.auc_final - d.auc_memorised
        )
        rise = _seed_check(sub2, "rise", f"relative AUC of {what}: final minus at memorisation", 0.0)
        by_step = per_curve[per_curve.units == units].groupby("step")["relative_auc"].mean()
        measured = (
            f"{int(grokked.sum())} of {len(events)} runs grokked (a+b mod {p.t2_grok['p']}, "
            f"{p.t2_grok['frac']:.0%} of pairs trained on, {p.t2_grok['steps']} full-batch steps, "
            f"checkpoints every {every}); memorised at step "
            + ", ".join(fmt(v, 0) for v in events.memorised_step)
            + "; test-accuracy jump at step "
            + ", ".join(fmt(v, 0) for v in events.test_jump_step)
            + f"; relative deletion AUC of the {what} at memorisation / final: "
            + f"{fmt(sub2.auc_memorised.mean())} / {fmt(sub2.auc_final.mean())} (rise {interval(rise)}); "
            + f"lead of the AUC rise over the test jump {interval(lead)} steps (positive: AUC first); "
            + f"relative AUC from {fmt(by_step.iloc[0])} at step 0 to {fmt(by_step.iloc[-1])} at the end"
        )
        claims.append(
            claim(
                f"T2-{units}",
                f"Deletion robustness of the {what} (relative AUC: area under training accuracy vs "
                "fraction deleted, over intact training accuracy) is low while the network memorises and "
                "rises at or before the jump in test accuracy (criteria: rise from memorisation to the end "
                f"> 0; the halfway point of that rise comes no later than half a checkpoint interval "
                f"({every / 2:g} steps) after the halfway point of the test-accuracy jump)",
                "no published measurement; Nanda et al. 2023: the generalising circuit forms during "
                "memorisation, before test accuracy jumps",
                measured,
                {
                    "grokked_runs": int(grokked.sum()),
                    "runs": len(events),
                    "checkpoint_every": every,
                    "lead_steps": _plain_mean(sub["lead"]),
                    "memorised_step": events.memorised_step.tolist(),
                    "test_jump_step": events.test_jump_step.tolist(),
                },
                [lead, rise],
            )
        )
    tables = {"curves": table, "auc": per_curve, "history": hist, "leads": leads, "events": events}
    return Outcome(tables, claims)


def _plain_mean(v: pd.Series) -> float:
    return float(v.mean()) if len(v) else float("nan")


def _seed_check(df: pd.DataFrame, col: str, name: str, criterion: float):
    """``col`` averaged over deletion orders within a run, then over runs: the estimate, a two-level
    bootstrap interval (runs, then orders), and a check that it is above ``criterion``."""
    groups = {"all": [g[col].to_numpy() for _, g in df.groupby("seed")]}
    if not groups["all"]:
        est, ci = float("nan"), (float("nan"), float("nan"))
    else:
        est, ci = bootstrap(groups, lambda m: float(m["all"].mean()))
    n = len(groups["all"])
    return make_check(name, est, ci, criterion=criterion, direction=">", n=n, unit="runs (seeds)")


T2 = Figure(
    "T2",
    "Single directions through grokking (a+b mod p)",
    "beyond the paper: Nanda et al. 2023 grokking, measured by deletion",
    t2_jobs,
    t2_analyse,
)

__all__ = ["T1", "T2", "crossing", "jump_step"]
