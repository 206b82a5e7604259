"""Cumulative ablation curves: units deleted one after another in random or ranked orders, the
paper's robustness measure, and the area under them.

- ``unit_order``: the order candidate units are deleted in (random, or ranked by a unit-table column or
  by incoming weight norm); ``ablation_curves``: the curves, on the engine where it is exact;
  ``curve_auc``: their area.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from torch import nn

from lesion.analyses.measures import auc
from lesion.analyses.sweep import sites_for
from lesion.core.batch import Data, reusable
from lesion.core.lesions import Lesion
from lesion.core.metric import Classification, Metric
from lesion.core.replacements import Replacement, as_replacement
from lesion.core.runner import Runner
from lesion.core.sites import Site, default_candidates
from lesion.core.stats import Stats, collect_stats
from lesion.core.units import Unit, parse_units
from lesion.engine.dispatch import cumulative_orders
from lesion.errors import LesionError
from lesion.util import Precision
from lesion.util.progress import progress_bar

ORDERS = (
    "random", "selectivity_high", "selectivity_low", "importance_high", "importance_low",
    "mutual_info_high", "mutual_info_low", "weight_norm_high", "weight_norm_low",
)  # fmt: skip


def unit_order(
    order: str | Sequence,
    candidates: list[Unit],
    *,
    units: pd.DataFrame | None = None,
    model: nn.Module | None = None,
    seed: int = 0,
    repeat: int = 0,
    metric: Metric | None = None,
) -> list[Unit]:
    """The candidate units in the order they are deleted for a cumulative curve.

    ``random`` draws a permutation from (seed, repeat); ranked orders sort by a column of the unit table
    (``selectivity``, ``mutual_info``, ``importance``: the harm of deleting the unit alone in the
    ``metric``'s main value, ``delta_<main>`` negated where higher is better; ``delta_loss`` for the
    default Classification) or by the L2 norm of each unit's incoming weights, ``_high`` first or
    ``_low`` first; ties keep candidate order, NaN (dead) go last. A sequence of units is taken as the
    order itself.
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
    score = _scores(key, candidates, units, model, metric if metric is not None else Classification())
    rank = np.where(np.isnan(score), np.inf, -score if direction == "high" else score)
    return [candidates[i] for i in np.argsort(rank, kind="stable")]


def _scores(key: str, candidates: list[Unit], units, model, metric: Metric) -> np.ndarray:
    if key == "weight_norm":
        if model is None:
            raise LesionError("weight_norm orders need the model")
        norms = {layer: incoming_weight_norms(model, layer) for layer in {u.layer for u in candidates}}
        return np.array([norms[u.layer][u.index] for u in candidates])
    column = f"delta_{metric.main}" if key == "importance" else key
    if units is None:
        raise LesionError(f"order by {key} needs the unit table: pass units=unit_table(...)")
    if column not in units.columns:
        raise LesionError(
            f"order by {key} needs the unit table's column {column!r}; expected a unit table measured "
            f"with the curves' metric ({type(metric).__name__})"
        )
    table = units.set_index(["layer", "unit"])[column]
    try:
        score = np.array([table.loc[(u.layer, u.index)] for u in candidates], dtype=np.float64)
    except KeyError as exc:
        raise LesionError(f"the unit table has no row for candidate unit {exc}") from None
    return metric.harm(score) if key == "importance" else score


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
    orders: Sequence[str | Sequence] | Mapping[str, Sequence] = ("random",),
    repeats: int | Sequence[int] = 10,
    seed: int = 0,
    fractions: Sequence[float] | None = None,
    units: pd.DataFrame | None = None,
    replacement=0.0,
    metric: Metric | None = None,
    reference: Stats | None = None,
    batch_size: int = 1000,
    progress: bool = False,
    engine: bool = True,
    precision: Precision = "fp32",
) -> pd.DataFrame:
    """Cumulative ablation curves: delete candidate units one after another, keeping earlier ones deleted.

    Candidates: every unit of the ``candidates`` layers (default: all sites of an MLP, the last three conv
    sites of a convnet). ``orders`` are names (``random``, ``selectivity_high``...), explicit unit lists
    (named ``custom_0``, ``custom_1``... in the order given) or a mapping ``{name: unit list}``.
    ``fractions`` (of the candidates) picks where to measure (default: at every unit count); an explicit
    order is measured only up to its own length. Columns: ``order, repeat, n_ablated, fraction`` and the
    metric's values (``accuracy, loss`` against the labels ``data`` yields, by default). Random orders get
    ``repeats`` seeded repeats (an int n: repeats 0..n-1; a list: exactly those repeats, so a large set
    can be split across workers: repeat r's order is drawn from (seed, r) alone); others one, numbered 0.
    ``replacement``: a number, ``"mean"`` or a ``Replacement`` (constant ones on the graph
    engine, the rest (positional mean, resample) on the module-prefix engine or the hook path).
    ``reference``: statistics of ``data`` (``collect_stats(..., metric=)``) for the ``"mean"``
    replacement; measured with the same metric on the same tensors, they also stand in for the intact pass.
    """
    ids = _repeat_ids(repeats)
    data = reusable(data)
    sites = list(sites) if sites is not None else sites_for(model, data)
    cand_sites = [s for s in sites if s.name in candidates] if candidates else default_candidates(sites)
    if candidates and len(cand_sites) != len(set(candidates)):
        parse_units([f"{c}:*" for c in candidates], sites)  # raises the unknown-layer error
    pool = parse_units([f"{s.name}:*" for s in cand_sites], sites).units()
    counts = _counts(len(pool), fractions)
    ref = reference
    if ref is None and isinstance(replacement, str) and replacement == "mean":
        ref = collect_stats(model, data, cand_sites, histograms=False, batch_size=batch_size)
    runner = Runner(
        model, data, cand_sites, metric=metric, batch_size=batch_size, engine=engine, precision=precision,
        measured=ref,
    )  # fmt: skip
    fitted: dict[frozenset, Replacement] = {}

    def replacement_for(seq):  # fitted on the layers the order visits (one unit of each)
        layers = frozenset(u.layer for u in seq)
        if layers not in fitted:
            first = list({u.layer: u for u in reversed(seq)}.values()) or pool[:1]
            lesions = [Lesion([u], as_replacement(replacement, ref)) for u in first]
            fitted[layers] = runner.fit(lesions)[0].replacement
        return fitted[layers]

    named = _named_orders(orders)
    jobs = [(n, o, r) for n, o in named for r in (ids if isinstance(o, str) and o == "random" else [0])]
    rows = []
    bar = progress_bar(None, "ablation curves", progress, total=len(jobs) * len(counts))
    seqs = [unit_order(o, pool, units=units, model=model, seed=seed, repeat=r, metric=runner.metric)
            for _, o, r in jobs]  # fmt: skip
    groups: dict[tuple, list[int]] = {}  # orders of one name and length run side by side on the engine
    for i, (name, _, _) in enumerate(jobs):
        groups.setdefault((name, len(seqs[i])), []).append(i)
    done: dict[int, dict] = {}
    for members in groups.values():
        seq0 = seqs[members[0]]
        mine = [k for k in counts if k <= len(seq0)] if fractions is not None else list(range(len(seq0) + 1))
        deletion = replacement_for(seq0)
        lesions = [[Lesion([u], deletion) for u in seqs[i]] for i in members]
        for i, values in zip(members, cumulative_orders(runner, lesions, mine), strict=True):
            done[i] = {"counts": mine, "values": values}
        bar.update(len(counts) * len(members))
    for i, (name, _, r) in enumerate(jobs):
        scalars = _curve_columns(done[i]["values"], runner.metric)
        for j, k in enumerate(done[i]["counts"]):
            rows.append({"order": name, "repeat": r, "n_ablated": k, "fraction": k / len(pool)}
                        | {c: float(v[j]) for c, v in scalars.items()})  # fmt: skip
    bar.close()
    metric_cols = list(_curve_columns(runner.intact, runner.metric))
    curves = pd.DataFrame(rows, columns=["order", "repeat", "n_ablated", "fraction", *metric_cols])
    curves.attrs["curve_column"] = runner.metric.curve_column  # what curve_auc integrates
    curves.attrs["metric_columns"] = metric_cols
    curves.attrs["engine_fallbacks"] = dict(runner.fallbacks)
    curves.attrs["engine_deviation"] = dict(runner.deviation)
    curves.attrs["served"] = dict(runner.served)
    return curves


