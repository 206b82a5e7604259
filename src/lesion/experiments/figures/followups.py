"""The follow-up papers: per-class drops, information-ordered ablation, selectivity regulariser, rotation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lesion.analyses.paper import per_class_drops
from lesion.experiments.claims import (
    bootstrap,
    bootstrap_medians,
    bootstrap_rows,
    correlation_check,
    make_check,
)
from lesion.experiments.figures.common import (
    Figure,
    Job,
    Outcome,
    Outputs,
    aucs,
    claim,
    corr,
    curves,
    final_metrics,
    fmt,
    gather,
    interval,
    read,
    spearman,
    train,
    units,
)
from lesion.experiments.figures.units import f7_nets
from lesion.experiments.profiles import Profile

# ---- Zhou et al. 2018: one unit barely moves overall accuracy but can wreck one class


def zhou_jobs(p: Profile) -> dict[str, Job]:
    return {"units": units(p, f7_nets(p)["convnet"])}


def zhou_analyse(p: Profile, out: Outputs) -> Outcome:
    t = read(out, "units", "units.parquet")
    t = t[~t.dead].reset_index(drop=True)
    drops = per_class_drops(t)
    worst = drops.groupby(["layer", "unit"], sort=False)["delta_accuracy"].min().to_numpy()
    t["max_class_drop"] = -worst
    t["preferred_class_drop"] = [
        -t.at[i, f"delta_accuracy_class_{c}"] for i, c in enumerate(t.preferred_class)
    ]
    overall = float(np.median(-t.delta_accuracy))
    per_class = float(np.median(t.max_class_drop))
    # Zhou et al. correlate within one layer, the last conv layer; other layers are listed for context
    layers = {
        layer: corr(g.selectivity, g.preferred_class_drop) for layer, g in t.groupby("layer", sort=False)
    }
    last = [layer for layer in layers if layer != "relu_fc"][-1]
    stat = layers[last]
    ratio = per_class / overall if overall > 0 else float("inf")
    times = f"{ratio:.1f}x" if np.isfinite(ratio) else "overall drop 0"
    rho = correlation_check(
        f"Spearman rho (selectivity, preferred-class drop) in {last}",
        stat["spearman_rho"],
        stat["n"],
        criterion=0.0,
        direction=">",
        unit="units",
        spearman=True,
    )
    est, ci = bootstrap_medians(
        {"class": t.max_class_drop, "all": -t.delta_accuracy}, lambda m: m["class"] - 3 * m["all"]
    )
    spread = make_check(
        "median largest class drop minus 3x median overall drop",
        est,
        ci,
        criterion=0.0,
        direction=">",
        n=len(t),
        unit="units",
    )
    measured = (
        f"median over {len(t)} live units: overall accuracy drop {fmt(overall, 4)}, largest "
        "single-class drop "
        f"{fmt(per_class, 4)} ({times}); Spearman rho (selectivity, drop on the preferred class) in the last "
        f"conv layer {last} = {interval(rho)} (p = {stat['spearman_p']:.2g}, n = "
        f"{stat['n']}); "
        "other layers: "
        + ", ".join(f"{k} {fmt(v['spearman_rho'], 2)}" for k, v in layers.items() if k != last)
    )
    c = claim(
        "zhou-class-drops",
        "Deleting one unit barely changes overall accuracy but can hurt one class much "
        "more, and selectivity predicts the drop on the unit's preferred class (criterion: in the last conv "
        "layer Spearman rho > 0, its 95% interval above 0; median largest class drop > 3x median overall "
        "drop)",
        "Zhou et al. 2018 (Places/ImageNet CNNs): single-unit ablation changes overall accuracy little but "
        "some classes a lot; class selectivity correlates with the per-class drop",
        measured,
        {
            "median_overall_drop": overall,
            "median_max_class_drop": per_class,
            "ratio": ratio,
            "spearman_rho": stat["spearman_rho"],
            "spearman_p": stat["spearman_p"],
            "n": stat["n"],
            "layer": last,
            "spearman_rho_by_layer": {k: v["spearman_rho"] for k, v in layers.items()},
        },
        [rho, spread],
    )
    return Outcome({"units": t, "class_drops": drops}, [c])


ZHOU = Figure(
    "zhou-class-drops", "Per-unit x per-class accuracy drops", "Zhou et al. 2018", zhou_jobs, zhou_analyse
)


# ---- Amjad et al. 2018: information-ordered cumulative ablation against the random baseline

ORDERS = ("random", "mutual_info_high", "mutual_info_low", "selectivity_high", "selectivity_low")


def _mlp_layers(widths) -> list[str]:
    return [f"relu{i}" for i in range(1, len(widths) + 1)]


def amjad_jobs(p: Profile) -> dict[str, Job]:
    """Per layer, as Amjad et al. analyse it: orders within one layer are not confounded by which layer
    a ranking happens to empty first."""
    net = train(p, corrupt=0.0, seed=p.seeds[0])
    ranks = units(p, net, importance=False)
    return {
        layer: curves(p, net, orders=ORDERS, units=ranks, candidates=[layer])
        for layer in _mlp_layers(p.widths)
    }


def amjad_analyse(p: Profile, out: Outputs) -> Outcome:
    layers = _mlp_layers(p.widths)
    table = gather(out, {layer: {"layer": layer} for layer in layers}, "curves.parquet")
    per_curve = aucs(table, ["layer", "order", "repeat"])
    a = per_curve.groupby(["layer", "order"])["auc"].agg(["mean", "std"])
    checks, parts = [], []
    for layer in layers:
        m = a.loc[layer, "mean"]
        rand = per_curve[(per_curve.layer == layer) & (per_curve.order == "random")]["auc"].to_numpy()
        for order, sign, what in (
            ("mutual_info_high", 1, "random minus MI-high-first"),
            ("mutual_info_low", -1, "MI-low-first minus random"),
        ):
            est, ci = bootstrap_rows({"r": rand}, lambda mm, v=m[order], s=sign: s * (mm["r"] - v))
            checks.append(
                make_check(
                    f"{layer}: AUC {what}",
                    est,
                    ci,
                    criterion=0.0,
                    direction=">",
                    n=len(rand),
                    unit="random orders",
                )
            )
        parts.append(
            f"{layer}: random {fmt(m['random'])} ± {fmt(a.loc[(layer, 'random'), 'std'])}, "
            + ", ".join(f"{o.replace('_', ' ')} first {fmt(m[o])}" for o in ORDERS[1:])
        )
    c = claim(
        "amjad-info-order",
        "Within a layer, deleting the units with the most mutual information with the label first hurts more "
        "than a random order, the least informative first hurts less (criterion, in every layer: AUC(MI high "
        "first) < AUC(random) < AUC(MI low first))",
        "Amjad et al. 2018: cumulative ablation ordered by entropy, mutual information or "
        "selectivity departs "
        "from random ablation; information measures identify important units only in part",
        "AUC per layer: " + "; ".join(parts),
        {f"{layer}/{o}": a.loc[(layer, o), "mean"] for layer in layers for o in ORDERS},
        checks,
    )
    return Outcome({"curves": table}, [c])


AMJAD = Figure(
    "amjad-info-order",
    "Information-ordered ablation vs random",
    "Amjad et al. 2018",
    amjad_jobs,
    amjad_analyse,
)


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


LEAVITT = Figure(
    "leavitt-selectivity-reg",
    "Selectivity regulariser sweep",
    "Leavitt & Morcos 2020",
    leavitt_jobs,
    leavitt_analyse,
    sizes=LEAVITT_SIZES,
)


# ---- Bau et al. 2017: the random-rotation control


def rotation_jobs(p: Profile) -> dict[str, Job]:
    net = train(p, corrupt=0.0, seed=p.seeds[0])
    params = {"repeats": ROTATION.size(p, "repeats"), "fractions": p.fractions, "seed": 0}
    return {"rotation": Job("rotation", params, {"model": net})}


def rotation_analyse(p: Profile, out: Outputs) -> Outcome:
    table = read(out, "rotation", "curves.parquet")
    info = read(out, "rotation", "information.parquet")
    a = aucs(table, ["basis", "repeat"]).groupby("basis")["auc"].mean()
    med = info.groupby("basis")["mutual_info"].median()
    top = info.groupby("basis")["mutual_info"].quantile(0.9)
    est, ci = bootstrap_medians(
        {b: info[info.basis == b].mutual_info for b in ("units", "random")},
        lambda m: m["units"] - m["random"],
    )
    check = make_check(
        "median mutual information, units minus random directions",
        est,
        ci,
        criterion=0.0,
        direction=">",
        n=len(info),
        unit="directions",
    )
    measured = (
        f"median mutual information with the label {fmt(med['units'])} bits for units vs "
        f"{fmt(med['random'])} "
        f"for random directions (difference {interval(check)}; 90th percentile {fmt(top['units'])} vs "
        f"{fmt(top['random'])}); deletion AUC "
        f"{fmt(a['units'])} (units) vs {fmt(a['random'])} (random directions)"
    )
    c = claim(
        "bau-rotation",
        "Units are a privileged basis for interpretation: randomly rotating the basis lowers "
        "how much single directions say about the class (criterion: median mutual information of units > "
        "of random directions); deletion AUC is reported for both bases",
        "Bau et al. 2017: interpretability (unit-concept alignment) falls under random rotations "
        "of a layer's "
        "basis; Morcos et al. 2018: random directions are about as important as units",
        measured,
        {
            "median_mi_units": med["units"],
            "median_mi_random": med["random"],
            "auc_units": a["units"],
            "auc_random": a["random"],
        },
        [check],
    )
    return Outcome({"curves": table, "information": info}, [c])


ROTATION = Figure(
    "bau-rotation",
    "Random-rotation control",
    "Bau et al. 2017",
    rotation_jobs,
    rotation_analyse,
    sizes={"repeats": 3},  # random orders per basis (the units', a random rotation's)
)
