"""The attribution estimate of every unit's ablation effect, beside the exact effect (attribution patching).

The first-order estimate of replacing unit ``j``'s activity ``a`` by ``r`` is ``sum (r - a) * dL/da`` over
the unit's channels (a head's ``head_dim`` slice) and every position, from one forward and one backward
pass per batch (Syed et al. 2023; Kramar et al. 2024, "AtP*"). ``L`` is the metric's main value (mean
loss, mean logit difference...), so the estimate predicts ``delta_<main>`` of ``lesion.sweep``.
``attribution_table`` puts both in one table with their rank correlation and the units the estimate
misses; ``plot_attribution`` draws them against each other, one panel per layer.

>>> import torch, lesion
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
>>> x = torch.randn(20, 3)
>>> m = lesion.metrics.Scalar(lambda out, b: out[:, 0], name="out")
>>> df = lesion.attribution_table(net, x, metric=m)
>>> bool(((df.estimate - df.exact).abs() < 1e-5).all())  # a linear readout: the estimate is exact
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lesion.backends.ray_sweep import evaluate
from lesion.core.batch import Batch, Data, batches, first_batch, output_tensor, reusable
from lesion.core.lesions import Lesion, fit_lesions
from lesion.core.metric import Classification, Metric, columns
from lesion.core.replacements import Context, Replacement, as_replacement
from lesion.core.runner import Runner
from lesion.core.sites import Site, find_sites
from lesion.errors import DataError, LesionError
from lesion.util.modules import eval_mode, model_device
from lesion.util.progress import progress_bar

TOP_EXACT = 0.10  # a unit is "missed" when in the top 10% by |exact| and either ...
TOP_ESTIMATE = 0.50  # ... not in the top 50% by |estimate| ...
RECOVERED = 0.10  # ... or its estimate recovers less than 10% of it: |estimate| < 0.1 |exact|


def main_column(metric: Metric) -> str:
    """The metric column effects are given in (``metric.main``): ``loss``, ``logit_diff``, a Scalar name."""
    return metric.main


def objective(metric: Metric, out: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, float]:
    """(the batch's differentiable sum of the metric's main value, the count it is averaged over):
    ``metric.loss``. Summed over batches and divided by the summed counts it is the main column."""
    return metric.loss(out, batch)


def unit_axis(site: Site, h: torch.Tensor) -> torch.Tensor:
    """A site's tensor (as ``site.view`` gives it), units second to last: (batch, ..., width, group)."""
    return h.movedim(site.unit_dim, -1).unflatten(-1, (site.width, site.group))


def replacement_delta(r: Replacement, site: Site, a: torch.Tensor, batch: Batch, k: int) -> torch.Tensor:
    """``r - a`` for every unit of ``site`` at once: (batch, ..., width, group), ``a`` the site's view.
    A replacement with ``repeats`` (Resample) gives the mean over its draws, as a sweep averages them."""
    cur = unit_axis(site, a)
    ctx = Context(site, torch.arange(site.width, device=a.device), batch, k)
    repeats = r.repeats
    draws = [r.draw(i) for i in range(repeats)] if repeats > 1 else [r]
    new = sum(d.values(cur, ctx).to(device=cur.device, dtype=cur.dtype) for d in draws) / len(draws)
    return torch.broadcast_to(new, cur.shape) - cur


def fitted_replacement(model: nn.Module, data: Data, sites: Sequence[Site], replacement: Any) -> Replacement:
    """``replacement`` (a number, ``"mean"`` or a Replacement) fitted on ``data`` at ``sites``."""
    r = as_replacement(replacement)
    if r.edit is not None:
        raise LesionError(
            f"{type(r).__name__} transforms whole sites; expected a per-unit replacement such as Zero(), "
            "Mean(), PositionalMean() or Resample()"
        )
    every = Lesion([f"{s.name}:*" for s in sites], r).resolve(list(sites))
    return fit_lesions(model, data, {s.name: s for s in sites}, [every])[0].replacement


