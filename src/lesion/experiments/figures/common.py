"""What a study of ``lesion reproduce`` is (``Figure``), and the job builders and readers studies share."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesion.analyses.measures import auc, correlate
from lesion.errors import LesionError
from lesion.experiments.claims import Check, combine
from lesion.experiments.job import Job
from lesion.experiments.profiles import Profile
from lesion.experiments.shards import sharded_curves, sharded_units

Outputs = Mapping[str, Path]  # job name -> its finished directory


@dataclass(frozen=True)
class Outcome:
    """A figure's result: tidy tables (drawn and saved) and claims (see ``claim``)."""

    tables: dict[str, pd.DataFrame]
    claims: list[dict[str, Any]]


@dataclass(frozen=True)
class Figure:
    """One experiment: ``jobs(profile)`` names the work, ``analyse(profile, outputs)`` reads it back into
    tables and claims, ``draw(tables, stem)`` plots the tables (to ``stem``.png first, returning the files).

    ``sizes`` declares the study's own sizes and their defaults (``{"ensemble": 12}``); a profile changes
    them in ``Profile.sizes[id]``, and the study reads them with ``size(profile, key)``. Sizes several
    studies share (widths, seeds, repeats, ...) are the profile's own fields."""

    id: str
    title: str
    source: str  # where in the literature: "Morcos et al. 2018, Fig. 1"
    jobs: Callable[[Profile], dict[str, Job]]
    analyse: Callable[[Profile, Outputs], Outcome]
    draw: Callable[[dict[str, pd.DataFrame], Path], list[Path]]  # (tables, path stem) -> [PNG, ...]
    sizes: Mapping[str, Any] = field(default_factory=dict)

    def size(self, p: Profile, key: str) -> Any:
        """This study's size ``key`` in profile ``p``: the profile's value, else the declared default."""
        if key not in self.sizes:
            raise LesionError(
                f"study {self.id!r} declares no size {key!r}; expected one of {_keys(self.sizes)}"
            )
        return self.sizes_in(p)[key]

    def sizes_in(self, p: Profile) -> dict[str, Any]:
        """Every size of this study in profile ``p``; a size the study does not declare is an error."""
        given = p.sizes.get(self.id, {})
        unknown = [k for k in given if k not in self.sizes]
        if unknown:
            raise LesionError(
                f"profile {p.name!r} sets size(s) {', '.join(map(repr, unknown))} of study {self.id!r}, "
                f"which declares {_keys(self.sizes)}"
            )
        return {**self.sizes, **given}


def _keys(sizes: Mapping[str, Any]) -> str:
    return ", ".join(map(repr, sizes)) or "none"


def claim(
    id: str, claim: str, paper: str, measured: str, statistic: dict[str, Any], tests: Sequence[Check]
) -> dict:
    """One row of claims.json: what the paper says, what we measured, the numbers, and the verdict.

    The first of ``tests`` is the claim's headline statistic (``estimate``, ``ci_low``, ``ci_high``, ``n``);
    ``verdict`` combines every test (``lesion.experiments.claims``); ``holds`` is ``verdict == "holds"``.
    """
    stat = {k: _plain(v) for k, v in statistic.items()}
    head = tests[0]
    decided = combine([t.verdict for t in tests])
    needs = [t.needed_n for t in tests if t.verdict == "inconclusive" and t.needed_n is not None]
    return {
        "id": id,
        "claim": claim,
        "paper": paper,
        "measured": measured,
        "statistic": stat,
        "estimate": _plain(head.estimate),
        "ci_low": _plain(head.ci_low),
        "ci_high": _plain(head.ci_high),
        "n": head.n,
        "verdict": decided,
        "holds": decided == "holds",
        "needed_n": max(needs) if decided == "inconclusive" and needs else None,
        "tests": [t.as_dict() for t in tests],
    }


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


# ---- job builders: the same parameters give the same job, so figures share trained networks


def train(
    p: Profile,
    widths: Sequence[int] | None = None,
    *,
    corrupt: float = 0.0,
    seed: int = 0,
    arch: dict | None = None,
    dataset: str | None = None,
    until: bool = True,
    train_size: int | None = None,
    subset: bool = False,
    **options,
) -> Job:
    """A training job; by default an MLP of ``widths`` trained to the profile's train-accuracy target.

    ``train_size``: train on that many training examples; ``subset``: on the profile's ``subset`` (the
    studies that need not run at the full data scale of a large profile)."""
    if subset and train_size is None:
        train_size = p.subset
    arch = arch if arch is not None else {"kind": "mlp", "widths": list(widths or p.widths)}
    opts = {"lr": p.lr, "batch_size": p.batch_size}
    if until:
        opts |= {"until_train_acc": p.until_train_acc, "max_epochs": p.max_epochs}
    opts |= options
    if p.device != "cpu":  # a GPU run: different float rounding, so a different job
        opts["device"] = p.device
    params = {
        "arch": arch,
        "dataset": dataset or p.dataset,
        "corrupt": float(corrupt),
        "seed": int(seed),
        "train": opts,
    }
    if p.root:
        params["root"] = p.root
    if train_size is not None:
        params["train_size"] = int(train_size)
    return Job("train", params)


