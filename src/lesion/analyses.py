"""The paper's analyses as functions returning tidy pandas DataFrames.

- ``unit_table``: one row per unit: selectivity, preferred class, mutual information, and the loss and
  accuracy change (overall and per class) when that unit alone is deleted.
- ``ablation_curves``: cumulative ablation in random or ranked orders; ``curve_auc`` their AUC.
- ``noise_curves``: accuracy under per-unit Gaussian noise of growing scale.
- ``selectivity_vs_importance``: correlations, pooled and per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import nn

from lesion._batches import Data, batches, reusable
from lesion._progress import progress_bar
from lesion.errors import LesionError
from lesion.evaluation import Evaluation, Evaluator
from lesion.lesioning import add_noise
from lesion.measures import auc, correlate, mutual_information, selectivity_index
from lesion.sites import Site, default_candidates, find_sites
from lesion.stats import Stats, collect_stats
from lesion.units import Unit, UnitSpec, parse_units

ORDERS = (
    "random", "selectivity_high", "selectivity_low", "importance_high", "importance_low",
    "mutual_info_high", "mutual_info_low", "weight_norm_high", "weight_norm_low",
)  # fmt: skip
DEFAULT_SCALES = tuple(float(s) for s in np.logspace(-1.5, 1.0, 11))


def sites_for(model: nn.Module, data: Data, layers: Sequence[str] | str | None = None) -> list[Site]:
    """The sites of ``model``, found with a dry forward pass on the first examples of ``data``."""
    x, _ = next(iter(batches(data, batch_size=2)))
    return find_sites(model, x[:2], layers)


def unit_table(
    model: nn.Module,
    data: Data,
    *,
    sites: Sequence[Site] | None = None,
    units: UnitSpec | None = None,
    value: float | str = 0.0,
    reference: Stats | None = None,
    bins: int = 10,
    binning: str = "quantile",
    batch_size: int = 1000,
    progress: bool = False,
    engine: bool = True,
    precision: str = "fp32",
    importance: bool = True,
) -> pd.DataFrame:
    """One row per unit, measured on held-out ``data``.

    Columns: ``layer, unit, selectivity, preferred_class, mutual_info, mean_activity, sd_activity,
    dead, loss, accuracy, delta_loss, delta_accuracy`` and ``delta_accuracy_class_<c>`` for every class
    (accuracy on class c with the unit deleted minus intact; ``per_class_drops`` makes it long).
    ``delta_*`` are lesioned minus intact, so a harmful deletion has positive ``delta_loss`` and negative
    ``delta_accuracy``. ``value`` is the ablation constant or ``"mean"`` (means of ``reference``, by
    default of ``data``). Dead units have NaN selectivity and preferred class -1. ``df.attrs`` holds the
    intact ``loss``, ``accuracy`` and ``per_class_accuracy``, and ``engine_fallbacks`` (why the fast engine
    stepped aside, if it did). ``precision="bf16"`` runs the engine in bfloat16 (``engine_deviation``
    records its largest loss difference to fp32 on the checks). ``importance=False`` skips the
    single-unit ablations (statistics only, one or two passes): loss, accuracy and ``delta_*`` are NaN.
    """
    data = reusable(data)
    sites = list(sites) if sites is not None else sites_for(model, data)
    chosen = parse_units(units if units is not None else [f"{s.name}:*" for s in sites], sites)
    stats = collect_stats(model, data, sites, bins=bins, binning=binning, batch_size=batch_size)
    ev = Evaluator(model, data, sites, batch_size=batch_size, engine=engine, precision=precision)
    ref = reference or stats
    means = {layer: ref[layer].mean for layer in chosen} if value == "mean" else None
    todo = chosen.units()
    if not importance:
        nan = np.full(ev.intact.per_class_accuracy.shape, np.nan)
        skipped = Evaluation(n=0, loss=np.nan, accuracy=np.nan, per_class_accuracy=nan, confusion=nan)
        lesion_rows = [skipped] * len(todo)
    else:
        with progress_bar(None, "single-unit ablations", progress, total=len(todo)) as bar:
            lesion_rows = ev.single_units(todo, value, means, bar=bar)
    table = _table(todo, stats, ev.intact, lesion_rows)
    table.attrs["engine_fallbacks"] = dict(ev.fallbacks)
    table.attrs["engine_deviation"] = dict(ev.deviation)
    return table


def _table(units: list[Unit], stats: Stats, intact: Evaluation, rows: list[Evaluation]) -> pd.DataFrame:
    cols: dict[str, list] = {k: [] for k in ("selectivity", "preferred_class", "mutual_info")}
    cols |= {"mean_activity": [], "sd_activity": [], "dead": []}
    measured = {}
    for layer in dict.fromkeys(u.layer for u in units):
        st = stats[layer]
        si, pref = selectivity_index(st.class_means)
        mi = mutual_information(st.histogram.counts)
        measured[layer] = (si, pref, mi, st.mean.numpy(), st.sd.numpy(), st.dead.numpy())
    for u in units:
        si, pref, mi, mean, sd, dead = measured[u.layer]
        for key, arr in zip(cols, (si, pref, mi, mean, sd, dead), strict=True):
            cols[key].append(arr[u.index])
    df = pd.DataFrame({"layer": [u.layer for u in units], "unit": [u.index for u in units]} | cols)
    df["preferred_class"] = df["preferred_class"].astype("int64")
    df["dead"] = df["dead"].astype(bool)
    df["loss"] = [r.loss for r in rows]
    df["accuracy"] = [r.accuracy for r in rows]
    df["delta_loss"] = df["loss"] - intact.loss
    df["delta_accuracy"] = df["accuracy"] - intact.accuracy
    per_class = np.stack([r.per_class_accuracy for r in rows]) - intact.per_class_accuracy
    for c in range(per_class.shape[1]):
        df[f"delta_accuracy_class_{c}"] = per_class[:, c]
    df.attrs.update(
        loss=intact.loss, accuracy=intact.accuracy, n=intact.n,
        per_class_accuracy=intact.per_class_accuracy.tolist(),
    )  # fmt: skip
    return df


def per_class_drops(units: pd.DataFrame) -> pd.DataFrame:
    """The unit x class accuracy-change table in long form: ``layer, unit, class, delta_accuracy``."""
    cls = [c for c in units.columns if c.startswith("delta_accuracy_class_")]
    long = units[["layer", "unit", *cls]].melt(
        ["layer", "unit"], var_name="class", value_name="delta_accuracy"
    )
    long["class"] = long["class"].str.removeprefix("delta_accuracy_class_").astype("int64")
    return long


def unit_order(
    order: str | Sequence,
    candidates: list[Unit],
    *,
    units: pd.DataFrame | None = None,
    model: nn.Module | None = None,
    seed: int = 0,
    repeat: int = 0,
) -> list[Unit]:
    """The candidate units in the order they are deleted for a cumulative curve.

    ``random`` draws a permutation from (seed, repeat); ranked orders sort by a column of the unit table
    (``selectivity``, ``importance`` = ``delta_loss``, ``mutual_info``) or by the L2 norm of each unit's
    incoming weights, ``_high`` first or ``_low`` first; ties keep candidate order, NaN (dead) go last.
    A sequence of units is taken as the order itself.
    """
    if not isinstance(order, str):
        given = [u for item in order for u in parse_units(item).units()]
        if len(set(given)) != len(given):
            raise LesionError("order names a unit more than once; expected each unit at most once")
        missing = set(given) - set(candidates)
        if missing:
            raise LesionError(f"order names units that are not candidates: {sorted(map(str, missing))[:5]}")
        return given
    if order == "random":
        perm = np.random.default_rng([seed, repeat]).permutation(len(candidates))
        return [candidates[i] for i in perm]
    if order not in ORDERS:
        raise LesionError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)} or a unit list")
    key, _, direction = order.rpartition("_")
    score = _scores(key, candidates, units, model)
    rank = np.where(np.isnan(score), np.inf, -score if direction == "high" else score)
    return [candidates[i] for i in np.argsort(rank, kind="stable")]


def _scores(key: str, candidates: list[Unit], units, model) -> np.ndarray:
    if key == "weight_norm":
        if model is None:
            raise LesionError("weight_norm orders need the model")
        norms = {layer: incoming_weight_norms(model, layer) for layer in {u.layer for u in candidates}}
        return np.array([norms[u.layer][u.index] for u in candidates])
    column = {"importance": "delta_loss"}.get(key, key)
    if units is None:
        raise LesionError(f"order by {key} needs the unit table: pass units=unit_table(...)")
    table = units.set_index(["layer", "unit"])[column]
    try:
        return np.array([table.loc[(u.layer, u.index)] for u in candidates], dtype=np.float64)
    except KeyError as exc:
        raise LesionError(f"the unit table has no row for candidate unit {exc}") from None


def incoming_weight_norms(model: nn.Module, layer: str) -> np.ndarray:
    """L2 norm of each unit's incoming weights: the nearest Linear/Conv defined before ``layer``."""
    names = [n for n, _ in model.named_modules()]
    if layer not in names:
        raise LesionError(f"unknown layer {layer!r}")
    for name in reversed(names[: names.index(layer) + 1]):
        mod = model.get_submodule(name) if name else model
        if isinstance(mod, nn.Linear | nn.modules.conv._ConvNd):
            w = mod.weight.detach()
            if isinstance(mod, nn.modules.conv._ConvTransposeNd):
                w = w.transpose(0, 1)
            return w.reshape(w.shape[0], -1).norm(dim=1).cpu().numpy().astype(np.float64)
    raise LesionError(f"no Linear or Conv layer is defined before {layer!r}; cannot rank by weight norm")


