"""Pair lesions: two units deleted together, beside each alone, and their interaction.

``pair_effects(model, data, pairs)`` evaluates every pair (``pairs=None`` with ``layer=``: every pair of
that layer) and each unit of them alone, in a tidy table with ``interaction_<col> = delta_<col> -
delta_<col>_a - delta_<col>_b`` (positive loss interaction: the pair hurts more than its parts add up,
the mark of redundant units that cover for each other). Pairs within one layer read by a Linear, a ReLU
and the model's last Linear run on the engine's rank-2 path (``lesion.engine.pairs``); each call checks
it against the hooked model on a seeded sample of its pairs and uses the hooked model for every pair
where they disagree or the path does not apply (the reason is kept in ``df.attrs["engine_fallbacks"]``).

>>> import torch, lesion
>>> from lesion.analyses.pairs import pair_effects
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
>>> x, y = torch.randn(40, 4), torch.arange(40) % 3
>>> df = pair_effects(net, (x, y), layer="1")
>>> len(df), list(df.columns[:2])
(15, ['unit_a', 'unit_b'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lesion.core.batch import Data, first_batch, reusable
from lesion.core.lesions import Lesion, fit_lesions
from lesion.core.metric import Metric
from lesion.core.replacements import Replacement, as_replacement
from lesion.core.runner import Mismatch, Runner
from lesion.core.sites import Site, find_sites
from lesion.core.units import Unit
from lesion.engine.dispatch import engine_of, evaluate_lesions
from lesion.errors import LesionError
from lesion.util.modules import eval_mode
from lesion.util.progress import progress_bar

CHECK_PAIRS = 3  # pairs of every call re-run on the hooked model before the engine's numbers are kept


def pair_effects(
    model: nn.Module,
    data: Data,
    pairs: Sequence[tuple[str, str]] | str | None = None,
    layer: str | None = None,
    metric: Metric | None = None,
    replacement: Any = None,
    progress: bool = False,
    *,
    batch_size: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per pair: ``unit_a``, ``unit_b``, the metric's columns with both deleted, ``delta_<col>``,
    ``delta_<col>_a`` and ``delta_<col>_b`` (each alone) and ``interaction_<col>`` (pair minus both
    singles). ``pairs``: (unit, unit) text pairs such as ``("fc1:3", "fc1:7")``; None or ``"all"`` with
    ``layer``: every pair of that layer. ``replacement``: None (zero), a number, ``"mean"`` or a per-unit
    Replacement. ``seed`` draws the checked sample. ``df.attrs``: intact values, ``engine_fallbacks``,
    ``checked`` (the sampled pairs), ``served`` (pairs the engine gave)."""
    data = reusable(data)
    sites = find_sites(model, first_batch(data))
    chosen = _pairs(pairs, layer, sites)
    used = [s for s in sites if s.name in {u.layer for p in chosen for u in p}]
    runner = Runner(model, data, used, metric=metric, batch_size=batch_size)
    r = _fitted(model, runner, used, replacement)
    units = sorted({u for p in chosen for u in p})
    singles = evaluate_lesions(runner, [Lesion([u], r) for u in units])
    where = {u: k for k, u in enumerate(units)}
    values, checked = _pair_values(runner, chosen, r, seed, progress)
    return _table(chosen, values, singles, [where[a] for a, _ in chosen], [where[b] for _, b in chosen],
                  runner, checked)  # fmt: skip


def _pairs(pairs, layer: str | None, sites: Sequence[Site]) -> list[tuple[Unit, Unit]]:
    by_name = {s.name: s for s in sites}
    if pairs is None or isinstance(pairs, str):
        if pairs not in (None, "all"):
            raise LesionError(
                f"pairs={pairs!r}; expected None or 'all' (with layer=) or a list of unit pairs"
            )
        if layer is None:
            raise LesionError(
                "pairs=None means every pair of one layer; expected layer= (e.g. layer='relu1')"
            )
        if layer not in by_name:
            known = ", ".join(f"{s.name} ({s.width})" for s in sites)
            raise LesionError(f"unknown layer {layer!r}; layers with units: {known}")
        w = by_name[layer].width
        return [(Unit(layer, i), Unit(layer, j)) for i in range(w) for j in range(i + 1, w)]
    out = []
    for p in pairs:
        if isinstance(p, str) or len(p) != 2:
            raise LesionError(f"pair {p!r}; expected two unit addresses such as ('fc1:3', 'fc1:7')")
        a, b = (u if isinstance(u, Unit) else Unit.parse(str(u)) for u in p)
        for u in (a, b):
            if u.layer not in by_name or not 0 <= u.index < by_name[u.layer].width:
                known = ", ".join(f"{s.name} ({s.width})" for s in sites)
                raise LesionError(f"unit {u} of pair {p!r} is not a unit of the model; layers: {known}")
        if a == b:
            raise LesionError(f"pair {p!r} names one unit twice; expected two different units")
        out.append((a, b))
    if not out:
        raise LesionError("pairs is empty; expected at least one pair of units")
    return out