def _curve_columns(values: dict, metric: Metric) -> dict:
    """The scalar metric outputs of a curve, the metric's curve column first (accuracy for the paper's
    classification curves)."""
    scalars = {k: v for k, v in values.items() if v.ndim == 1}
    first = [k for k in (metric.curve_column, metric.main) if k in scalars][:1]
    return {k: scalars[k] for k in first + [k for k in scalars if k not in first]}


def _named_orders(orders) -> list[tuple[str, str | Sequence]]:
    """(name, order) pairs: names as given, explicit lists numbered ``custom_<i>``."""
    if isinstance(orders, Mapping):
        out = [(str(k), v) for k, v in orders.items()]
    else:
        if isinstance(orders, str):
            orders = [orders]
        out, i = [], 0
        for o in orders:
            if isinstance(o, str):
                out.append((o, o))
            else:
                out.append((f"custom_{i}", o))
                i += 1
    return out  # a named order given twice is the same curve twice, as earlier versions gave it


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


def curve_auc(curves: pd.DataFrame, column: str | None = None) -> pd.DataFrame:
    """AUC of each curve over fraction ablated (raw, in [0, 1] for accuracy) and normalised by the
    largest AUC.

    ``column`` is the metric column integrated: by default the one the curves were made for (the
    metric's ``curve``: accuracy for classification, the main value otherwise), else ``accuracy`` where
    present. Columns: ``order, repeat, auc, auc_normalised`` (plus any extra grouping columns).
    """
    metric_cols = curves.attrs.get("metric_columns")
    if metric_cols is None:  # attrs lost (read back, concatenated): metric columns are the float ones
        metric_cols = [
            c for c in curves.columns if c != "fraction" and pd.api.types.is_float_dtype(curves[c])
        ]
    if column is None:
        column = curves.attrs.get("curve_column") or ("accuracy" if "accuracy" in curves.columns else None)
    if column is None or column not in curves.columns:
        have = ", ".join(c for c in metric_cols) or "none"
        raise LesionError(
            f"curve_auc(column={column!r}): the curves have no such column; metric columns: {have}"
        )
    keys = [c for c in curves.columns if c not in ("n_ablated", "fraction", *metric_cols)]
    out = (
        curves.groupby(keys, sort=False)
        .apply(lambda g: auc(g["fraction"], g[column]), include_groups=False)
        .rename("auc")
        .reset_index()
    )
    out["auc_normalised"] = out["auc"] / out["auc"].max()
    out.attrs["column"] = column
    return out