def ablation_curves(
    model: nn.Module,
    data: Data,
    *,
    sites: Sequence[Site] | None = None,
    candidates: Sequence[str] | None = None,
    orders: Sequence[str | Sequence] = ("random",),
    repeats: int | Sequence[int] = 10,
    seed: int = 0,
    fractions: Sequence[float] | None = None,
    units: pd.DataFrame | None = None,
    value: float | str = 0.0,
    batch_size: int = 1000,
    progress: bool = False,
    engine: bool = True,
    precision: str = "fp32",
) -> pd.DataFrame:
    """Cumulative ablation curves: delete candidate units one after another, keeping earlier ones deleted.

    Candidates: every unit of the ``candidates`` layers (default: all sites of an MLP, the last three conv
    sites of a convnet). ``fractions`` picks where to measure (default: at every unit count). Accuracy
    and loss are measured against the labels ``data`` yields. Columns: ``order, repeat, n_ablated,
    fraction, accuracy, loss``. Random orders get ``repeats`` seeded repeats (an int n: repeats 0..n-1;
    a list: exactly those repeats, so a large set can be split across workers: repeat r's order is drawn
    from (seed, r) alone); ranked orders one, numbered 0.
    """
    ids = _repeat_ids(repeats)
    data = reusable(data)
    sites = list(sites) if sites is not None else sites_for(model, data)
    cand_sites = [s for s in sites if s.name in candidates] if candidates else default_candidates(sites)
    if candidates and len(cand_sites) != len(set(candidates)):
        parse_units([f"{c}:*" for c in candidates], sites)  # raises the unknown-layer error
    pool = parse_units([f"{s.name}:*" for s in cand_sites], sites).units()
    counts = _counts(len(pool), fractions)
    ev = Evaluator(model, data, cand_sites, batch_size=batch_size, engine=engine, precision=precision)
    means = None
    if value == "mean":
        ref = collect_stats(model, data, cand_sites, histograms=False, batch_size=batch_size)
        means = {s.name: ref[s.name].mean for s in cand_sites}
    jobs = [(o, r) for o in orders for r in (ids if isinstance(o, str) and o == "random" else [0])]
    rows = []
    bar = progress_bar(None, "ablation curves", progress, total=len(jobs) * len(counts))
    for o, r in jobs:
        seq = unit_order(o, pool, units=units, model=model, seed=seed, repeat=r)
        name = o if isinstance(o, str) else "custom"
        for k, (acc, loss) in zip(counts, ev.cumulative(seq, counts, value, means), strict=True):
            rows.append((name, r, k, k / len(pool), acc, loss))
        bar.update(len(counts))
    bar.close()
    curves = pd.DataFrame(rows, columns=["order", "repeat", "n_ablated", "fraction", "accuracy", "loss"])
    curves.attrs["engine_fallbacks"] = dict(ev.fallbacks)
    curves.attrs["engine_deviation"] = dict(ev.deviation)
    return curves