def conv_train(p: Profile, *, batchnorm: bool, seed: int) -> Job:
    arch = {"kind": "convnet", "batchnorm": batchnorm, **p.conv}
    return train(
        p,
        arch=arch,
        dataset=p.conv_dataset,
        seed=seed,
        until=False,
        epochs=p.conv_epochs,
        train_size=p.conv_train_size,
    )


def curves(
    p: Profile, model: Job, *, orders: Sequence[str] = ("random",), units: Job | None = None, **params
) -> Job:
    """Ablation curves of ``model``: the profile's repeats and fractions unless ``params`` set them."""
    base = {"orders": list(orders), "repeats": p.repeats, "fractions": p.fractions, "seed": 0}
    if p.curve_examples is not None:  # curves on the first n training examples (large training sets)
        base["examples"] = p.curve_examples
    deps = {"units": units} if units is not None else {}
    return sharded_curves(model, base | params, deps, per_shard=p.curves_per_shard)


def units(p: Profile, model: Job, *, importance: bool = True) -> Job:
    """The unit table; with importance (one evaluation per unit), in ``p.unit_shards`` shards."""
    return sharded_units(model, {"importance": importance}, shards=p.unit_shards if importance else 1)


# ---- reading outputs back


def read(outputs: Outputs, name: str, file: str) -> pd.DataFrame:
    return pd.read_parquet(outputs[name] / file)


def gather(outputs: Outputs, names: Mapping[str, Mapping[str, Any]], file: str) -> pd.DataFrame:
    """Concatenate ``file`` of each job in ``names`` ({job name: columns to add}), columns first."""
    frames = []
    for name, cols in names.items():
        df = read(outputs, name, file)
        for k, v in reversed(list(cols.items())):
            df.insert(0, k, v)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def final_metrics(outputs: Outputs, name: str) -> dict[str, float]:
    """The last epoch of a training job's history: train/test loss and accuracy, epochs run."""
    h = read(outputs, name, "history.parquet")
    last = h.iloc[-1]
    return {
        "epochs": int(last["epoch"]),
        "train_accuracy": float(last["train_accuracy"]),
        "test_accuracy": float(last["test_accuracy"]),
        "test_loss": float(last["test_loss"]),
    }


def aucs(curves: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """AUC over fraction ablated of every curve, grouped by ``keys`` (which should include repeat)."""
    rows = [(*k, auc(g["fraction"], g["accuracy"])) for k, g in curves.groupby(list(keys), sort=True)]
    return pd.DataFrame(rows, columns=[*keys, "auc"])


def accuracy_at(curves: pd.DataFrame, fraction: float, keys: Sequence[str]) -> pd.Series:
    """Mean accuracy at the measured fraction nearest ``fraction``, per ``keys``."""
    fr = curves["fraction"].unique()
    near = fr[np.argmin(np.abs(fr - fraction))]
    return curves[curves["fraction"] == near].groupby(list(keys))["accuracy"].mean()


def hold_fraction(curve: pd.DataFrame, chance: float) -> float:
    """The first fraction ablated at which mean accuracy falls below halfway from intact to ``chance``."""
    m = curve.groupby("fraction")["accuracy"].mean().sort_index()
    level = chance + 0.5 * (m.iloc[0] - chance)
    below = m[m < level]
    return float(below.index[0]) if len(below) else 1.0


def by_net(df: pd.DataFrame, group: str | None, net: Sequence[str], value: str) -> dict:
    """{group: [one network's ``value`` per repeat, ...]}, the input of ``claims.bootstrap``."""
    parts = df.groupby(group, sort=True) if group else [("all", df)]
    return {k: [g[value].to_numpy() for _, g in sub.groupby(list(net), sort=True)] for k, sub in parts}


def spearman(x, y) -> float:
    from scipy import stats as sps

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(sps.spearmanr(x, y).statistic)


def interval(check) -> str:
    """``0.12 [0.05, 0.19]``: a check's estimate and 95% interval, for the measured text."""
    return f"{fmt(check.estimate)} [{fmt(check.ci_low)}, {fmt(check.ci_high)}]"


def corr(x, y) -> dict[str, float]:
    return correlate(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def pval(p: float) -> str:
    """A p-value in two significant digits (``3.4e-06``), never rounded to a bare 0."""
    return "n/a" if p is None or not np.isfinite(p) else f"{p:.2g}"
