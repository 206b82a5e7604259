"""Two follow-ups on what deleted units mean: recovery by retraining (Meyes et al. 2019) and per-class
necessity and sufficiency of a few units (Bau et al. 2020)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesion.experiments.claims import bootstrap_rows, make_check
from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    claim,
    fmt,
    interval,
    read,
    train,
)
from lesion.experiments.figures.plot import (
    Tables,
    band,
    chance_line,
    fig_axes,
    save,
)
from lesion.experiments.profiles import Profile

# ---- Meyes et al. 2019: ablate a group, retrain the rest with the group held at 0

# the fractions of units deleted as a group, random groups per fraction, retraining epochs with the group
# held at 0
MEYES_SIZES = {"fractions": (0.1, 0.25, 0.5, 0.75, 0.9), "repeats": 3, "epochs": 2}


def meyes_jobs(p: Profile) -> dict[str, Job]:
    net = train(p, corrupt=0.0, seed=p.seeds[0])
    params = {
        "fractions": list(MEYES.size(p, "fractions")),
        "repeats": MEYES.size(p, "repeats"),
        "epochs": MEYES.size(p, "epochs"),
        "lr": p.lr,
        "batch_size": p.batch_size,
        "seed": 0,
    }
    return {"recovery": Job("recovery", params, {"model": net})}


def meyes_analyse(p: Profile, out: Outputs) -> Outcome:
    t = read(out, "recovery", "recovery.parquet")
    t["gain"] = t["after"] - t["before"]
    by = t.groupby("fraction")[["before", "after", "gain"]].mean()
    intact, epochs = float(t["intact"].iloc[0]), MEYES.size(p, "epochs")
    gains = {f: g["gain"].to_numpy() for f, g in t.groupby("fraction")}
    est, ci = bootstrap_rows(gains, lambda m: float(np.mean(list(m.values()))))
    gain = make_check(
        "test accuracy after retraining minus right after deletion, mean over fractions",
        est,
        ci,
        criterion=0.0,
        direction=">",
        n=len(t),
        unit="deleted groups",
    )
    top = t[t.fraction == t.fraction.max()]
    share = {"s": ((top.after - top.before) / np.maximum(intact - top.before, 1e-9)).to_numpy()}
    est, ci = bootstrap_rows(share, lambda m: float(m["s"]))
    most = make_check(
        f"share of the lost accuracy recovered at {top.fraction.iloc[0]:.0%} deleted",
        est,
        ci,
        criterion=0.5,
        direction=">",
        n=len(top),
        unit="deleted groups",
    )
    measured = (
        f"intact test accuracy {fmt(intact)}; right after deleting / after {epochs} epochs of "
        "retraining: "
        + ", ".join(f"{f:.0%} deleted {fmt(r.before)} / {fmt(r.after)}" for f, r in by.iterrows())
        + f"; mean gain {interval(gain)}; share of the loss recovered at the largest fraction "
        + interval(most)
    )
    c = claim(
        "meyes-recovery",
        "A network damaged by deleting a group of units recovers when the rest is retrained with the group "
        "held deleted (criterion: test accuracy after retraining above right after deletion, on average "
        "over the fractions deleted; at the largest fraction more than half of the lost accuracy recovered)",
        "Meyes et al. 2019: networks recover from ablation of groups of units with retraining; the more "
        "deleted, the more retraining is needed",
        measured,
        {"intact": intact, "before": by.before.to_dict(), "after": by.after.to_dict()},
        [gain, most],
    )
    return Outcome({"recovery": t}, [c])


def draw_meyes(t: Tables, stem: Path) -> list[Path]:
    fig, (ax,) = fig_axes(1, 7.0)
    r = t["recovery"]
    band(ax, r, "fraction", "before", color="C3", marker="o", label="right after deletion")
    band(ax, r, "fraction", "after", color="C0", marker="o", label="after retraining the rest")
    ax.axhline(r["intact"].iloc[0], color="0.3", lw=1, ls="--", label="intact")
    chance_line(ax)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="Fraction of hidden units deleted (random groups)",
        ylabel="Test accuracy",
        title="Recovery by retraining, deleted units held at 0",
    )
    ax.legend(fontsize=8, frameon=False)
    return save(fig, stem)


MEYES = Figure(
    "meyes-recovery",
    "Recovery by retraining after deletion",
    "Meyes et al. 2019",
    meyes_jobs,
    meyes_analyse,
    sizes=MEYES_SIZES,
    draw=draw_meyes,
)


# ---- Bau et al. 2020: the few units a class needs, and whether they suffice

# the k top units per class (those below the layer's width are measured), random k-unit controls
BAU_SIZES = {"ks": (1, 2, 5, 10, 20, 50, 100, 200), "repeats": 2}


def _layer(p: Profile) -> str:
    return f"relu{len(p.widths)}"


def claim_k(p: Profile) -> int:
    """The k of the claim: Bau et al.'s 20 of 512 units (4%), the nearest k measured."""
    ks = [k for k in BAU2020.size(p, "ks") if k <= p.widths[-1]]
    return min(ks, key=lambda k: abs(k - 0.04 * p.widths[-1]))


