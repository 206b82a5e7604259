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
from dataclasses import dataclass
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
from lesion.analyses.sweep import sites_for, sweep
from lesion.core.batch import Batch, Data, batches, output_tensor, reusable
from lesion.core.lesions import Lesion
from lesion.core.metric import Metric
from lesion.core.metric_lm import NextTokenLoss
from lesion.core.sites import Site, _last_dim
from lesion.errors import LesionError, SiteError
from lesion.util.modules import eval_mode, model_device
from lesion.util.progress import progress_bar

MAX_LOGITS = 1 << 24  # floats of lesioned logits scored at once (k neurons x batch x positions x vocab)


@dataclass
class Readout:
    """Residual stream to logits: the final norm (or none) and the unembedding, as (in, out) rows."""

    unembed: str
    rows: torch.Tensor  # (d_model, vocab)
    norm: str | None = None
    rms: bool = False
    gamma: torch.Tensor | None = None  # (d_model,)
    eps: float = 0.0

    def inverse_scale(self, x: torch.Tensor) -> torch.Tensor:
        """1 / (the norm's intact sigma or rms) per position, (batch, t), of the norm's input ``x``."""
        x = x.double()
        var = (x**2).mean(-1) if self.rms else x.var(-1, unbiased=False)
        return (var + self.eps).rsqrt().to(x.dtype)

    def through(self, w: torch.Tensor) -> torch.Tensor:
        """Rows ``w`` (k, d_model) written into the residual stream, as logits per unit scale: (k, vocab)."""
        w = w.double()
        if self.norm is not None and not self.rms:
            w = w - w.mean(-1, keepdim=True)
        if self.gamma is not None:
            w = w * self.gamma.double()
        return w @ self.rows.double()


@dataclass
class Writer:
    """How a site's neurons write to the residual stream: the projection's rows and an optional gate."""

    site: Site
    proj: str
    w_out: torch.Tensor  # (neurons, d_model): the rows of the neurons ``rows``
    gate: str | None = None  # module whose output multiplies the activation before the projection
    rows: list[int] | None = None  # the site's neurons measured (None: every one)

    def __post_init__(self):
        if self.rows is None:
            self.rows = list(range(self.site.width))


def _only(writers: list[Writer], units: Sequence[str]) -> list[Writer]:
    """The writers restricted to ``units`` (text ``layer:index``); sites without any of them left out."""
    want = [str(u).rpartition(":") for u in units]
    rows = {w.site.name: sorted({int(j) for layer, _, j in want if layer == w.site.name}) for w in writers}
    return [Writer(w.site, w.proj, w.w_out[rows[w.site.name]], w.gate, rows[w.site.name])
            for w in writers if rows[w.site.name]]  # fmt: skip


def readout(model: nn.Module, data: Data) -> Readout:
    """The final norm and the unembedding of a decoder language model, found and checked on one intact
    pass of the first examples of ``data`` (as ``direct_effects`` finds them)."""
    batch = next(batches(data, batch_size=8)).to(model_device(model))
    rec, logits = _probe(model, batch)
    return _readout(model, rec, logits)


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


def _neuron_sites(sites: Sequence[Site]) -> list[Site]:
    for s in sites:
        if s.heads or s.group != 1 or len(s.shape) != 2 or s.unit_dim != 2:
            raise SiteError(
                f"site {s.name!r} ({s.module_type}, shape {s.shape}) is not a layer of MLP neurons; direct "
                "effects need (batch, positions, neurons) activations such as 'transformer.h.0.mlp.act'"
            )
    if not sites:
        raise SiteError("no MLP neuron sites to measure; expected sites such as 'transformer.h.0.mlp.act'")
    return list(sites)


def locate(model: nn.Module, data: Data, sites: Sequence[Site]) -> tuple[Readout, list[Writer]]:
    """The readout (final norm, unembedding) and each site's output projection, from one intact pass on
    the first batch, each checked against what that pass computed."""
    batch = next(batches(data, batch_size=8)).to(model_device(model))
    rec, logits = _probe(model, batch)
    readout = _readout(model, rec, logits)
    return readout, [_writer(model, rec, s, readout) for s in _neuron_sites(sites)]


def _probe(model: nn.Module, batch: Batch) -> tuple[dict[str, dict], torch.Tensor]:
    """Every module's first input and output on ``batch``, with its execution order."""
    rec: dict[str, dict] = {}

    def hook(name):
        def fn(_m, inputs, output):
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            out = output if isinstance(output, torch.Tensor) else None
            rec.setdefault(name, {"order": len(rec), "input": first, "output": out, "calls": 0})["calls"] += 1

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad(), eval_mode(model):
            logits = output_tensor(batch.run(model))
    finally:
        for h in handles:
            h.remove()
    return rec, logits


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    return bool(torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5 * (1 + float(b.abs().max()))))


