"""Direct effects of MLP neurons on the logits, beside their total effects (Stolfo et al. 2024).

Deleting neuron ``j`` (activity ``a``, replacement ``r``) changes what its MLP writes into the residual
stream by ``(r - a) * W_out[j]`` at every position (in a gated MLP, ``down(act(gate) * up)``, by
``(r - a) * up * W_out[j]``). Its direct effect is that change alone, carried to the logits through the
final norm with its scale frozen at the intact value (LayerNorm: centre, divide by the intact sigma, times
gamma; RMSNorm: divide by the intact rms, times gamma) and the unembedding, added to the intact logits and
scored by the metric. Every neuron of a layer is scored from one forward pass: the change of the logits
is ``(r - a)[b, t, j] / sigma[b, t] * U[j]`` with ``U = (centred W_out * gamma) @ W_U`` (width, vocab).
The total effect is the exact change from ``lesion.sweep``; where a neuron's total effect differs from
its direct effect, later layers (or the norm's changing scale) carry part of it.

The final norm and the unembedding are found from the model, not from name tables: the unembedding is
``model.get_output_embeddings()`` (Hugging Face) or the last Linear whose output is the logits; the final
norm is the last LayerNorm/RMSNorm before it whose output is the unembedding's input (none: the
unembedding reads the residual stream itself). Both are checked against the intact pass before use.
Assumed: the MLP's output is added to the residual stream unchanged (no norm after the MLP).

>>> import torch, lesion
>>> lm = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 16), torch.nn.GELU(),
...                          torch.nn.Linear(16, 8), torch.nn.Linear(8, 10))  # MLP, then the unembedding
>>> df = lesion.direct_effects(lm, torch.randint(0, 10, (4, 6)))
>>> df.attrs["projections"], df.attrs["final_norm"], bool((df.direct - df.total).abs().max() < 1e-5)
({'2': '3'}, None, True)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lesion.analyses.attribution import (
    fitted_replacement,
    main_column,
    replacement_delta,
    scatter_layers,
    spearman,
)
from lesion.analyses.readout import Readout, Writer, locate
from lesion.analyses.sweep import sites_for, sweep
from lesion.core.batch import Batch, Data, batches, output_tensor, reusable
from lesion.core.lesions import Lesion
from lesion.core.metric import Metric
from lesion.core.metric_lm import NextTokenLoss
from lesion.core.sites import Site
from lesion.errors import LesionError
from lesion.util.modules import eval_mode, model_device
from lesion.util.progress import progress_bar

MAX_LOGITS = 1 << 24  # floats of lesioned logits scored at once (k neurons x batch x positions x vocab)


def _only(writers: list[Writer], units: Sequence[str]) -> list[Writer]:
    """The writers restricted to ``units`` (text ``layer:index``); sites without any of them left out."""
    want = [str(u).rpartition(":") for u in units]
    rows = {w.site.name: sorted({int(j) for layer, _, j in want if layer == w.site.name}) for w in writers}
    return [Writer(w.site, w.proj, w.w_out[rows[w.site.name]], w.gate, rows[w.site.name])
            for w in writers if rows[w.site.name]]  # fmt: skip


def direct_effects(
    model: nn.Module,
    data: Data,
    *,
    metric: Metric | None = None,
    sites: Sequence[Site] | None = None,
    replacement: Any = 0.0,
    total: bool = True,
    batch_size: int = 1000,
    progress: bool = False,
    units: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per MLP neuron of a decoder language model (``units``: only these, as ``"layer:index"``
    text): ``unit``, ``layer``, ``index``, ``direct``
    (change of the metric's main column through the residual stream alone, final norm scale frozen) and,
    with ``total=True``, ``total`` (the exact change, ``lesion.sweep``) and ``ratio`` = direct / total.

    ``metric`` defaults to ``NextTokenLoss()`` (``LogitDiff`` and ``KL`` work too); ``sites`` to every MLP
    activation site; ``replacement`` to 0 (``"mean"`` or any per-unit Replacement). ``df.attrs`` names the
    final norm, the unembedding, each site's projection and gate, the metric column, intact values and
    ``spearman`` (direct against total: {"all": rho, layer: rho}). ``plot_direct`` draws them.
    """
    data = reusable(data)
    metric = metric if metric is not None else NextTokenLoss()
    col = main_column(metric)
    if sites is None:  # every MLP activation: the head views are left out
        sites = [s for s in sites_for(model, data) if not s.heads]
    readout, writers = locate(model, data, sites)
    if units is not None:
        writers = _only(writers, units)
    sites = [w.site for w in writers]
    r = fitted_replacement(model, data, sites, replacement)
    if r.repeats > 1:
        raise LesionError(
            "direct_effects scores one replacement per neuron; expected Resample(repeats=1) (a sweep would "
            "average the metric over draws, a nonlinear function of them)"
        )
    direct, intact = _direct(model, data, readout, writers, metric, r, batch_size, progress)
    df = pd.DataFrame({
        "unit": [f"{w.site.name}:{j}" for w in writers for j in w.rows],
        "layer": [w.site.name for w in writers for _ in w.rows],
        "index": [j for w in writers for j in w.rows],
        "direct": direct[col] - intact[col][0],
    })  # fmt: skip
    df.attrs.update(
        metric=col, final_norm=readout.norm, unembedding=readout.unembed,
        projections={w.site.name: w.proj for w in writers}, gates={w.site.name: w.gate for w in writers},
        intact={k: float(v[0]) for k, v in intact.items() if v.ndim == 1},
    )  # fmt: skip
    if total:
        lesions = [Lesion(u, r) for u in df["unit"]]
        swept = sweep(model, data, lesions, metric, sites=sites, batch_size=batch_size, progress=progress)
        df["total"] = swept[f"delta_{col}"].to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            df["ratio"] = np.where(df["total"] != 0, df["direct"] / df["total"], np.nan)
        rho = {"all": spearman(df["direct"], df["total"])}
        df.attrs["spearman"] = rho | {
            str(n): spearman(g["direct"], g["total"]) for n, g in df.groupby("layer")
        }
    return df