def bau_jobs(p: Profile) -> dict[str, Job]:
    net = train(p, corrupt=0.0, seed=p.seeds[0])
    ks = [k for k in BAU2020.size(p, "ks") if k < p.widths[-1]]
    repeats = BAU2020.size(p, "repeats")
    params = {"layer": _layer(p), "ks": ks, "repeats": repeats, "seed": 0, "rank_examples": 5000}
    return {"class_units": Job("class_units", params, {"model": net})}


def bau_analyse(p: Profile, out: Outputs) -> Outcome:
    t = read(out, "class_units", "class_units.parquet")
    t["relative"] = t["class_accuracy"] / t["intact_accuracy"].where(t["intact_accuracy"] > 0)
    k = claim_k(p)
    at = t[t.k == k].groupby(["test", "order", "class"])[["relative", "other_accuracy"]].mean()
    checks = []
    for test, direction, what in (("necessity", "<", "deleting"), ("sufficiency", ">", "keeping only")):
        per_class = {"c": at.loc[(test, "top"), "relative"].to_numpy()}
        est, ci = _class_boot(per_class["c"])
        checks.append(
            make_check(
                f"class accuracy / intact, {what} the class's top {k} units",
                est,
                ci,
                criterion=0.5,
                direction=direction,
                n=len(per_class["c"]),
                unit="classes",
            )
        )
    mean = at.groupby(level=[0, 1]).mean()
    width = p.widths[-1]
    measured = (
        f"{_layer(p)} ({width} units), k = {k}, mean over classes of class accuracy relative to intact: "
        f"deleting the class's top {k} {interval(checks[0])} (random {k}: "
        f"{fmt(mean.loc[('necessity', 'random'), 'relative'])}); keeping only them {interval(checks[1])} "
        f"(random {k}: {fmt(mean.loc[('sufficiency', 'random'), 'relative'])}); accuracy on the other "
        f"classes when only a class's top {k} are kept: "
        + fmt(mean.loc[("sufficiency", "top"), "other_accuracy"])
    )
    c = claim(
        "bau-class-units",
        "A class depends on a few units: deleting the k units most important to a class makes it "
        "collapse, while keeping only those k in the layer leaves it mostly intact (criterion, k about 4% of "
        "the layer, mean over classes of class accuracy relative to intact: below 0.5 after deleting them, "
        "above 0.5 when only they are kept)",
        "Bau et al. 2020 (PNAS): deleting the top ~20 of 512 units can destroy a class; keeping only those "
        "20 leaves it mostly intact",
        measured,
        {
            "k": k,
            "layer": _layer(p),
            "width": width,
            "relative": {f"{a}/{b}": v for (a, b), v in mean["relative"].items()},
        },
        checks,
    )
    return Outcome({"class_units": t}, [c])


def _class_boot(values: np.ndarray) -> tuple[float, tuple[float, float]]:
    v = values[np.isfinite(values)]
    return bootstrap_rows({"c": v}, lambda m: float(m["c"]))


def draw_bau(t: Tables, stem: Path) -> list[Path]:
    fig, axes = fig_axes(2)
    t = t["class_units"]
    for ax, test, title in zip(
        axes,
        ("necessity", "sufficiency"),
        ("Delete a class's top k units", "Keep only a class's top k units"),
        strict=True,
    ):
        for order, col in (("top", "C3"), ("random", "0.5")):
            sub = t[(t.test == test) & (t.order == order)]
            band(ax, sub, "k", "relative", color=col, marker="o", label=f"{order} k: that class")
            if test == "sufficiency":
                m = sub.groupby("k")["other_accuracy"].mean()
                ax.plot(
                    m.index, m.to_numpy(), ls=":", color=col, label=f"{order} k: other classes (accuracy)"
                )
        ax.set(
            xscale="log",
            ylim=(0, 1.1),
            xlabel="k units (log axis)",
            title=title,
            ylabel="Class accuracy / intact (mean ± SD over classes)",
        )
        ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
        ax.legend(fontsize=8, frameon=False)
    return save(fig, stem)


BAU2020 = Figure(
    "bau-class-units",
    "Necessity and sufficiency of a class's top units",
    "Bau et al. 2020",
    bau_jobs,
    bau_analyse,
    sizes=BAU_SIZES,
    draw=draw_bau,
)
