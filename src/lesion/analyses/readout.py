"""Where a language model's MLP neurons write and where the logits are read (``lesion.analyses.direct``
uses both): ``locate`` finds, for every neuron site, its MLP's output projection (a ``Writer``) and the
model's final norm and unembedding (the ``Readout``), each checked against one intact pass.

The unembedding is ``model.get_output_embeddings()`` (Hugging Face) or the last Linear whose output is
the logits; the final norm is the last LayerNorm/RMSNorm before it whose output is the unembedding's
input (none: the unembedding reads the residual stream itself). Assumed: the MLP's output is added to
the residual stream unchanged (no norm after the MLP).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lesion.core.batch import Batch, Data, batches, output_tensor
from lesion.core.sites import Site, _last_dim
from lesion.errors import SiteError
from lesion.util.modules import eval_mode, model_device


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


def readout(model: nn.Module, data: Data) -> Readout:
    """The final norm and the unembedding of a decoder language model, found and checked on one intact
    pass of the first examples of ``data`` (as ``direct_effects`` finds them)."""
    batch = next(batches(data, batch_size=8)).to(model_device(model))
    rec, logits = _probe(model, batch)
    return _readout(model, rec, logits)


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