def estimates(
    model: nn.Module,
    data: Data,
    sites: Sequence[Site],
    metric: Metric,
    replacement: Replacement,
    *,
    batch_size: int = 1000,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """The estimated change of the metric's main column per unit, ``{site: (width,)}``, from one forward and
    one backward pass per batch (gradients are taken with ``torch.autograd.grad``: no ``.grad`` is touched).
    """
    named = dict(model.named_modules())
    got: dict[str, torch.Tensor] = {}
    handles = [_capture(named[s.target], s, got) for s in sites]
    sums = {s.name: torch.zeros(s.width, dtype=torch.float64) for s in sites}
    count = 0.0
    device = model_device(model)
    try:
        with torch.enable_grad(), eval_mode(model):
            for k, b in enumerate(progress_bar(batches(data, batch_size=batch_size), "gradients", progress)):
                got.clear()
                b = b.to(device)
                total, n = objective(metric, output_tensor(b.run(model)), b)
                _check_objective(total, metric, k)
                held = [got[s.name] for s in sites]
                grads = torch.autograd.grad(total, held, allow_unused=True)
                for s, a, g in zip(sites, held, grads, strict=True):
                    g = torch.zeros_like(a) if g is None else g
                    d = replacement_delta(replacement, s, s.view(a.detach()), b, k)
                    per_unit = (d * unit_axis(s, s.view(g))).movedim(-2, 0).reshape(s.width, -1)
                    sums[s.name] += per_unit.double().sum(1).cpu()
                count += n
    finally:
        for h in handles:
            h.remove()
    return {name: (v / count).numpy() for name, v in sums.items()}


def _check_objective(total: torch.Tensor, metric: Metric, k: int) -> None:
    if total.ndim != 0:
        raise LesionError(
            f"metric {type(metric).__name__} gave {tuple(total.shape)} per batch; expected a scalar"
        )
    if not total.requires_grad:
        raise LesionError(
            f"metric {type(metric).__name__} does not depend differentiably on the model's output (a Scalar "
            "function that detaches or leaves torch?); expected a differentiable function of the output"
        )
    if not torch.isfinite(total):
        raise DataError(f"batch {k}: the metric is NaN or infinite; expected finite outputs")


def _capture(module: nn.Module, site: Site, got: dict[str, torch.Tensor]):
    """Hook ``site``'s tensor: a fresh node of the graph used by this module alone, kept in ``got``."""

    def fresh(x: torch.Tensor) -> torch.Tensor:
        y = x.clone() if x.requires_grad else x.detach().clone().requires_grad_()
        got[site.name] = y
        return y

    if site.hook == "input":
        return module.register_forward_pre_hook(lambda _m, inputs: (fresh(inputs[0]), *inputs[1:]))
    return module.register_forward_hook(lambda _m, _inputs, output: fresh(output))


def attribution_table(
    model: nn.Module,
    data: Data,
    *,
    metric: Metric | None = None,
    sites: Sequence[Site] | None = None,
    replacement: Any = 0.0,
    exact: bool = True,
    batch_size: int = 1000,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per unit of ``sites`` (default: every MLP activation and attention-head view): ``unit``,
    ``layer``, ``index``, ``kind`` (neuron or head), ``estimate`` (first-order change of the metric's main
    column) and, with ``exact=True``, ``exact`` (its change measured by ``lesion.sweep``) and ``missed``.

    ``replacement``: 0 (default), ``"mean"`` (per unit, fitted on ``data``) or a per-unit Replacement.
    ``df.attrs``: ``metric`` (the column), ``spearman`` ({"all": rho, layer: rho}; NaN where a ranking is
    constant), ``missed`` (units in the top 10% by |exact| that either are not in the top 50% by
    |estimate| or whose |estimate| is under a tenth of |exact|: large effect, small estimate),
    ``missed_rule``, ``intact``.
    """
    data = reusable(data)
    metric = metric if metric is not None else Classification()
    col = main_column(metric)
    sites = list(sites) if sites is not None else find_sites(model, first_batch(data))
    r = fitted_replacement(model, data, sites, replacement)
    est = estimates(model, data, sites, metric, r, batch_size=batch_size, progress=progress)
    df = pd.DataFrame({
        "unit": [f"{s.name}:{j}" for s in sites for j in range(s.width)],
        "layer": [s.name for s in sites for _ in range(s.width)],
        "index": [j for s in sites for j in range(s.width)],
        "kind": ["head" if s.heads else "neuron" for s in sites for _ in range(s.width)],
        "estimate": np.concatenate([est[s.name] for s in sites]),
    })  # fmt: skip
    df.attrs.update(metric=col, replacement=repr(type(r).__name__))
    if exact:  # lesion.sweep's evaluation (analyses.sweep imports this module, through triage)
        runner = Runner(model, data, sites, metric=metric, batch_size=batch_size)
        chosen = runner.fit([Lesion(u, r) for u in df["unit"]])
        with progress_bar(None, "lesions", progress, total=len(chosen)) as bar:
            values = columns(evaluate(runner, chosen, bar=bar))
        df["exact"] = values[col] - columns(runner.intact)[col][0]
        intact = {k: float(v[0]) for k, v in columns(runner.intact).items()}
        df.attrs.update(intact=intact, engine_fallbacks=dict(runner.fallbacks))
        _compare(df)
    return df


def _compare(df: pd.DataFrame) -> None:
    """Rank correlations and the missed units, into ``df.attrs`` and the ``missed`` column."""
    rho = {"all": spearman(df["estimate"], df["exact"])}
    for layer, g in df.groupby("layer", sort=False):
        rho[str(layer)] = spearman(g["estimate"], g["exact"])
    n = len(df)
    top = max(1, math.ceil(TOP_EXACT * n))
    by_exact = np.argsort(-df["exact"].abs().to_numpy(), kind="stable")[:top]
    est_rank = np.empty(n, dtype=np.int64)
    est_rank[np.argsort(-df["estimate"].abs().to_numpy(), kind="stable")] = np.arange(n)
    est, ex = df["estimate"].abs().to_numpy(), df["exact"].abs().to_numpy()
    missed = [i for i in by_exact if est_rank[i] >= math.ceil(TOP_ESTIMATE * n) or est[i] < RECOVERED * ex[i]]
    df["missed"] = np.isin(np.arange(n), missed)
    df.attrs.update(spearman=rho, missed=[df["unit"].iloc[i] for i in missed])
    df.attrs["missed_rule"] = (
        f"in the top {TOP_EXACT:.0%} of units by |exact|, and either not in the top {TOP_ESTIMATE:.0%} by "
        f"|estimate| or |estimate| < {RECOVERED:g} x |exact|"
    )


def spearman(x, y) -> float:
    """Spearman's rank correlation; NaN with fewer than 3 values or a constant ranking (no warning)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def plot_attribution(table: pd.DataFrame, path: str | Path, *, title: str | None = None) -> list[Path]:
    """Estimate (x) against exact (y) change, one panel per layer, the diagonal dashed, missed units in red.

    ``table`` is ``attribution_table``'s (with ``exact``). Saves PNG (150 dpi) and SVG; returns their paths.
    """
    if "exact" not in table:
        raise LesionError(
            "plot_attribution needs the exact effects; expected a table of attribution_table(..., exact=True)"
        )
    col = table.attrs.get("metric", "metric")
    heading = title or f"Attribution estimate vs exact ablation effect (Δ {col})"
    note = (
        "dots: neurons, triangles: heads (labelled by index); red: missed (large exact effect, small "
        "estimate); dashed: estimate = exact"
    )
    return scatter_layers(table, path, "estimate", "exact", heading, note)


def scatter_layers(
    table: pd.DataFrame, path: str | Path, x: str, y: str, title: str, note: str
) -> list[Path]:
    """Column ``x`` against ``y``, one panel per layer, titled with ``table.attrs["spearman"]``."""
    from matplotlib.figure import Figure

    layers = list(dict.fromkeys(table["layer"]))
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig = Figure(figsize=(max(3.4 * cols, 8.0), 3.2 * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    rho = table.attrs.get("spearman", {})
    col = table.attrs.get("metric", "metric")
    for ax, layer in zip(axes, layers, strict=False):
        _panel(ax, table[table["layer"] == layer], x, y, col)
        ax.set_title(f"{layer}\nSpearman ρ = {rho.get(layer, float('nan')):.2f}", fontsize=9)
    for ax in axes[len(layers) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}\nall units: Spearman ρ = {rho.get('all', float('nan')):.2f}", fontsize=11)
    fig.supxlabel(note, fontsize=8)
    return _save(fig, path)


def _panel(ax, g: pd.DataFrame, x_col: str, y_col: str, col: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.grid(True, color="0.9", lw=0.8)
    ax.set_axisbelow(True)
    x, y = g[x_col].to_numpy(), g[y_col].to_numpy()
    lo, hi = float(min(x.min(), y.min(), 0.0)), float(max(x.max(), y.max(), 0.0))
    ax.plot([lo, hi], [lo, hi], ls="--", color="0.5", lw=1)
    miss = g["missed"].to_numpy() if "missed" in g else np.zeros(len(g), dtype=bool)
    marker = "^" if "kind" in g and (g["kind"] == "head").all() else "o"
    ax.scatter(x[~miss], y[~miss], s=14 if marker == "o" else 40, marker=marker, color="tab:blue", alpha=0.7)
    ax.scatter(x[miss], y[miss], s=14 if marker == "o" else 40, marker=marker, color="tab:red")
    labelled = g if marker == "^" else g[miss]  # heads are few: label them all; neurons only when missed
    for _, row in labelled.iterrows():
        ax.annotate(str(row["index"]), (row[x_col], row[y_col]), fontsize=7, xytext=(3, 2),
                    textcoords="offset points", color="tab:red" if row.get("missed") else "0.2")  # fmt: skip
    ax.set_xlabel(f"{x_col} (Δ {col})", fontsize=8)
    ax.set_ylabel(f"{y_col} (Δ {col})", fontsize=8)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    ax.tick_params(labelsize=7)


def _save(fig, path: str | Path) -> list[Path]:
    png = Path(path).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=150)
    svg = png.with_suffix(".svg")
    fig.savefig(svg)
    return [png, svg]


__all__ = ["attribution_table", "estimates", "main_column", "objective", "plot_attribution"]
