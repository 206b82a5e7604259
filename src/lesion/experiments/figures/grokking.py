"""Beyond the paper, T2: single directions through grokking.

A one-layer decoder learns a + b mod p (full batch, AdamW with weight decay 1, Nanda et al. 2023 scaled
down); at every checkpoint, the cumulative-deletion AUC of its MLP neurons and of its heads on the training
pairs, against train and test accuracy: does robustness to deletion rise at or before the jump in test
accuracy, i.e. flag generalisation without a test set?
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lesion.experiments.claims import bootstrap, make_check
from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    aucs,
    claim,
    fmt,
    gather,
    interval,
)
from lesion.experiments.figures.plot import (
    ACC,
    Tables,
    band,
    fig_axes,
    ramp,
    save,
)
from lesion.experiments.figures.vit import KINDS
from lesion.experiments.profiles import Profile

# ---- T2: single directions through grokking

MEMORISED = 0.95  # train accuracy at which a network counts as having memorised its training pairs
RELATIVE_FROM = 0.5  # relative AUC (AUC / intact train accuracy) only where intact accuracy reaches this
T2_SIZES = {
    # the one-layer decoder and its full-batch training on a+b mod p (``every``: steps between checkpoints)
    "grok": {"p": 59, "frac": 0.5, "d_model": 64, "n_head": 4, "lr": 3e-3, "weight_decay": 1.0, "steps": 1000,
             "every": 50},
    "seeds": (0, 1),
    "repeats": 3,
    "fractions": 11,
}  # fmt: skip


def t2_jobs(p: Profile) -> dict[str, Job]:
    z, jobs = T2.sizes_in(p), {}
    for s in z["seeds"]:
        device = {"device": p.device} if p.device != "cpu" else {}  # a GPU run: a different job
        net = Job("grok", {**z["grok"], "seed": int(s), "data_seed": 0, **device})
        jobs[f"grok_s{s}"] = net
        params = {"repeats": z["repeats"], "fractions": z["fractions"], "seed": 0}
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


def settled(h: pd.DataFrame) -> pd.DataFrame:
    """The checkpoints of one run's history from memorisation on (the first with train accuracy >=
    ``MEMORISED``), leaving out those in a loss spike (train accuracy below it again): full-batch AdamW
    with weight decay spikes now and then, and a spike is not the trend either claim is about."""
    h = h.sort_values("step")
    fit = h["train_accuracy"].to_numpy() >= MEMORISED
    if not fit.any():
        return h.iloc[:0]
    return h.iloc[int(np.argmax(fit)) :][fit[int(np.argmax(fit)) :]]


def jump_step(h: pd.DataFrame) -> tuple[float, float]:
    """(memorisation step, test-accuracy jump step) of one run's history: the first checkpoint with
    train accuracy >= ``MEMORISED``, then the first settled checkpoint (``settled``) at which test accuracy
    has gone halfway from there to its final value (NaN if it never memorised or test accuracy rose by
    less than 0.2).

    >>> h = pd.DataFrame({"step": [0, 10, 20, 30, 40], "train_accuracy": [0.2, 1, 0.3, 1, 1],
    ...                   "test_accuracy": [0.0, 0.1, 0.9, 0.8, 0.9]})
    >>> jump_step(h)  # step 20 is a spike: left out
    (10.0, 30.0)
    """
    after = settled(h)
    if not len(after):
        return float("nan"), float("nan")
    test = after["test_accuracy"].to_numpy()
    mem = float(after["step"].iloc[0])
    if test[-1] - test[0] < 0.2:
        return mem, float("nan")
    return mem, crossing(after["step"].to_numpy(), test, 0)


def t2_analyse(p: Profile, out: Outputs) -> Outcome:
    seeds, grok = T2.size(p, "seeds"), T2.size(p, "grok")
    hist = gather(out, {f"grok_s{s}": {"seed": s} for s in seeds}, "history.parquet")
    table = gather(out, {f"curves_s{s}": {"seed": s} for s in seeds}, "curves.parquet")
    per_curve = aucs(table, ["seed", "step", "units", "repeat"])
    keys = ["seed", "step", "units", "repeat"]
    intact = table[table.n_ablated == 0][[*keys, "accuracy"]].rename(columns={"accuracy": "intact"})
    per_curve = per_curve.merge(intact, on=keys, how="left")
    # robustness relative to what there is to lose; undefined (NaN) before the net fits its training pairs
    fits = per_curve["intact"] >= RELATIVE_FROM
    per_curve["relative_auc"] = (per_curve["auc"] / per_curve["intact"].clip(lower=1e-9)).where(fits)
    events, leads = [], []
    for s in seeds:
        h = hist[hist.seed == s].sort_values("step")
        mem, jump = jump_step(h)
        steps = settled(h)["step"].to_numpy()
        for units in KINDS:
            for r, g in per_curve[(per_curve.seed == s) & (per_curve.units == units)].groupby("repeat"):
                v = g.set_index("step")["relative_auc"].reindex(steps).to_numpy()
                rise = crossing(steps, v, 0) if len(steps) else float("nan")
                low, high = (v[0], v[-1]) if len(steps) else (np.nan, np.nan)
                leads.append((s, units, r, mem, jump, rise, jump - rise, low, high))
        events.append({"seed": s, "memorised_step": mem, "test_jump_step": jump,
                       "spikes_left_out": int(((h.step > mem) & (h.train_accuracy < MEMORISED)).sum()),
                       "final_train_accuracy": float(h.train_accuracy.iloc[-1]),
                       "final_test_accuracy": float(h.test_accuracy.iloc[-1])})  # fmt: skip
    cols = ["seed", "units", "repeat", "memorised_step", "test_jump_step", "auc_rise_step", "lead",
            "auc_memorised", "auc_final"]  # fmt: skip
    leads = pd.DataFrame(leads, columns=cols)
    events = pd.DataFrame(events)
    every = int(grok["every"])
    grokked = events.test_jump_step.notna()
    claims = []
    for units, what in KINDS.items():
        sub = leads[(leads.units == units) & leads.lead.notna()]
        name = f"step of the test-accuracy jump minus step of the {what}' AUC change (halfway points)"
        lead = _seed_check(sub, "lead", name, -every / 2, len(events))
        sub2 = leads[(leads.units == units) & leads.auc_memorised.notna()].assign(
            rise=lambda d: d.auc_final - d.auc_memorised
        )
        rise = _seed_check(
            sub2, "rise", f"relative AUC of {what}: final minus at memorisation", 0.0, len(events)
        )
        by_step = per_curve[per_curve.units == units].groupby("step")["relative_auc"].mean().dropna()
        measured = (
            f"{int(grokked.sum())} of {len(events)} runs grokked (a+b mod {grok['p']}, "
            f"{grok['frac']:.0%} of pairs trained on, {grok['steps']} full-batch steps, "
            f"checkpoints every {every}); memorised at step "
            + ", ".join(fmt(v, 0) for v in events.memorised_step)
            + "; test-accuracy jump at step "
            + ", ".join(fmt(v, 0) for v in events.test_jump_step)
            + f"; relative deletion AUC of the {what} at memorisation / final: "
            + f"{fmt(sub2.auc_memorised.mean())} / {fmt(sub2.auc_final.mean())} (rise {interval(rise)}); "
            + f"halfway point of that AUC change ({'a rise' if rise.estimate > 0 else 'a fall'}) ahead of "
            + f"the test jump's by {interval(lead)} steps (negative: after it); "
            + f"{int(events.spikes_left_out.sum())} checkpoints in loss spikes left out; "
            + (
                f"relative AUC from {fmt(by_step.iloc[0])} at step {by_step.index[0]} (the first checkpoint "
                f"with train accuracy >= {RELATIVE_FROM}) to {fmt(by_step.iloc[-1])} at the end"
                if len(by_step)
                else f"train accuracy never reached {RELATIVE_FROM}: no relative AUC"
            )
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


def _seed_check(df: pd.DataFrame, col: str, name: str, criterion: float, runs: int):
    """``col`` averaged over deletion orders within a run, then over runs: the estimate, a two-level
    bootstrap interval (runs, then orders), and a check that it is above ``criterion``."""
    groups = {"all": [g[col].to_numpy() for _, g in df.groupby("seed")]}
    if not groups["all"]:  # no run measured it (none grokked): no estimate, n counts the runs there were
        est, ci, n = float("nan"), (float("nan"), float("nan")), runs
    else:
        est, ci = bootstrap(groups, lambda m: float(m["all"].mean()))
        n = len(groups["all"])
    return make_check(name, est, ci, criterion=criterion, direction=">", n=n, unit="runs (seeds)")


def draw_t2(t: Tables, stem: Path) -> list[Path]:
    fig, axes = fig_axes(2, 6.5)
    ax = axes[0]
    hist, auc, ev = t["history"], t["auc"], t["events"]
    band(ax, hist, "step", "train_accuracy", color="0.35", ls="--", label="train accuracy")
    band(ax, hist, "step", "test_accuracy", color="C2", label="test accuracy")
    per_run = auc.groupby(["units", "seed", "step"], as_index=False)["relative_auc"].mean()
    for (units, what), col in zip(KINDS.items(), ("C0", "C3"), strict=True):
        band(ax, per_run[per_run.units == units].dropna(), "step", "relative_auc", color=col, marker="o",
             label=f"deletion AUC / intact, {what} (train acc. >= 0.5)")  # fmt: skip
    for v in ev.test_jump_step.dropna():
        ax.axvline(v, color="C2", lw=0.8, ls=":")
    for v in ev.memorised_step.dropna():
        ax.axvline(v, color="0.35", lw=0.8, ls=":")
    ax.set(
        ylim=(0, 1.4),
        yticks=np.linspace(0, 1, 6),
        xlabel="Training step (full batch); dotted: memorised (grey), test jump (green)",
        ylabel="Accuracy / relative AUC",
        title="Grokking a+b mod p: accuracy and deletion robustness",
    )
    ax.legend(fontsize=7, frameon=False, loc="upper center", ncol=2)
    ax = axes[1]
    cur = t["curves"]
    cur = cur[(cur.units == "neurons") & (cur.seed == cur.seed.min())]
    steps = np.sort(cur.step.unique())
    e = ev[ev.seed == ev.seed.min()].iloc[0]
    marks = [steps[0], e.memorised_step, e.test_jump_step, steps[-1]]
    shown = list(dict.fromkeys(int(steps[np.argmin(np.abs(steps - m))]) for m in marks if np.isfinite(m)))
    for s, col in zip(shown, ramp(len(shown)), strict=True):
        band(ax, cur[cur.step == s], "fraction", "accuracy", color=col, label=f"step {s}")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="Fraction of MLP neurons deleted (random order)",
        ylabel=ACC + ", training pairs",
        title=f"Deletion curves at checkpoints (seed {int(e.seed)})",
    )
    ax.legend(fontsize=8, frameon=False)
    return save(fig, stem)


T2 = Figure(
    "T2",
    "Single directions through grokking (a+b mod p)",
    "beyond the paper: Nanda et al. 2023 grokking, measured by deletion",
    t2_jobs,
    t2_analyse,
    sizes=T2_SIZES,
    draw=draw_t2,
)

__all__ = ["T2", "crossing", "jump_step"]
