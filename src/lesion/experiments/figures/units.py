"""Figures 5-7: dropout, batch norm, and whether selective units matter more."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from lesion.experiments.claims import (
    bootstrap,
    bootstrap_medians,
    bootstrap_rows,
    correlation_check,
    fisher_ci,
    make_check,
)
from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    accuracy_at,
    aucs,
    by_net,
    claim,
    conv_train,
    corr,
    curves,
    fmt,
    gather,
    hold_fraction,
    interval,
    pval,
    read,
    train,
    units,
)
from lesion.experiments.profiles import Profile

CHANCE = 0.1  # ten classes in every dataset of the profiles


# ---- F5a: dropout protects memorising nets only up to the dropout fraction

# dropout slows memorisation: random-label nets train to ``until`` train accuracy (at most ``max_epochs``)
F5A_SIZES = {"dropouts": (0.1, 0.2, 0.3), "until": 0.95, "max_epochs": 150}


def _dropout_nets(p: Profile) -> dict[tuple[float, float], Job]:
    nets = {}
    for d in F5A.size(p, "dropouts"):
        arch = {"kind": "mlp", "widths": list(p.long_widths), "dropout": d}
        nets[(d, 0.0)] = train(p, arch=arch, subset=True)
        nets[(d, 1.0)] = train(
            p,
            arch=arch,
            corrupt=1.0,
            until_train_acc=F5A.size(p, "until"),
            max_epochs=F5A.size(p, "max_epochs"),
            subset=True,
        )
    return nets


def f5a_jobs(p: Profile) -> dict[str, Job]:
    nets = _dropout_nets(p)
    return {f"dropout{d:g}/corrupt{c:g}": curves(p, n) for (d, c), n in nets.items()} | {
        f"train/dropout{d:g}/corrupt{c:g}": n for (d, c), n in nets.items()
    }


def f5a_analyse(p: Profile, out: Outputs) -> Outcome:
    keys = [(d, c) for d in F5A.size(p, "dropouts") for c in (0.0, 1.0)]
    table = gather(
        out, {f"dropout{d:g}/corrupt{c:g}": {"dropout": d, "corrupt": c} for d, c in keys}, "curves.parquet"
    )
    rows = []
    for d, c in keys:
        h = read(out, f"train/dropout{d:g}/corrupt{c:g}", "history.parquet").iloc[-1]
        sub = table[(table.dropout == d) & (table.corrupt == c)]
        rows.append(
            {
                "dropout": d,
                "corrupt": c,
                "hold_fraction": hold_fraction(sub, CHANCE),
                "train_accuracy": h.train_accuracy,
                "epochs": int(h.epoch),
            }
        )
    holds_t = pd.DataFrame(rows)
    rand = holds_t[holds_t.corrupt == 1.0].set_index("dropout")["hold_fraction"]
    clean = holds_t[holds_t.corrupt == 0.0].set_index("dropout")["hold_fraction"]
    checks = _dropout_checks(p, table, keys)
    measured = (
        "fraction ablated where accuracy falls halfway to chance: random labels "
        + ", ".join(f"{rand[d]:.2f} (dropout {d:g})" for d in rand.index)
        + "; clean labels "
        + ", ".join(f"{clean[d]:.2f} (dropout {d:g})" for d in clean.index)
        + f"; smallest clean minus random gap {interval(checks[0])}"
        + (
            f"; random-label rise from lowest to highest dropout {interval(checks[1])}"
            if len(checks) > 1
            else ""
        )
    )
    c = claim(
        "F5a",
        "Dropout protects memorising (random-label) nets only up to about the dropout fraction; clean "
        "nets hold far longer (criterion: the random-label hold point rises from the lowest to the highest "
        "dropout and stays below the clean net's at every dropout)",
        "2x2048 MNIST MLPs, dropout 0.1/0.2/0.3: random-label nets hold until ~500/900/1300 of 4096 units "
        "(0.12/0.22/0.32); clean nets until ~2500 (0.61)",
        measured,
        {
            "hold_random": {f"{d:g}": v for d, v in rand.items()},
            "hold_clean": {f"{d:g}": v for d, v in clean.items()},
        },
        checks,
    )
    return Outcome({"curves": table, "hold": holds_t}, [c])


def _dropout_checks(p: Profile, table: pd.DataFrame, keys) -> list:
    """Bootstrap over random orders: each net's hold point recomputed from resampled curves."""
    dropouts, arrays = F5A.size(p, "dropouts"), {}
    for d, c in keys:
        sub = table[(table.dropout == d) & (table.corrupt == c)]
        arrays[(d, c)] = sub.pivot_table(index="repeat", columns="fraction", values="accuracy").to_numpy()
    fractions = np.sort(table.fraction.unique())
    n = min(len(a) for a in arrays.values())

    def hold(m, key) -> float:
        curve = m[key]
        below = np.nonzero(curve < CHANCE + 0.5 * (curve[0] - CHANCE))[0]
        return float(fractions[below[0]]) if len(below) else 1.0

    def gap(m) -> float:
        return min(hold(m, (d, 0.0)) - hold(m, (d, 1.0)) for d in dropouts)

    est, ci = bootstrap_rows(arrays, gap)
    out = [
        make_check(
            "smallest hold point of clean minus random-label nets",
            est,
            ci,
            criterion=0.0,
            direction=">",
            n=n,
            unit="random orders per network",
        )
    ]
    if len(dropouts) > 1:
        lo, hi = min(dropouts), max(dropouts)
        est, ci = bootstrap_rows(arrays, lambda m: hold(m, (hi, 1.0)) - hold(m, (lo, 1.0)))
        out.append(
            make_check(
                f"random-label hold point at dropout {hi:g} minus at {lo:g}",
                est,
                ci,
                criterion=0.0,
                direction=">",
                n=n,
                unit="random orders per network",
            )
        )
    return out


