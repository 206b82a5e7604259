"""Figure 4a-b: ablation AUC and test loss over training, with Adam and with plain SGD (momentum 0.9).

The paper's replications trained with SGD; our quick profile's other networks use Adam. The AUC is
plotted normalised by its maximum over checkpoints, as the paper plots it. Whether AUC *falls* after the
test-loss minimum is tested per optimiser with a bootstrap over random ablation orders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lesion.experiments.claims import bootstrap_rows, correlation_check, make_check
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
    pval,
    read,
    train,
)
from lesion.experiments.figures.plot import (
    Tables,
    fig_axes,
    save,
)
from lesion.experiments.profiles import Profile

OPTIMIZERS = ("adam", "sgd")
# measured at each checkpoint (epochs) of nets trained for ``epochs``, on past the test-loss minimum; the
# SGD net with momentum 0.9 at ``sgd_lr``, as the paper's replications trained
F4_SIZES = {"checkpoints": (0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32), "epochs": 32, "sgd_lr": 0.01}


def _long(p: Profile, optimizer: str = "adam") -> Job:
    opts = {"optimizer": "sgd", "lr": F4.size(p, "sgd_lr")} if optimizer == "sgd" else {}
    return train(
        p,
        p.long_widths,
        until=False,
        epochs=F4.size(p, "epochs"),
        checkpoints=list(F4.size(p, "checkpoints")),
        subset=True,
        **opts,
    )


def _ckpt(epoch: float) -> str:
    from lesion.training.loop import checkpoint_name

    return checkpoint_name(epoch)


def f4_jobs(p: Profile) -> dict[str, Job]:
    jobs = {}
    for opt in OPTIMIZERS:
        net = _long(p, opt)
        for e in F4.size(p, "checkpoints"):
            jobs[f"{opt}/curves/{e:g}"] = curves(p, net, checkpoint=_ckpt(e))
            jobs[f"{opt}/metrics/{e:g}"] = Job("evaluate", {"checkpoint": _ckpt(e)}, {"model": net})
    return jobs


def _checkpoints(p: Profile, out: Outputs, opt: str, per_curve: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for e in F4.size(p, "checkpoints"):
        m = read(out, f"{opt}/metrics/{e:g}", "metrics.parquet").set_index("split")
        a = per_curve[per_curve.epoch == e]["auc"]
        rows.append(
            {
                "optimizer": opt,
                "epoch": float(e),
                "auc": a.mean(),
                "auc_sd": a.std(ddof=1),
                "test_loss": m.loss["test"],
                "test_accuracy": m.accuracy["test"],
                "train_accuracy": m.accuracy["train"],
            }
        )
    ep = pd.DataFrame(rows)
    ep["auc_normalised"] = ep["auc"] / ep["auc"].max()
    return ep


def _over_training_checks(ep: pd.DataFrame, per_curve: pd.DataFrame, opt: str) -> list:
    """Peak near the test-loss minimum (|argmax - argmin| <= 1 checkpoint) and a fall after it."""
    epochs = list(ep.epoch)
    i_loss, last = int(ep.test_loss.idxmin()), len(epochs) - 1
    arrays = {
        i: per_curve[per_curve.epoch == e].sort_values("repeat")["auc"].to_numpy()
        for i, e in enumerate(epochs)
    }
    n = min(len(v) for v in arrays.values())

    def apart(m) -> float:
        return abs(int(np.argmax([m[i] for i in range(len(epochs))])) - i_loss)

    def fall(m) -> float:
        return (m[last] - m[i_loss]) / max(m.values())

    est, ci = bootstrap_rows(arrays, apart)
    near = make_check(
        f"{opt}: checkpoints between the AUC peak and the test-loss minimum",
        est,
        ci,
        criterion=1.5,
        direction="<",
        n=n,
        unit="random orders",
    )
    est, ci = bootstrap_rows(arrays, fall)
    falls = make_check(
        f"{opt}: normalised AUC at the last checkpoint minus at the test-loss minimum",
        est,
        ci,
        criterion=0.0,
        direction="<",
        n=n,
        unit="random orders",
    )
    return [near, falls]


def f4_analyse(p: Profile, out: Outputs) -> Outcome:
    names = {
        f"{o}/curves/{e:g}": {"optimizer": o, "epoch": float(e)}
        for o in OPTIMIZERS
        for e in F4.size(p, "checkpoints")
    }
    table = gather(out, names, "curves.parquet")
    eps, claims = [], []
    for opt in OPTIMIZERS:
        per_curve = aucs(table[table.optimizer == opt], ["epoch", "repeat"])
        ep = _checkpoints(p, out, opt, per_curve)
        eps.append(ep)
        claims.append(_f4a_claim(p, opt, ep, _over_training_checks(ep, per_curve, opt)))
    ep = pd.concat(eps, ignore_index=True)
    adam = eps[0]
    stat = corr(adam["auc"], adam["test_loss"])
    sgd = corr(eps[1]["auc"], eps[1]["test_loss"])
    b = claim(
        "F4b",
        "Across training checkpoints, higher ablation AUC goes with lower test loss (Adam; criterion: "
        "Pearson r < 0: its 95% interval below 0)",
        "CIFAR-10: r = -0.728",
        f"Pearson r (AUC, test loss) over {stat['n']} checkpoints = {fmt(stat['pearson_r'], 3)} "
        f"(p = {pval(stat['pearson_p'])}); with SGD r = {fmt(sgd['pearson_r'], 3)} "
        f"(p = {pval(sgd['pearson_p'])})",
        {k: stat[k] for k in ("pearson_r", "pearson_p", "spearman_rho", "n")}
        | {"pearson_r_sgd": sgd["pearson_r"]},
        [
            correlation_check(
                "Pearson r (AUC, test loss)",
                stat["pearson_r"],
                stat["n"],
                criterion=0.0,
                direction="<",
                unit="checkpoints",
            )
        ],
    )
    return Outcome({"curves": table, "checkpoints": ep}, [*claims, b])


def _f4a_claim(p: Profile, opt: str, ep: pd.DataFrame, checks: list) -> dict:
    i_auc, i_loss = int(ep["auc"].idxmax()), int(ep["test_loss"].idxmin())
    name = "Adam" if opt == "adam" else f"SGD (momentum 0.9, lr {F4.size(p, 'sgd_lr'):g})"
    still = " (test loss still falling at the last checkpoint)" if i_loss == len(ep) - 1 else ""
    return claim(
        "F4a" if opt == "adam" else "F4a-sgd",
        f"Over training ({name}), the ablation AUC peaks near the test-loss minimum (criterion: within one "
        "checkpoint) and falls afterwards as the net overfits (criterion: normalised AUC at the last "
        "checkpoint below its value at the test-loss minimum)",
        "MNIST: AUC maximal at about epoch 1.5, near the minimum of the test loss (plotted normalised by "
        "its maximum)",
        f"AUC peaks at epoch {ep.epoch[i_auc]:g} (AUC {fmt(ep.auc[i_auc])}); test loss is lowest at epoch "
        f"{ep.epoch[i_loss]:g} ({fmt(ep.test_loss[i_loss])}){still}; normalised AUC there "
        f"{fmt(ep.auc_normalised[i_loss])}, at the last checkpoint (epoch {ep.epoch.iloc[-1]:g}) "
        f"{fmt(ep.auc_normalised.iloc[-1])}; change after the minimum {interval(checks[1])}; checkpoints "
        f"apart {interval(checks[0])}",
        {
            "optimizer": opt,
            "epoch_max_auc": ep.epoch[i_auc],
            "epoch_min_test_loss": ep.epoch[i_loss],
            "checkpoints_apart": abs(i_auc - i_loss),
            "auc_max": ep.auc[i_auc],
            "auc_last": ep.auc.iloc[-1],
            "auc_normalised_at_min_loss": ep.auc_normalised[i_loss],
            "auc_normalised_last": ep.auc_normalised.iloc[-1],
        },
        [checks[1], checks[0]],
    )


def draw_f4a(t: Tables, stem: Path) -> list[Path]:
    fig, (ax, ax3) = fig_axes(2)
    ax2 = ax.twinx()
    ep = t["checkpoints"]
    for k, (opt, sub) in enumerate(ep.groupby("optimizer", sort=True)):
        sub = sub.reset_index(drop=True)
        col, name = f"C{2 * k}", "Adam" if opt == "adam" else "SGD"
        top = sub.auc.max()
        ax.errorbar(
            sub.epoch,
            sub.auc_normalised,
            yerr=sub.auc_sd / top,
            fmt="o-",
            color=col,
            ms=4,
            capsize=2,
            label=f"{name}: ablation AUC / its max",
        )
        ax2.plot(sub.epoch, sub.test_loss, "s--", color=col, ms=3, alpha=0.7, label=f"{name}: test loss")
        ax.axvline(sub.epoch[sub.test_loss.idxmin()], color=col, lw=0.8, ls=":")
        ax3.scatter(sub.test_loss, sub.auc_normalised, color=col, s=26, label=name)
    ax.set(
        xscale="log",
        xlabel="Epoch (log axis; dotted: test-loss minimum)",
        ylabel="Ablation AUC, normalised by its maximum",
        title="Over training: AUC and test loss",
    )
    ax2.set_ylabel("Test loss (cross-entropy, nats), dashed")
    fig.legend(loc="outside lower center", ncols=4, frameon=False, fontsize=8)
    ax3.set(xlabel="Test loss (nats)", ylabel="Ablation AUC / its max", title="Checkpoints")
    return save(fig, stem)


F4 = Figure(
    "F4a",
    "AUC and test loss over training (Adam and SGD)",
    "Morcos et al. 2018, Fig. 4a-b",
    f4_jobs,
    f4_analyse,
    sizes=F4_SIZES,
    draw=draw_f4a,
)