def _fitted(model, runner: Runner, used: Sequence[Site], replacement) -> Replacement:
    """The replacement, fitted once on the data for every unit of the used sites."""
    r = as_replacement(0.0 if replacement is None else replacement)
    if r.edit is not None:
        raise LesionError(f"{type(r).__name__} transforms whole sites; expected a per-unit replacement")
    every = Lesion([f"{s.name}:*" for s in used], r).resolve(list(used))
    return fit_lesions(model, runner.data, runner.sites, [every])[0].replacement


def _pair_values(runner: Runner, chosen, r: Replacement, seed: int, progress: bool):
    """Metric values (pairs, ...) of every pair, and the positions checked against the hooked model."""
    rng = np.random.default_rng(seed)
    checked = np.sort(rng.choice(len(chosen), size=min(CHECK_PAIRS, len(chosen)), replace=False))
    layers = {u.layer for p in chosen for u in p}
    if len(layers) == 1 and r.constant and r.repeats == 1:
        got = _on_engine(runner, chosen, r, progress)
        if got is not None:
            try:
                ref = runner.run([Lesion(list(chosen[i]), r) for i in checked])
                runner.agree(ref, {k: v[checked] for k, v in got.items()})
                runner.served["graph"] += len(chosen)
                return got, checked
            except Mismatch as exc:
                runner.fallbacks["pairs"] = f"the rank-2 path disagreed with the hooked model: {exc}"
    with progress_bar(None, "pairs", progress, total=len(chosen)) as bar:
        return evaluate_lesions(runner, [Lesion(list(p), r) for p in chosen], bar=bar), checked


def _on_engine(runner: Runner, chosen, r: Replacement, progress: bool) -> dict | None:
    from lesion.engine import Unsupported
    from lesion.engine.pairs import pair_units

    eng = engine_of(runner)
    if eng is None:
        return None
    layer = chosen[0][0].layer
    flat = [tuple(sorted((a.index, b.index))) for a, b in chosen]
    order = sorted(range(len(flat)), key=lambda p: flat[p])  # pairs sharing a first unit side by side
    metric = runner.fresh(len(flat))
    fill = r.fill(runner.sites[layer])
    with progress_bar(None, "pairs", progress, total=len(flat)) as bar:
        shown = [0]

        def advance(examples: int) -> None:
            now = len(flat) * examples // max(1, runner.n or 1)
            bar.update(now - shown[0])
            shown[0] = now

        try:
            with torch.no_grad(), eval_mode(runner.model):
                pair_units(eng, layer, [flat[p] for p in order], fill if bool(fill.any()) else None, metric,
                           progress=advance)  # fmt: skip
        except Unsupported as exc:
            runner.fallbacks["pairs"] = str(exc)
            bar.update(-shown[0])
            return None
    values = metric.compute()
    back = np.empty(len(order), dtype=np.int64)
    back[np.asarray(order)] = np.arange(len(order))
    return {k: v[back] for k, v in values.items()}


def _table(chosen, values, singles, ia, ib, runner: Runner, checked) -> pd.DataFrame:
    one_d = [k for k, v in values.items() if v.ndim == 1]  # loss, accuracy...: per-class stays in sweep()
    cols, one = {k: values[k] for k in one_d}, {k: singles[k] for k in one_d}
    intact = {k: runner.intact[k] for k in one_d}
    df = pd.DataFrame({"unit_a": [str(a) for a, _ in chosen], "unit_b": [str(b) for _, b in chosen], **cols})
    for name in cols:
        base = intact[name][0]
        df[f"delta_{name}"] = df[name] - base
        df[f"delta_{name}_a"] = one[name][ia] - base
        df[f"delta_{name}_b"] = one[name][ib] - base
        df[f"interaction_{name}"] = df[f"delta_{name}"] - df[f"delta_{name}_a"] - df[f"delta_{name}_b"]
    df.attrs.update(intact={k: float(v[0]) for k, v in intact.items()}, n=runner.n)
    df.attrs.update(engine_fallbacks=dict(runner.fallbacks), served=dict(runner.served))
    df.attrs["checked"] = [f"{chosen[i][0]}+{chosen[i][1]}" for i in checked]
    return df


__all__ = ["pair_effects"]