def plot_direct(table: pd.DataFrame, path: str | Path, *, title: str | None = None) -> list[Path]:
    """Direct (x) against total (y) effect of every neuron, one panel per layer, the diagonal dashed.

    ``table`` is ``direct_effects``'s (with ``total``). Saves PNG (150 dpi) and SVG; returns their paths.
    """
    if "total" not in table:
        raise LesionError("plot_direct needs the total effects; expected direct_effects(..., total=True)")
    col = table.attrs.get("metric", "metric")
    heading = title or f"Direct (final norm frozen) vs total effect of each MLP neuron (Δ {col})"
    note = "dashed: direct = total; off the diagonal, later layers or the final norm's scale carry part"
    return scatter_layers(table, path, "direct", "total", heading, note)


def _direct(model, data, readout: Readout, writers: list[Writer], metric: Metric, r, batch_size, progress):
    """Metric values (n,) of every neuron's direct path, and the intact values (1,), one pass per batch."""
    named = dict(model.named_modules())
    got: dict[str, torch.Tensor] = {}
    spots = {w.site.target for w in writers} | {w.gate for w in writers if w.gate}
    handles = [named[n].register_forward_hook(_keep(n, got, False)) for n in spots]
    if readout.norm is not None:
        handles.append(named[readout.norm].register_forward_hook(_keep(readout.norm, got, True)))
    units = [readout.through(w.w_out) for w in writers]  # (width, vocab) per site
    values, intact = copy.copy(metric), copy.copy(metric)
    values.reset(sum(len(w.rows) for w in writers))
    intact.reset(1)
    try:
        with torch.no_grad(), eval_mode(model):
            for k, b in enumerate(
                progress_bar(batches(data, batch_size=batch_size), "direct effects", progress)
            ):
                b = b.to(model_device(model))
                got.clear()
                out = output_tensor(b.run(model))  # (batch, t, vocab)
                intact.update(out[None], b, slice(0, 1), intact=out)
                inv = (
                    readout.inverse_scale(got[readout.norm])
                    if readout.norm
                    else torch.ones(out.shape[:2], device=out.device)
                )
                _score(values, out, b, k, writers, units, got, inv, r)
    finally:
        for h in handles:
            h.remove()
    return values.compute(), intact.compute()


def _keep(name: str, got: dict, inputs: bool):
    def fn(_m, ins, output):
        got[name] = ins[0] if inputs else output

    return fn


def _score(values: Metric, out, b: Batch, k: int, writers, units, got, inv, r) -> None:
    """Score every neuron's lesioned logits: intact + (r - a) [x gate] / sigma x U[j], in chunks."""
    offset = 0
    for w, u in zip(writers, units, strict=True):
        d = replacement_delta(r, w.site, got[w.site.target], b, k)[..., 0]  # (batch, t, width)
        if w.gate:
            d = d * got[w.gate]
        d = d[..., w.rows] if len(w.rows) != w.site.width else d  # (batch, t, neurons measured)
        c = (d.double() * inv.double()[..., None]).permute(2, 0, 1)  # (neurons, batch, t)
        step = max(1, MAX_LOGITS // out.numel())
        base = out.double()[None]
        for j in range(0, len(w.rows), step):
            jj = min(j + step, len(w.rows))
            lesioned = base + c[j:jj, ..., None] * u[j:jj, None, None, :]  # (k, batch, t, vocab)
            values.update(lesioned.to(out.dtype), b, slice(offset + j, offset + jj), intact=out)
        offset += len(w.rows)


__all__ = ["direct_effects", "plot_direct"]
