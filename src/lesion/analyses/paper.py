"""The paper's analyses as functions returning tidy pandas DataFrames.

- ``unit_table``: one row per unit: selectivity, preferred class, mutual information, and the loss and
  accuracy change (overall and per class) when that unit alone is deleted.
- ``ablation_curves``: cumulative ablation in random or ranked orders; ``curve_auc`` their AUC (both in
  ``lesion.analyses.curves``, re-exported here).
- ``noise_curves``: accuracy under per-unit Gaussian noise of growing scale.
- ``selectivity_vs_importance``: correlations, pooled and per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

# the cumulative curves live in lesion.analyses.curves; their names stay importable from here
from lesion.analyses.curves import (  # noqa: F401
    ORDERS,
    _curve_columns,
    ablation_curves,
    curve_auc,
    incoming_weight_norms,
    unit_order,
)
from lesion.analyses.measures import correlate, mutual_information, selectivity_index
from lesion.analyses.sweep import sites_for
from lesion.backends.ray_sweep import check_backend, evaluate
from lesion.core.batch import Data, reusable
from lesion.core.lesions import Lesion
from lesion.core.metric import Classification, Metric, columns
from lesion.core.replacements import Noise, as_replacement
from lesion.core.runner import Runner, measured_intact
from lesion.core.sites import Site, default_candidates
from lesion.core.stats import Stats, collect_stats
from lesion.core.units import Unit, UnitSpec, parse_units
from lesion.errors import LesionError
from lesion.util import Backend, Binning, Precision, Scaling
from lesion.util.progress import progress_bar

DEFAULT_SCALES = tuple(float(s) for s in np.logspace(-1.5, 1.0, 11))


def unit_table(
    model: nn.Module,
    data: Data,
    *,
    sites: Sequence[Site] | None = None,
    units: UnitSpec | None = None,
    replacement=0.0,
    reference: Stats | None = None,
    metric: Metric | None = None,
    bins: int = 10,
    binning: Binning = "quantile",
    batch_size: int = 1000,
    progress: bool = False,
    engine: bool = True,
    precision: Precision = "fp32",
    importance: bool = True,
    backend: Backend = "local",
    address: str | None = None,
    shards: int | None = None,
    resume: str | Path | None = None,
) -> pd.DataFrame:
    """One row per unit, measured on held-out ``data``.

    Columns: ``layer, unit, selectivity, preferred_class, mutual_info, mean_activity, sd_activity,
    dead``, then the metric's values with the unit deleted alone and their change: for the default
    ``Classification`` metric ``loss, accuracy, delta_loss, delta_accuracy`` and
    ``delta_accuracy_class_<c>`` for every class (``per_class_drops`` makes it long). ``delta_*`` are
    lesioned minus intact, so a harmful deletion has positive ``delta_loss`` and negative
    ``delta_accuracy``. ``replacement``: a number, ``"mean"`` (means of ``reference``, by
    default of ``data``) or any ``Replacement`` (``Resample()``, ``Optimal()``...). Dead units have NaN
    selectivity and preferred class -1; selectivity and information need class labels and are left out
    for other metrics. ``df.attrs`` holds the intact values and ``engine_fallbacks``. ``precision="bf16"``
    runs the engine in bfloat16. ``importance=False`` skips the single-unit ablations (NaN columns).
    ``backend="ray"`` (with ``address``, ``shards``, ``resume``) shards the ablations over a Ray cluster
    by unit ranges, as ``lesion.sweep`` does.
    """
    check_backend(backend, address, shards, resume)
    data = reusable(data)
    sites = list(sites) if sites is not None else sites_for(model, data)
    chosen = parse_units(units if units is not None else [f"{s.name}:*" for s in sites], sites)
    metric = metric if metric is not None else Classification()
    stats = None
    if metric.classes:  # selectivity needs classes; the same pass measures the intact model
        wanted = {"bins": bins, "binning": binning, "histograms": True, "labels": True}
        reused = reference is not None and all(reference.settings.get(k) == v for k, v in wanted.items())
        if reused and measured_intact(reference, data, metric, batch_size) is not None:
            stats = reference  # gathered on these very tensors, as this table would gather them
        else:
            stats = collect_stats(model, data, sites, bins=bins, binning=binning, batch_size=batch_size,
                                  metric=metric)  # fmt: skip
    elif measured_intact(reference, data, metric, batch_size) is not None:
        stats = reference  # no class parts: only its intact values stand in for the runner's intact pass
    runner = Runner(
        model, data, sites, metric=metric, batch_size=batch_size, engine=engine, precision=precision,
        measured=stats,
    )  # fmt: skip
    todo = chosen.units()
    if not importance:
        values = {k: np.full((len(todo), *v.shape[1:]), np.nan) for k, v in runner.intact.items()}
    else:
        deletion = as_replacement(replacement, reference or stats)
        lesions = runner.fit([Lesion([u], deletion) for u in todo])
        with progress_bar(None, "single-unit ablations", progress, total=len(todo)) as bar:
            values = evaluate(runner, lesions, bar=bar, backend=backend, address=address, shards=shards,
                              resume=resume)  # fmt: skip
    table = _table(todo, stats, runner, values)
    table.attrs["engine_fallbacks"] = dict(runner.fallbacks)
    table.attrs["engine_deviation"] = dict(runner.deviation)
    table.attrs["served"] = dict(runner.served)
    table.attrs["engine_skipped"] = runner.skipped()
    return table


def _table(units: list[Unit], stats: Stats | None, runner: Runner, values: dict) -> pd.DataFrame:
    df = pd.DataFrame({"layer": [u.layer for u in units], "unit": [u.index for u in units]})
    if any(u.position is not None for u in units):
        df["position"] = [u.position for u in units]
    if stats is not None and runner.metric.classes:
        _unit_stats(df, units, stats)
    cols = columns(values)
    intact = columns(runner.intact)
    per_class = [c for c in cols if c.startswith("accuracy_class_")]
    for name in cols:
        if name not in per_class:
            df[name] = cols[name]
    for name in cols:
        df[f"delta_{name}"] = cols[name] - intact[name][0]
    df.attrs.update({k: float(v[0]) for k, v in intact.items() if k not in per_class}, n=runner.n)
    if per_class:
        df.attrs["per_class_accuracy"] = [float(intact[c][0]) for c in per_class]
    return df


def _unit_stats(df: pd.DataFrame, units: list[Unit], stats: Stats) -> None:
    cols: dict[str, list] = {k: [] for k in ("selectivity", "preferred_class", "mutual_info")}
    cols |= {"mean_activity": [], "sd_activity": [], "dead": []}
    measured = {}
    for layer in dict.fromkeys(u.layer for u in units):
        st = stats[layer]
        si, pref = selectivity_index(st.class_means)
        mi = mutual_information(st.histogram.counts)
        measured[layer] = (si, pref, mi, st.mean.numpy(), st.sd.numpy(), st.dead.numpy())
    for u in units:
        for key, arr in zip(cols, measured[u.layer], strict=True):
            cols[key].append(arr[u.index])
    for key, v in cols.items():
        df[key] = v
    df["preferred_class"] = df["preferred_class"].astype("int64")
    df["dead"] = df["dead"].astype(bool)


def per_class_drops(units: pd.DataFrame) -> pd.DataFrame:
    """The unit x class accuracy-change table in long form: ``layer, unit, class, delta_accuracy``."""
    cls = [c for c in units.columns if c.startswith("delta_accuracy_class_")]
    long = units[["layer", "unit", *cls]].melt(
        ["layer", "unit"], var_name="class", value_name="delta_accuracy"
    )
    long["class"] = long["class"].str.removeprefix("delta_accuracy_class_").astype("int64")
    return long


def noise_curves(
    model: nn.Module,
    data: Data,
    *,
    reference: Stats | None = None,
    sites: Sequence[Site] | None = None,
    candidates: Sequence[str] | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    repeats: int = 5,
    seed: int = 0,
    scaling: Scaling = "sd",
    metric: Metric | None = None,
    batch_size: int = 1000,
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracy and loss (the metric's scalar values) with Gaussian noise added to every candidate unit.

    Noise SD per unit = scale x the unit's SD over ``reference`` (default: ``data``), per feature map over
    all positions for conv sites. Columns: ``scale, repeat`` and the metric's scalar columns, its curve
    column first (``accuracy, loss`` for the default ``Classification``).
    """
    data = reusable(data)
    sites = list(sites) if sites is not None else sites_for(model, data)
    cand = [s for s in sites if s.name in candidates] if candidates else default_candidates(sites)
    metric = metric if metric is not None else Classification()
    ref = reference or collect_stats(model, data, cand, histograms=False, batch_size=batch_size,
                                     labels=metric.classes, metric=metric)  # fmt: skip
    runner = Runner(model, data, sites, metric=metric, batch_size=batch_size, measured=ref)
    names = [f"{s.name}:*" for s in cand]
    lesions = [
        Lesion(names, Noise(float(scale), scaling, _seed(seed, i, r), ref))
        for i, scale in enumerate(scales) for r in range(repeats)
    ]  # fmt: skip
    with progress_bar(None, "noise curves", progress, total=len(lesions)) as bar:
        values = runner.run(lesions, bar=bar)
    scalars = _curve_columns(values, runner.metric)
    return pd.DataFrame(
        {
            "scale": [les.replacement.scale for les in lesions],
            "repeat": [k % repeats for k in range(len(lesions))],
        }
        | {name: v.astype(np.float64) for name, v in scalars.items()}
    )


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def selectivity_vs_importance(
    units: pd.DataFrame, *, x: str = "selectivity", y: str = "delta_loss"
) -> pd.DataFrame:
    """Correlation of ``x`` (selectivity) with ``y`` (importance), pooled (layer ``"all"``) and per layer.

    Dead units (NaN selectivity) are left out. Columns: ``layer, x, y, n, pearson_r, pearson_p,
    spearman_rho, spearman_p``.
    """
    for col in (x, y):
        if col not in units.columns:
            raise LesionError(f"unit table has no column {col!r}; columns: {', '.join(units.columns)}")
    groups: list[tuple[str, pd.DataFrame]] = [("all", units)]
    groups += [(str(k), g) for k, g in units.groupby("layer", sort=False)]
    rows = [{"layer": name, "x": x, "y": y} | correlate(g[x], g[y]) for name, g in groups]
    return pd.DataFrame(rows)
