"""The training-set-size study: does memorising more examples make a network rely more on single
directions? Figure 1's networks (clean and fully shuffled labels) trained on growing subsets of the
training set, read at 400 of 1,024 units deleted (39%), where the paper reports ~0.97 (clean) and ~0.30
(100% shuffled) on 60,000 MNIST images and our 4,000-image networks keep ~0.60.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesion.experiments.claims import bootstrap, make_check
from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    accuracy_at,
    claim,
    curves,
    final_metrics,
    fmt,
    gather,
    interval,
    train,
)
from lesion.experiments.figures.plot import (
    ACC,
    Tables,
    band,
    chance_line,
    fig_axes,
    ramp,
    save,
)
from lesion.experiments.profiles import Profile

AT = 400 / 1024  # the paper reads its MNIST curves at 400 of 1,024 units deleted


def _full_size(p: Profile) -> int:
    from lesion.data import load_dataset

    return len(load_dataset(p.dataset, root=p.root).y_train)


def _nets(p: Profile) -> dict[tuple[int, float, int], Job]:
    full = _full_size(p)
    sizes = sorted({min(n, full) for n in SIZE.size(p, "train_sizes")})
    return {
        (n, c, s): train(p, corrupt=c, seed=s, train_size=None if n >= full else n)  # the full set: F1's nets
        for n in sizes
        for c in (0.0, 1.0)
        for s in p.seeds
    }


def _name(n: int, c: float, s: int) -> str:
    return f"n{n}/corrupt{c:g}/seed{s}"


def size_jobs(p: Profile) -> dict[str, Job]:
    nets = _nets(p)
    return {_name(*key): curves(p, net) for key, net in nets.items()} | {
        f"train/{_name(*key)}": net for key, net in nets.items()
    }


def size_analyse(p: Profile, out: Outputs) -> Outcome:
    keys = list(_nets(p))
    table = gather(
        out,
        {_name(n, c, s): {"train_size": n, "corrupt": c, "seed": s} for n, c, s in keys},
        "curves.parquet",
    )
    at = accuracy_at(table, AT, ["train_size", "corrupt", "seed", "repeat"]).rename("accuracy").reset_index()
    nets = pd.DataFrame(
        [
            {"train_size": n, "corrupt": c, "seed": s, **final_metrics(out, f"train/{_name(n, c, s)}")}
            for n, c, s in keys
        ]
    )
    nets["memorised"] = nets.train_accuracy >= p.until_train_acc
    sizes = sorted(at.train_size.unique())
    # the claim is about networks that memorise: compare up to the largest size where all of them did
    done = nets[nets.corrupt == 1.0].groupby("train_size")["memorised"].all()
    lo, hi = sizes[0], max([n for n in sizes if done[n]], default=sizes[0])
    mean = at.groupby(["corrupt", "train_size"])["accuracy"].mean()
    short = nets[~nets.memorised]
    checks = []
    for c in (1.0, 0.0):
        sub = at[at.corrupt == c]
        groups = {
            n: [g["accuracy"].to_numpy() for _, g in sub[sub.train_size == n].groupby("seed")]
            for n in (lo, hi)
        }
        est, ci = bootstrap(groups, lambda m: m[hi].mean() - m[lo].mean())
        if hi == lo:  # no size beyond the smallest where the nets memorised: nothing to compare
            ci = (float("nan"), float("nan"))
        what = "100% shuffled" if c else "clean"
        checks.append(
            make_check(
                f"{what}: accuracy at 39% deleted, {hi:,} minus {lo:,} training images",
                est,
                ci,
                criterion=0.0,
                direction="<",
                n=sum(len(v) for v in groups.values()),
                unit="networks",
            )
        )
    measured = (
        "accuracy at 39% of units deleted (on the labels trained on), by training-set size: 100% shuffled "
        + ", ".join(f"{fmt(mean[(1.0, n)], 2)} ({n:,})" for n in sizes)
        + "; clean "
        + ", ".join(f"{fmt(mean[(0.0, n)], 2)} ({n:,})" for n in sizes)
        + f"; change for shuffled labels {interval(checks[0])}, for clean {interval(checks[1])}"
        + "".join(
            f"; not memorised (excluded from the comparison): {r.train_size:,} images, "
            f"{r.corrupt:.0%} shuffled, seed {r.seed}, training accuracy {fmt(r.train_accuracy, 2)} "
            f"after {r.epochs} epochs"
            for r in short.itertuples()
        )
    )
    c = claim(
        "size-study",
        "Memorising more examples makes a network rely more on single directions: with fully shuffled "
        "labels, accuracy at 400 of 1,024 units deleted falls as the training set grows (criterion: "
        f"accuracy at the largest size where every shuffled-label net memorised ({hi:,}) minus at the "
        f"smallest ({lo:,}) below 0; the clean nets' change is reported beside it)",
        "Morcos et al. 2018 on 60,000 MNIST images: ~0.97 (clean) vs ~0.30 (100% shuffled) at 400 of 1,024 "
        "units deleted; our mnist5k (4,000 images) networks keep ~0.60 with shuffled labels",
        measured,
        {"accuracy": {f"{c:g}/{n}": v for (c, n), v in mean.items()}, "sizes": sizes},
        checks[:1],
    )
    return Outcome({"curves": table, "at_39pct": at, "nets": nets}, [c])


def draw_size(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = fig_axes(2)
    cur = t["curves"]
    sizes = sorted(cur.train_size.unique())
    for n, col in zip(sizes, ramp(len(sizes)), strict=True):
        for c, ls, what in ((0.0, "-", "clean"), (1.0, "--", "100% shuffled")):
            sub = cur[(cur.train_size == n) & (cur.corrupt == c)]
            band(ax, sub, "fraction", "accuracy", color=col, ls=ls, label=f"{n:,} images, {what}")
    ax.axvline(400 / 1024, color="0.4", lw=0.8, ls=":")
    chance_line(ax)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="Fraction of hidden units ablated (dotted: 400 of 1,024)",
        ylabel=ACC + ", trained labels",
        title="Cumulative ablation by training-set size",
    )
    ax.legend(fontsize=7, frameon=False)
    at = t["at_39pct"]
    for c, col, what in ((0.0, "C0", "clean labels"), (1.0, "C3", "100% shuffled")):
        per_net = at[at.corrupt == c].groupby(["train_size", "seed"])["accuracy"].mean().reset_index()
        m = per_net.groupby("train_size")["accuracy"].mean()
        ax2.plot(m.index, m.to_numpy(), "o-", color=col, label=what)
        ax2.scatter(per_net.train_size, per_net.accuracy, color=col, s=12, alpha=0.6)
    if "nets" in t:
        short = t["nets"][~t["nets"].memorised]
        acc = at.groupby(["train_size", "corrupt", "seed"])["accuracy"].mean()
        if len(short):
            ys = [acc[(r.train_size, r.corrupt, r.seed)] for r in short.itertuples()]
            ax2.scatter(
                short.train_size,
                ys,
                marker="x",
                color="black",
                s=60,
                zorder=4,
                label="did not reach the training-accuracy target",
            )
    ax2.set(
        xscale="log",
        ylim=(0, 1.02),
        xlabel="Training images (log axis)",
        ylabel="Accuracy at 39% of units deleted",
        title="Reliance on single directions vs data size",
    )
    ax2.legend(fontsize=8, frameon=False)
    return save(fig, stem)


SIZE = Figure(
    "size-study",
    "Training-set size and reliance on single directions",
    "Morcos et al. 2018, Fig. 1 at several training-set sizes",
    size_jobs,
    size_analyse,
    sizes={"train_sizes": (1000, 2000, 4000)},  # training-set sizes (one at or above the full set: F1's nets)
    draw=draw_size,
)