def _repeat_ids(repeats: int | Sequence[int]) -> list[int]:
    if isinstance(repeats, int | np.integer) and not isinstance(repeats, bool):
        if repeats < 0:
            raise LesionError(f"repeats={repeats}; expected a count >= 0 or a list of repeat numbers")
        return list(range(int(repeats)))
    listed = isinstance(repeats, Sequence | np.ndarray) and not isinstance(repeats, str)
    ids = [int(r) for r in repeats if float(r).is_integer()] if listed else None
    if ids is None or len(ids) != len(repeats) or min(ids, default=0) < 0 or len(set(ids)) != len(ids):
        raise LesionError(f"repeats={repeats!r}; expected a count or a list of distinct repeat numbers >= 0")
    return ids


def _counts(n: int, fractions: Sequence[float] | None) -> list[int]:
    if fractions is None:
        return list(range(n + 1))
    if isinstance(fractions, str) or np.ndim(fractions) != 1:
        raise LesionError(
            f"fractions={fractions!r}; expected a sequence of fractions in [0, 1], e.g. np.linspace(0, 1, 41)"
        )
    f = np.asarray(fractions, dtype=np.float64)
    if f.size == 0 or not np.isfinite(f).all() or (f < 0).any() or (f > 1).any():
        raise LesionError(f"fractions must lie in [0, 1], got {list(fractions)}")
    return sorted({round(x * n) for x in f})


