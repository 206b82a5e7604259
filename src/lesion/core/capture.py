"""Read a site's activity over a dataset: whole activations (for resample and patch) and positional means."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lesion.core.batch import Data, batches
from lesion.core.sites import Site
from lesion.errors import LesionError
from lesion.util.modules import eval_mode, model_device

MAX_CACHE_BYTES = 4 << 30  # activations kept for resample/patch: refuse rather than exhaust memory


def site_value(site: Site, inputs, output) -> torch.Tensor:
    """The tensor a site reads: the module's output, or its first input for an input (head) view."""
    return site.view(inputs[0] if site.hook == "input" else output)


def grab(model: nn.Module, data: Data, sites: Sequence[Site], *, batch_size: int = 1000, run=None):
    """Yield ``({site: activity (batch, ...)}, batch, output)`` for every batch, in eval mode, without
    gradients. ``run(batch, k)`` replaces the plain forward pass (e.g. one that checks its output)."""
    named = dict(model.named_modules())
    got: dict[str, torch.Tensor] = {}

    def hook(site):
        def fn(_m, inputs, output):
            got[site.name] = site_value(site, inputs, output).detach()

        return fn

    handles = [named[s.target].register_forward_hook(hook(s)) for s in sites]
    device = model_device(model)
    try:
        with torch.no_grad(), eval_mode(model):
            for k, b in enumerate(batches(data, batch_size=batch_size)):
                got.clear()
                b = b.to(device)
                out = run(b, k) if run is not None else b.run(model)
                yield dict(got), b, out
    finally:
        for h in handles:
            h.remove()


def activations(model: nn.Module, data: Data, sites: Sequence[Site]) -> dict[str, torch.Tensor]:
    """Every example's activity at each site, concatenated in data order (on the CPU)."""
    parts: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    size = 0
    for acts, _, _ in grab(model, data, sites):
        for name, a in acts.items():
            size += a.numel() * a.element_size()
            parts[name].append(a.cpu())
        if size > MAX_CACHE_BYTES:
            raise LesionError(
                f"the reference activations exceed {MAX_CACHE_BYTES >> 30} GiB; pass a smaller reference set"
            )
    try:
        return {n: torch.cat(v) for n, v in parts.items()}
    except RuntimeError as exc:
        raise LesionError(f"the reference batches differ in shape and cannot be stacked: {exc}") from None


def positional_means(model: nn.Module, data: Data, sites: Sequence[Site]) -> dict[str, torch.Tensor]:
    """(positions, channels) mean activity per sequence position, over examples (float64 sums)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for acts, _, _ in grab(model, data, sites):
        for s in sites:
            a = acts[s.name].movedim(s.unit_dim, -1).double().cpu()  # (batch, t, ..., channels)
            a = a.reshape(a.shape[0], a.shape[1], -1, a.shape[-1]).sum((0, 2))  # (t, channels)
            t = a.shape[0]
            old = sums.get(s.name, torch.zeros(0, a.shape[1], dtype=torch.float64))
            if old.shape[0] < t:
                pad = t - old.shape[0]
                old = torch.cat([old, torch.zeros(pad, a.shape[1], dtype=torch.float64)])
                counts[s.name] = torch.cat([counts.get(s.name, torch.zeros(0)), torch.zeros(pad)])
            old[:t] += a
            sums[s.name] = old
            counts[s.name][:t] += acts[s.name].shape[0]
    return {n: (sums[n] / counts[n][:, None]).float() for n in sums}


def count(data: Data) -> int:
    """Number of examples in ``data``."""
    return sum(len(b) for b in batches(data))