def _readout(model: nn.Module, rec: dict[str, dict], logits: torch.Tensor) -> Readout:
    if logits.ndim != 3:
        raise SiteError(
            f"direct effects need a language model's logits (batch, positions, vocab); the model returned "
            f"shape {tuple(logits.shape)} (a classifier has no unembedding of the residual stream)"
        )
    named = dict(model.named_modules())
    name = _unembedding(model, rec, named, logits)
    inp = rec[name]["input"]
    rows = _rows(named[name], name)
    norms = [
        n
        for n, r in rec.items()
        if r["order"] < rec[name]["order"] and r["calls"] == 1 and _is_norm(named[n])
    ]
    norm = next((n for n in reversed(norms) if _same(rec[n]["output"], inp)), None)
    if norm is None:
        return Readout(name, rows)
    m = named[norm]
    gamma = getattr(m, "weight", None)
    eps = getattr(m, "eps", None) or getattr(m, "variance_epsilon", None) or torch.finfo(inp.dtype).eps
    readout = Readout(name, rows, norm, "rms" in type(m).__name__.lower(), _vector(gamma), float(eps))
    x = rec[norm]["input"]
    rebuilt = _normalise(readout, x) * (1.0 if gamma is None else gamma) + _bias(m)
    if not _same(rebuilt.to(inp.dtype), rec[norm]["output"]):
        raise SiteError(
            f"the final norm {norm!r} ({type(m).__name__}) does not compute a LayerNorm or RMSNorm with a "
            "'weight' (gamma) as expected, so its scale cannot be frozen; direct effects are not defined here"
        )
    return readout


def _unembedding(model: nn.Module, rec, named, logits: torch.Tensor) -> str:
    get = getattr(model, "get_output_embeddings", None)
    emb = get() if callable(get) else None
    names = [n for n, m in named.items() if m is emb and n in rec] if emb is not None else []
    if not names:
        names = [n for n, r in sorted(rec.items(), key=lambda kv: kv[1]["order"]) if _last_dim(named[n])
                 and not _is_norm(named[n]) and _same(r["output"], logits)][-1:]  # fmt: skip
    if not names or not _same(rec[names[0]]["output"], logits) or rec[names[0]]["calls"] != 1:
        raise SiteError(
            "direct effects need an unembedding: a Linear layer run once whose output is the model's logits "
            "(Hugging Face: model.get_output_embeddings()); found none (logits scaled or capped after it, or "
            "not a language model?)"
        )
    return names[0]


def _is_norm(m: nn.Module) -> bool:
    name = type(m).__name__
    return isinstance(m, nn.LayerNorm | nn.RMSNorm) or name.endswith(("LayerNorm", "RMSNorm"))


def _vector(v) -> torch.Tensor | None:
    return v.detach() if isinstance(v, torch.Tensor) else None


def _bias(m: nn.Module):
    b = getattr(m, "bias", None)
    return b.detach() if isinstance(b, torch.Tensor) else 0.0


def _normalise(readout: Readout, x: torch.Tensor) -> torch.Tensor:
    centred = x.double() if readout.rms else x.double() - x.double().mean(-1, keepdim=True)
    return centred * readout.inverse_scale(x).double()[..., None]


def _rows(m: nn.Module, name: str) -> torch.Tensor:
    """A projection's weight as (in, out): Linear's is (out, in), GPT-2's Conv1D's (in, out)."""
    if isinstance(m, nn.Linear):
        return m.weight.detach().T
    if type(m).__name__ == "Conv1D":
        return m.weight.detach()
    raise SiteError(
        f"module {name!r} is a {type(m).__name__}; expected a Linear (or GPT-2 Conv1D) projection"
    )


def _writer(model: nn.Module, rec: dict[str, dict], site: Site, readout: Readout) -> Writer:
    """The first Linear-like module after ``site`` in its MLP that reads its activation (or the
    activation times a sibling's output, as in Llama's ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``)."""
    named = dict(model.named_modules())
    a = rec[site.target]["output"]
    parent = site.target.rpartition(".")[0]
    inside = [n for n in rec if (not parent or n.startswith(parent + ".")) and _last_dim(named[n])]
    after = sorted(
        (n for n in inside if rec[n]["order"] > rec[site.target]["order"]), key=lambda n: rec[n]["order"]
    )
    for proj in after:
        z = rec[proj]["input"]
        gate = (
            None
            if _same(z, a)
            else next((g for g in inside if g != proj and _same(z, a * _out(rec, g, a))), "")
        )
        if gate == "":
            continue
        w = _rows(named[proj], proj)
        if w.shape != (site.width, readout.rows.shape[0]):
            raise SiteError(
                f"the projection {proj!r} of site {site.name!r} maps {w.shape[0]} -> {w.shape[1]}; expected "
                f"{site.width} neurons -> the residual stream's {readout.rows.shape[0]}"
            )
        _check_no_post_norm(rec, named, proj, parent)
        return Writer(site, proj, w, gate)
    raise SiteError(
        f"found no output projection for site {site.name!r}: expected a Linear-like module in {parent!r} "
        "whose input is the activation (or the activation times a sibling's output, as in gated MLPs)"
    )


def _check_no_post_norm(rec: dict[str, dict], named, proj: str, parent: str) -> None:
    """Refuse MLPs whose output is normalised before it joins the residual stream (Gemma 2's and OLMo
    2's post-feedforward norms): the direct path assumed here would then be wrong."""
    outs = [rec[proj]["output"], rec.get(parent, {}).get("output")]
    for n, r in rec.items():
        if _is_norm(named[n]) and any(_same(r["input"], o) for o in outs if o is not None):
            raise SiteError(
                f"the MLP output of {parent!r} passes through the norm {n!r} before the residual stream; "
                "direct effects assume it is added to the residual stream as it is (pre-norm blocks)"
            )


def _out(rec: dict[str, dict], name: str, like: torch.Tensor) -> torch.Tensor:
    out = rec[name]["output"]
    return out if out is not None and out.shape == like.shape else torch.full_like(like, float("nan"))


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
