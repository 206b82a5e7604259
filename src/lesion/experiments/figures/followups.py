"""Follow-up papers on F1's and F7's networks: per-class drops (Zhou et al. 2018), information-ordered
ablation (Amjad et al. 2018), the random-rotation control (Bau et al. 2017)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesion.analyses.paper import per_class_drops
from lesion.experiments.claims import (
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
    fmt,
    gather,
    interval,
    read,
    train,
    units,
)
from lesion.experiments.figures.plot import (
    Tables,
    band,
    chance_line,
    curve_axes,
    fig_axes,
    save,
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


def draw_zhou(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = fig_axes(2)
    u = t["units"].nlargest(40, "max_class_drop")
    cls = [c for c in t["units"].columns if c.startswith("delta_accuracy_class_")]
    mat = -u[cls].to_numpy()
    im = ax.imshow(mat, aspect="auto", cmap="magma_r", vmin=0, vmax=max(mat.max(), 1e-6))
    ax.set_xticks(range(len(cls)), [c.rsplit("_", 1)[1] for c in cls])
    ax.set_yticks(range(len(u)), [f"{a}:{b}" for a, b in zip(u.layer, u.unit, strict=True)], fontsize=5)
    ax.set(xlabel="Class", title="Accuracy drop per class, 40 most damaging units")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="Drop in class accuracy")
    a = t["units"]
    last = [layer for layer in dict.fromkeys(a.layer) if layer != "relu_fc"][-1]
    rest, top = a[a.layer != last], a[a.layer == last]
    ax2.scatter(
        rest.selectivity, rest.preferred_class_drop, s=8, alpha=0.5, lw=0, color="0.65", label="other layers"
    )
    ax2.scatter(top.selectivity, top.preferred_class_drop, s=14, alpha=0.8, lw=0, color="C3", label=last)
    ax2.set(
        xlabel="Class selectivity index",
        ylabel="Accuracy drop on the unit's preferred class",
        title="Selectivity vs drop on the preferred class",
    )
    ax2.legend(fontsize=8, frameon=False, markerscale=2)
    return save(fig, stem)


ZHOU = Figure(
    "zhou-class-drops",
    "Per-unit x per-class accuracy drops",
    "Zhou et al. 2018",
    zhou_jobs,
    zhou_analyse,
    draw=draw_zhou,
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


def draw_amjad(t: Tables, stem: Path) -> list[Path]:
    cur = t["curves"]
    layers = list(dict.fromkeys(cur.layer))
    fig, axes = fig_axes(len(layers), 5.5)
    styles = {
        "mutual_info_high": ("C3", "-"),
        "mutual_info_low": ("C3", "--"),
        "selectivity_high": ("C0", "-"),
        "selectivity_low": ("C0", "--"),
    }
    for ax, layer in zip(axes, layers, strict=True):
        sub = cur[cur.layer == layer]
        band(
            ax, sub[sub.order == "random"], "fraction", "accuracy", color="black", label="random (mean ± SD)"
        )
        for order, (col, ls) in styles.items():
            c = sub[sub.order == order].sort_values("fraction")
            ax.plot(
                c.fraction, c.accuracy, color=col, ls=ls, lw=1.6, label=order.replace("_", " ") + " first"
            )
        chance_line(ax)
        curve_axes(ax, f"Ordered ablation within {layer}")
        ax.set_xlabel(f"Fraction of {layer}'s units ablated")
    axes[0].legend(fontsize=8, frameon=False)
    return save(fig, stem)


AMJAD = Figure(
    "amjad-info-order",
    "Information-ordered ablation vs random",
    "Amjad et al. 2018",
    amjad_jobs,
    amjad_analyse,
    draw=draw_amjad,
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


def draw_rotation(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax2) = fig_axes(2)
    cur = t["curves"]
    band(ax, cur[cur.basis == "units"], "fraction", "accuracy", color="C0", label="units")
    band(
        ax,
        cur[cur.basis == "random"],
        "fraction",
        "accuracy",
        color="C1",
        label="random orthonormal directions",
    )
    chance_line(ax)
    curve_axes(ax, "Deleting units vs random directions")
    ax.set_xlabel("Fraction of each layer's dimensions deleted")
    ax.legend(fontsize=8, frameon=False)
    info = t["information"]
    bins = np.linspace(0, max(info.mutual_info.max(), 1e-6), 30)
    for basis, col in (("units", "C0"), ("random", "C1")):
        ax2.hist(
            info[info.basis == basis].mutual_info,
            bins=bins,
            alpha=0.5,
            color=col,
            density=True,
            label="units" if basis == "units" else "random directions",
        )
    ax2.set(
        xlabel="Mutual information with the label (bits)",
        ylabel="Density",
        title="Class information per direction",
    )
    ax2.legend(fontsize=8, frameon=False)
    return save(fig, stem)


ROTATION = Figure(
    "bau-rotation",
    "Random-rotation control",
    "Bau et al. 2017",
    rotation_jobs,
    rotation_analyse,
    sizes={"repeats": 3},  # random orders per basis (the units', a random rotation's)
    draw=draw_rotation,
)
