"""Find the layers of a model that have units, their unit axis and width, by one dry forward pass.

A site is a module whose output tensor carries units: by default every activation-function module
(post-nonlinearity, as the paper ablates), or any module named by the caller. Linear-like outputs have
their units on the last dim; conv-like outputs (batch, channels, ...) on dim 1, a unit being a whole
feature map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lesion._util import eval_mode
from lesion.errors import DataError, SiteError
from lesion.units import unknown_layer

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
)  # fmt: skip
_LAST_DIM = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.Embedding, nn.RMSNorm)
_CHANNEL_DIM = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)


@dataclass(frozen=True)
class Site:
    """A layer with units: its module name, unit axis, width and per-example output shape."""

    name: str
    module_type: str
    unit_dim: int  # axis of the units in the batched output, e.g. 1 for (batch, channels, h, w)
    width: int
    shape: tuple[int, ...]  # output shape of one example (no batch dim)
    order: int  # position in execution order of the dry forward pass

    @property
    def spatial(self) -> bool:
        """True for conv-like sites, whose units are whole feature maps."""
        return len(self.shape) > 1

    def __str__(self) -> str:
        return f"{self.name} ({self.width})"


def find_sites(
    model: nn.Module, example: torch.Tensor, layers: Sequence[str] | str | None = None
) -> list[Site]:
    """List the sites of ``model`` in execution order.

    ``layers=None`` takes every activation module (post-nonlinearity); ``"all"`` every module with a
    tensor output; a list of names exactly those modules. ``example`` is one batch of input (one or two
    examples suffice); the model runs once on it in eval mode, without gradients.
    """
    records = _dry_run(model, example)
    named = dict(model.named_modules())
    if layers is None or layers == "all":
        names = [
            n
            for n, r in records.items()
            if n and r["tensor"] and r["calls"] == 1 and r["ndim"] >= 2
            and (layers == "all" or isinstance(named[n], ACTIVATIONS))
        ]  # fmt: skip
        if not names:
            _refuse_reused(records, named, layers)
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        _check_requested(names, records, named)
    sites = [_make_site(n, records[n], named, records) for n in names]
    return sorted(sites, key=lambda s: s.order)


def default_candidates(sites: Sequence[Site]) -> list[Site]:
    """The paper's candidate units: all sites of an MLP; the last three conv sites of a convnet."""
    spatial = [s for s in sites if s.spatial]
    return spatial[-3:] if spatial else list(sites)


def _dry_run(model: nn.Module, example: torch.Tensor) -> dict[str, dict]:
    if not isinstance(example, torch.Tensor):
        raise DataError(f"example input must be a tensor batch, got {type(example).__name__}")
    if example.ndim == 0 or example.shape[0] == 0:
        raise DataError(f"example input must hold at least one example, got shape {tuple(example.shape)}")
    records: dict[str, dict] = {}
    counter = [0]
    handles = []

    def make_hook(name):
        def hook(module, inputs, output):
            r = records.setdefault(name, {"calls": 0, "order": counter[0], "after": None})
            r["calls"] += 1
            r["tensor"] = isinstance(output, torch.Tensor)
            r["type"] = type(output).__name__
            r["shape"] = tuple(output.shape) if r["tensor"] else ()
            r["ndim"] = output.ndim if r["tensor"] else 0
            r["module"] = type(module).__name__
            counter[0] += 1

        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(make_hook(name)))
    try:
        device = next((p.device for p in model.parameters()), example.device)
        with torch.no_grad(), eval_mode(model):
            model(example.to(device))
    except Exception as exc:
        if isinstance(exc, SiteError | DataError):
            raise
        raise DataError(
            f"the model failed on an example batch of shape {tuple(example.shape)}: {exc}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    return records


def _refuse_reused(records: dict, named: dict, layers: str | None) -> None:
    """No site was found: say so if it is because the candidates run more than once per pass."""
    reused = [
        f"{n!r} runs {r['calls']} times" for n, r in records.items()
        if n and r["calls"] > 1 and (layers == "all" or isinstance(named[n], ACTIVATIONS))
    ]  # fmt: skip
    if reused:
        raise SiteError(
            f"the model has no usable sites: {', '.join(reused[:5])} per forward pass, so their units "
            "are ambiguous; expected each use of an activation to be its own module"
        )


def _check_requested(names, records, named) -> None:
    usable = [n for n, r in records.items() if n and r["tensor"] and r["calls"] == 1]
    for n in names:
        if n not in named:
            sites = [_make_site(u, records[u], named, records) for u in usable if records[u]["ndim"] >= 2]
            raise unknown_layer(n, [k for k in named if k], sites)
        r = records.get(n)
        if r is None:
            raise SiteError(f"layer {n!r} exists but did not run in the forward pass; expected a used module")
        if not r["tensor"]:
            raise SiteError(
                f"site {n!r} outputs a {r['type']}, not a tensor; expected a module whose output is one "
                "tensor (name a submodule instead)"
            )
        if r["calls"] != 1:
            raise SiteError(
                f"module {n!r} runs {r['calls']} times per forward pass, so its units are ambiguous; "
                "expected a module used once (give each use its own module)"
            )
        if r["ndim"] < 2:
            raise SiteError(f"site {n!r} outputs shape {r['shape']}; expected (batch, units, ...)")


def _make_site(name: str, rec: dict, named: dict[str, nn.Module], records: dict) -> Site:
    dim = _unit_dim(named[name], rec, named, records)
    shape = rec["shape"]
    return Site(name, rec["module"], dim, shape[dim], tuple(shape[1:]), rec["order"])


def _unit_dim(module: nn.Module, rec: dict, named, records) -> int:
    ndim = rec["ndim"]
    if ndim == 2:
        return 1
    kind = module
    if not isinstance(module, _LAST_DIM + _CHANNEL_DIM):
        # an activation inherits the layout of the last parametrised layer that ran before it
        before = [
            (r["order"], n) for n, r in records.items()
            if r["order"] < rec["order"] and n and isinstance(named[n], _LAST_DIM + _CHANNEL_DIM)
        ]  # fmt: skip
        kind = named[max(before)[1]] if before else module
    return ndim - 1 if isinstance(kind, _LAST_DIM) else 1
