"""The follow-up papers: per-class drops, information-ordered ablation, selectivity regulariser, rotation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lesion.analyses import per_class_drops
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
    read,
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
    holds = ratio >= 3 and stat["spearman_rho"] > 0 and stat["spearman_p"] < 0.05
    measured = (
        f"median over {len(t)} live units: overall accuracy drop {fmt(overall, 4)}, largest "
        "single-class drop "
        f"{fmt(per_class, 4)} ({times}); Spearman rho (selectivity, drop on the preferred class) in the last "
        f"conv layer {last} = {fmt(stat['spearman_rho'], 2)} (p = {stat['spearman_p']:.2g}, n = "
        f"{stat['n']}); "
        "other layers: "
        + ", ".join(f"{k} {fmt(v['spearman_rho'], 2)}" for k, v in layers.items() if k != last)
    )
    c = claim(
        "zhou-class-drops",
        "Deleting one unit barely changes overall accuracy but can hurt one class much "
        "more, and selectivity predicts the drop on the unit's preferred class (criterion: median largest "
        "class drop >= 3x median overall drop; in the last conv layer Spearman rho > 0, p < 0.05)",
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
        holds,
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
    a = aucs(table, ["layer", "order", "repeat"]).groupby(["layer", "order"])["auc"].agg(["mean", "std"])
    ok, parts = True, []
    for layer in layers:
        m = a.loc[layer, "mean"]
        ok = ok and m["mutual_info_high"] < m["random"] < m["mutual_info_low"]
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
        ok,
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


def _reg_nets(p: Profile) -> dict[tuple[float, int], Job]:
    return {
        (a, s): train(p, p.small_widths, seed=s, until=False, epochs=p.alpha_epochs, select_reg=a)
        for a in p.alphas
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
    holds = stat["spearman_rho"] > 0.8 and acc[lo] >= acc[zero] - 0.01 and acc[hi] < acc[zero]
    measured = (
        "mean selectivity "
        + ", ".join(f"{fmt(v, 2)} (alpha {k:g})" for k, v in by.mean_selectivity.items())
        + "; test accuracy "
        + ", ".join(f"{fmt(v, 3)} (alpha {k:g})" for k, v in acc.items())
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
        holds,
    )
    return Outcome({"nets": nets}, [c])


LEAVITT = Figure(
    "leavitt-selectivity-reg",
    "Selectivity regulariser sweep",
    "Leavitt & Morcos 2020",
    leavitt_jobs,
    leavitt_analyse,
)


# ---- Bau et al. 2017: the random-rotation control


def rotation_jobs(p: Profile) -> dict[str, Job]:
    net = train(p, corrupt=0.0, seed=p.seeds[0])
    return {
        "rotation": Job(
            "rotation", {"repeats": p.rotation_repeats, "fractions": p.fractions, "seed": 0}, {"model": net}
        )
    }


def rotation_analyse(p: Profile, out: Outputs) -> Outcome:
    table = read(out, "rotation", "curves.parquet")
    info = read(out, "rotation", "information.parquet")
    a = aucs(table, ["basis", "repeat"]).groupby("basis")["auc"].mean()
    med = info.groupby("basis")["mutual_info"].median()
    top = info.groupby("basis")["mutual_info"].quantile(0.9)
    holds = med["units"] > med["random"]
    measured = (
        f"median mutual information with the label {fmt(med['units'])} bits for units vs "
        f"{fmt(med['random'])} "
        f"for random directions (90th percentile {fmt(top['units'])} vs {fmt(top['random'])}); deletion AUC "
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
        holds,
    )
    return Outcome({"curves": table, "information": info}, [c])


ROTATION = Figure(
    "bau-rotation", "Random-rotation control", "Bau et al. 2017", rotation_jobs, rotation_analyse
)
