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
    """(positions, channels) mean activity per sequence position, over examples (float64 sums); where the
    data has an ``attention_mask``, over the examples whose position is not padding (0 where none is)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for acts, b, _ in grab(model, data, sites):
        mask = _mask(b)
        for s in sites:
            a = acts[s.name].movedim(s.unit_dim, -1).double().cpu()  # (batch, t, ..., channels)
            a = a.reshape(a.shape[0], a.shape[1], -1, a.shape[-1])  # (batch, t, rest, channels)
            t = a.shape[1]
            w = (
                mask
                if mask is not None and mask.shape == a.shape[:2]
                else torch.ones(a.shape[:2], dtype=a.dtype)
            )
            a = (a * w[:, :, None, None]).sum((0, 2))  # (t, channels), padding weighted 0
            old = sums.get(s.name, torch.zeros(0, a.shape[1], dtype=torch.float64))
            if old.shape[0] < t:
                pad = t - old.shape[0]
                old = torch.cat([old, torch.zeros(pad, a.shape[1], dtype=torch.float64)])
                counts[s.name] = torch.cat([counts.get(s.name, torch.zeros(0, dtype=torch.float64)),
                                            torch.zeros(pad, dtype=torch.float64)])  # fmt: skip
            old[:t] += a
            sums[s.name] = old
            counts[s.name][:t] += w.sum(0)
    return {n: (sums[n] / counts[n].clamp(min=1)[:, None]).float() for n in sums}


def masked_means(model: nn.Module, data: Data, sites: Sequence[Site]) -> dict[str, torch.Tensor]:
    """(channels,) mean activity of each site over every position the ``attention_mask`` keeps (padding
    excluded, as the metrics exclude it); sites without a sequence axis average over examples."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}
    for acts, b, _ in grab(model, data, sites):
        mask = _mask(b)
        for s in sites:
            a = acts[s.name].double().cpu()
            if s.position_dim is not None and mask is not None and a.ndim >= 3 and mask.shape == a.shape[:2]:
                a = a.movedim(s.unit_dim, -1)
                a = a.reshape(a.shape[0], a.shape[1], -1, a.shape[-1])  # (batch, t, rest, channels)
                total = (a * mask[:, :, None, None]).sum((0, 1)).mean(0)  # (channels,)
                n = float(mask.sum())
            else:
                h = a.movedim(s.unit_dim, 1)
                total, n = h.reshape(h.shape[0], h.shape[1], -1).mean(2).sum(0), float(h.shape[0])
            sums[s.name] = sums.get(s.name, 0) + total
            counts[s.name] = counts.get(s.name, 0.0) + n
    return {name: sums[name] / max(counts[name], 1.0) for name in sums}


def has_mask(data: Data) -> bool:
    """True when the data's first batch carries an ``attention_mask``."""
    first = next(iter(batches(data)), None)
    return first is not None and "attention_mask" in first.fields


def _mask(b) -> torch.Tensor | None:
    m = b.fields.get("attention_mask")
    return None if m is None else m.detach().cpu().double()


def count(data: Data) -> int:
    """Number of examples in ``data``."""
    return sum(len(b) for b in batches(data))
