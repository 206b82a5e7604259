"""Leavitt & Morcos 2020: a selectivity regulariser, and what it does to accuracy and robustness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lesion.experiments.claims import (
    bootstrap,
    make_check,
)
from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    claim,
    corr,
    final_metrics,
    fmt,
    interval,
    read,
    spearman,
    train,
    units,
)
from lesion.experiments.figures.plot import (
    Tables,
    band,
    fig_axes,
    save,
)
from lesion.experiments.profiles import Profile

# ---- Leavitt & Morcos 2020: a selectivity regulariser

LEAVITT_SIZES = {"alphas": (-10.0, -1.0, 0.0, 1.0, 10.0), "epochs": 10}  # regulariser strengths, epochs


def _reg_nets(p: Profile) -> dict[tuple[float, int], Job]:
    epochs = LEAVITT.size(p, "epochs")
    return {
        (a, s): train(p, p.small_widths, seed=s, until=False, epochs=epochs, select_reg=a, subset=True)
        for a in LEAVITT.size(p, "alphas")
        for s in p.seeds
    }


def leavitt_jobs(p: Profile) -> dict[str, Job]:
    nets = _reg_nets(p)
    return {f"units/a{a:g}/s{s}": units(p, n, importance=False) for (a, s), n in nets.items()} | {
        f"train/a{a:g}/s{s}": n for (a, s), n in nets.items()
    }


def leavitt_analyse(p: Profile, out: Outputs) -> Outcome:
    rows = []
    for a, s in _reg_nets(p):
        u = read(out, f"units/a{a:g}/s{s}", "units.parquet")
        rows.append(
            {
                "alpha": a,
                "seed": s,
                "mean_selectivity": u.selectivity.mean(),
                "dead": int(u.dead.sum()),
                **final_metrics(out, f"train/a{a:g}/s{s}"),
            }
        )
    nets = pd.DataFrame(rows)
    by = nets.groupby("alpha")[["mean_selectivity", "test_accuracy"]].mean()
    lo, zero, hi = by.index.min(), 0.0 if 0.0 in by.index else by.index[len(by) // 2], by.index.max()
    stat = corr(nets.alpha, nets.mean_selectivity)
    acc = by.test_accuracy
    checks = _leavitt_checks(nets, lo, zero, hi)
    measured = (
        "mean selectivity "
        + ", ".join(f"{fmt(v, 2)} (alpha {k:g})" for k, v in by.mean_selectivity.items())
        + "; test accuracy "
        + ", ".join(f"{fmt(v, 3)} (alpha {k:g})" for k, v in acc.items())
        + f"; Spearman rho (alpha, selectivity) {interval(checks[0])}; accuracy change at alpha {lo:g} "
        f"{interval(checks[1])}, at alpha {hi:g} {interval(checks[2])}"
    )
    c = claim(
        "leavitt-selectivity-reg",
        "A selectivity regulariser moves selectivity as asked; lowering it does not "
        "hurt test accuracy, raising it does (criterion: Spearman rho(alpha, mean SI) > 0.8, accuracy at the "
        "lowest alpha >= accuracy at alpha 0 - 0.01, accuracy at the highest alpha < accuracy at alpha 0)",
        "Leavitt & Morcos 2020: reducing class selectivity has little effect on or even improves test "
        "accuracy; increasing it impairs accuracy",
        measured,
        {
            "spearman_rho_alpha_si": stat["spearman_rho"],
            "accuracy_by_alpha": {f"{k:g}": v for k, v in acc.items()},
            "selectivity_by_alpha": {f"{k:g}": v for k, v in by.mean_selectivity.items()},
        },
        checks,
    )
    return Outcome({"nets": nets}, [c])


def _leavitt_checks(nets: pd.DataFrame, lo: float, zero: float, hi: float) -> list:
    """Bootstrap over the networks (seeds) of each alpha."""
    alphas = sorted(nets.alpha.unique())
    si = {a: [[v] for v in nets[nets.alpha == a].mean_selectivity] for a in alphas}
    acc = {a: [[v] for v in nets[nets.alpha == a].test_accuracy] for a in (lo, zero, hi)}
    n = len(nets)

    def rho(m) -> float:
        return spearman(
            np.concatenate([[a] * len(m[a]) for a in alphas]), np.concatenate([m[a] for a in alphas])
        )

    est, ci = bootstrap(si, rho)
    out = [
        make_check(
            "Spearman rho (alpha, mean selectivity)",
            est,
            ci,
            criterion=0.8,
            direction=">",
            n=n,
            unit="networks",
        )
    ]
    est, ci = bootstrap(acc, lambda m: m[lo].mean() - m[zero].mean())
    out.append(
        make_check(
            f"test accuracy at alpha {lo:g} minus at {zero:g}",
            est,
            ci,
            criterion=-0.01,
            direction=">",
            n=n,
            unit="networks",
        )
    )
    est, ci = bootstrap(acc, lambda m: m[hi].mean() - m[zero].mean())
    out.append(
        make_check(
            f"test accuracy at alpha {hi:g} minus at {zero:g}",
            est,
            ci,
            criterion=0.0,
            direction="<",
            n=n,
            unit="networks",
        )
    )
    return out


def draw_leavitt(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = fig_axes(2)
    nets = t["nets"].assign(x=lambda d: d.alpha.rank(method="dense"))
    ticks = nets.drop_duplicates("alpha").sort_values("alpha")
    for a, col, ylabel in (
        (ax, "mean_selectivity", "Mean class selectivity"),
        (ax2, "test_accuracy", "Test accuracy"),
    ):
        band(a, nets, "x", col, color="C0", label="mean ± SD over seeds", marker="o")
        a.scatter(nets.x, nets[col], color="0.3", s=12, zorder=3, label="one network")
        a.set_xticks(ticks.x, [f"{v:g}" for v in ticks.alpha])
        a.set(xlabel="Regulariser strength alpha (< 0 lowers selectivity)", ylabel=ylabel)
        a.legend(fontsize=8, frameon=False)
    ax.set_title("Selectivity moves as the regulariser asks")
    ax2.set_title("and test accuracy")
    return save(fig, stem)


LEAVITT = Figure(
    "leavitt-selectivity-reg",
    "Selectivity regulariser sweep",
    "Leavitt & Morcos 2020",
    leavitt_jobs,
    leavitt_analyse,
    sizes=LEAVITT_SIZES,
    draw=draw_leavitt,
)