F5A = Figure("F5a", "Dropout and memorisation", "Morcos et al. 2018, Fig. 5a", f5a_jobs, f5a_analyse,
             sizes=F5A_SIZES)  # fmt: skip


# ---- F5b: batch norm makes nets more robust to ablation

F5B_SIZES = {"repeats": 3, "fractions": 11}  # the convnets' curves: random orders, points per curve


def _conv_nets(p: Profile) -> dict[tuple[bool, int], Job]:
    return {(bn, s): conv_train(p, batchnorm=bn, seed=s) for bn in (True, False) for s in p.conv_seeds}


def _bn(bn: bool) -> str:
    return "bn" if bn else "nobn"


def f5b_jobs(p: Profile) -> dict[str, Job]:
    nets = _conv_nets(p)
    shape = F5B.sizes_in(p)
    return {f"{_bn(bn)}/seed{s}": curves(p, n, **shape) for (bn, s), n in nets.items()} | {
        f"train/{_bn(bn)}/seed{s}": n for (bn, s), n in nets.items()
    }


def f5b_analyse(p: Profile, out: Outputs) -> Outcome:
    names = {f"{_bn(bn)}/seed{s}": {"batchnorm": bn, "seed": s} for bn, s in _conv_nets(p)}
    table = gather(out, names, "curves.parquet")
    per_curve = aucs(table, ["batchnorm", "seed", "repeat"])
    a = per_curve.groupby("batchnorm")["auc"].mean()
    est, ci = bootstrap(
        by_net(per_curve, "batchnorm", ["seed"], "auc"), lambda m: m[True].mean() - m[False].mean()
    )
    check = make_check(
        "AUC with minus without batch norm",
        est,
        ci,
        criterion=0.0,
        direction=">",
        n=int(per_curve.groupby("batchnorm").size().min()),
        unit="random orders",
    )
    at = accuracy_at(table, 800 / 1536, ["batchnorm"])
    intact = accuracy_at(table, 0.0, ["batchnorm"])
    n = int(table.loc[table.fraction > 0, "n_ablated"].div(table.fraction).median())
    measured = (
        f"AUC {fmt(a[True])} with batch norm vs {fmt(a[False])} without (difference {interval(check)}); "
        "accuracy at 52% of the "
        f"{n} candidate maps ablated: {fmt(at[True], 2)} vs {fmt(at[False], 2)} (intact "
        f"{fmt(intact[True], 2)}"
        f" vs {fmt(intact[False], 2)})"
    )
    c = claim(
        "F5b",
        "Batch norm makes a convnet more robust to cumulative ablation (criterion: AUC with BN > without)",
        "CIFAR-10, at 800 of 1536 maps ablated: accuracy ~0.88 with BN vs ~0.37 without",
        measured,
        {
            "auc_bn": a[True],
            "auc_no_bn": a[False],
            "accuracy_at_52pct_bn": at[True],
            "accuracy_at_52pct_no_bn": at[False],
        },
        [check],
    )
    return Outcome({"curves": table}, [c])


F5B = Figure("F5b", "Batch norm and robustness", "Morcos et al. 2018, Fig. 5b", f5b_jobs, f5b_analyse,
             sizes=F5B_SIZES)  # fmt: skip


# ---- F6: batch norm lowers selectivity and raises mutual information


def f6_jobs(p: Profile) -> dict[str, Job]:
    return {f"{_bn(bn)}/seed{s}": units(p, n, importance=False) for (bn, s), n in _conv_nets(p).items()}