def curve_auc(curves: pd.DataFrame) -> pd.DataFrame:
    """AUC of each curve over fraction ablated (raw, in [0, 1]) and normalised by the largest AUC.

    Columns: ``order, repeat, auc, auc_normalised`` (plus any extra grouping columns of ``curves``).
    """
    keys = [c for c in curves.columns if c not in ("n_ablated", "fraction", "accuracy", "loss")]
    out = (
        curves.groupby(keys, sort=False)
        .apply(lambda g: auc(g["fraction"], g["accuracy"]), include_groups=False)
        .rename("auc")
        .reset_index()
    )
    out["auc_normalised"] = out["auc"] / out["auc"].max()
    return out


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
    scaling: str = "sd",
    batch_size: int = 1000,
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracy and loss with Gaussian noise added to every candidate unit at once.

    Noise SD per unit = scale x the unit's SD over ``reference`` (default: ``data``), per feature map over
    all positions for conv sites. Columns: ``scale, repeat, accuracy, loss``.
    """
    data = reusable(data)
    sites = list(sites) if sites is not None else sites_for(model, data)
    cand = [s for s in sites if s.name in candidates] if candidates else default_candidates(sites)
    ref = reference or collect_stats(model, data, cand, histograms=False, batch_size=batch_size)
    ev = Evaluator(model, data, sites, batch_size=batch_size)
    rows = []
    bar = progress_bar(None, "noise curves", progress, total=len(scales) * repeats)
    for i, scale in enumerate(scales):
        for r in range(repeats):
            with add_noise(model, ref, float(scale), layers=[s.name for s in cand], scaling=scaling,
                           seed=_seed(seed, i, r)):  # fmt: skip
                res = ev.run(None)
            rows.append((float(scale), r, res.accuracy, res.loss))
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows, columns=["scale", "repeat", "accuracy", "loss"])


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