def f6_analyse(p: Profile, out: Outputs) -> Outcome:
    names = {f"{_bn(bn)}/seed{s}": {"batchnorm": bn, "seed": s} for bn, s in _conv_nets(p)}
    table = gather(out, names, "units.parquet")
    conv_layers = [c for c in table.layer.unique() if c != "relu_fc"]
    live = table[table.layer.isin(conv_layers) & ~table.dead]
    med = live.groupby("batchnorm")[["selectivity", "mutual_info"]].median()
    si_p = sps.mannwhitneyu(live[live.batchnorm].selectivity, live[~live.batchnorm].selectivity).pvalue
    mi_p = sps.mannwhitneyu(live[live.batchnorm].mutual_info, live[~live.batchnorm].mutual_info).pvalue
    checks = []
    for col, what, direction in (
        ("selectivity", "selectivity", "<"),
        ("mutual_info", "mutual information", ">"),
    ):
        est, ci = bootstrap_medians(
            {bn: live[live.batchnorm == bn][col] for bn in (True, False)}, lambda m: m[True] - m[False]
        )
        checks.append(
            make_check(
                f"median {what} with minus without batch norm",
                est,
                ci,
                criterion=0.0,
                direction=direction,
                n=len(live),
                unit="feature maps",
            )
        )
    measured = (
        f"median selectivity {fmt(med.selectivity[True])} with BN vs {fmt(med.selectivity[False])} without "
        f"(Mann-Whitney p = {si_p:.2g}); median mutual information {fmt(med.mutual_info[True])} vs "
        f"{fmt(med.mutual_info[False])} bits (p = {mi_p:.2g}); {len(live)} live feature maps of "
        f"{len(conv_layers)} conv layers; differences {interval(checks[0])} (selectivity), "
        f"{interval(checks[1])} (information)"
    )
    c = claim(
        "F6",
        "Batch norm lowers class selectivity and raises mutual information with the label (criterion: "
        "both medians move that way, bootstrap over feature maps)",
        "with BN, selectivity peaks near 0.1; without BN, mass at 0.6-1.0 and a spike at 1.0",
        measured,
        {
            "median_selectivity_bn": med.selectivity[True],
            "median_selectivity_no_bn": med.selectivity[False],
            "median_mi_bn": med.mutual_info[True],
            "median_mi_no_bn": med.mutual_info[False],
            "selectivity_p": si_p,
            "mi_p": mi_p,
        },
        checks,
    )
    return Outcome({"units": table}, [c])


F6 = Figure(
    "F6",
    "Selectivity and information with and without batch norm",
    "Morcos et al. 2018, Fig. 6",
    f6_jobs,
    f6_analyse,
)


# ---- F7: selectivity is a poor predictor of importance


def f7_nets(p: Profile) -> dict[str, Job]:
    return {
        "mlp": train(p, p.small_widths, subset=True),
        "convnet": conv_train(p, batchnorm=True, seed=p.conv_seeds[0]),
    }


def f7_jobs(p: Profile) -> dict[str, Job]:
    return {name: units(p, net) for name, net in f7_nets(p).items()}


def f7_analyse(p: Profile, out: Outputs) -> Outcome:
    table = gather(out, {"mlp": {"net": "mlp"}, "convnet": {"net": "convnet"}}, "units.parquet")
    claims = []
    corrs = []
    for net, label in (("mlp", "MNIST MLP"), ("convnet", "convnet (BN)")):
        t = table[table.net == net]
        pooled = corr(t.selectivity, t.delta_loss)
        layers = {layer: corr(g.selectivity, g.delta_loss) for layer, g in t.groupby("layer", sort=False)}
        corrs += [{"net": net, "layer": "all", **pooled}] + [
            {"net": net, "layer": k, **v} for k, v in layers.items()
        ]
        r = pooled["pearson_r"]
        per_layer = ", ".join(f"{k} {fmt(v['pearson_r'], 2)}" for k, v in layers.items())
        claims.append(
            claim(
                "F7" if net == "mlp" else "F7-conv",
                f"Class selectivity is a poor predictor of a unit's importance ({label}; criterion: "
                "|pooled Pearson r| "
                "< 0.5, its whole 95% interval inside (-0.5, 0.5): selectivity explains < 25% of the "
                "variance of the loss change)",
                "pooled r: MNIST 0.095, CIFAR-10 -0.428, ImageNet -0.012; first layer about -0.7, "
                "deeper layers ~0",
                f"pooled Pearson r (selectivity, loss change when deleted) = {fmt(r, 3)} "
                f"[{', '.join(fmt(v) for v in fisher_ci(r, pooled['n']))}] (p = "
                f"{pval(pooled['pearson_p'])},"
                f" n = {pooled['n']}); per layer: {per_layer}",
                {
                    "pearson_r": r,
                    "pearson_p": pooled["pearson_p"],
                    "spearman_rho": pooled["spearman_rho"],
                    "n": pooled["n"],
                    "per_layer": {k: v["pearson_r"] for k, v in layers.items()},
                },
                [
                    correlation_check(
                        "pooled Pearson r (selectivity, loss change)",
                        r,
                        pooled["n"],
                        criterion=0.5,
                        direction="within",
                        unit="units",
                    )
                ],
            )
        )
    return Outcome({"units": table, "correlations": pd.DataFrame(corrs)}, claims)


F7 = Figure("F7", "Selectivity vs importance", "Morcos et al. 2018, Fig. 7", f7_jobs, f7_analyse)
