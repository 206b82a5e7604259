"""Optimal ablation (Li & Janson 2024): the constant that minimises the expected loss with a unit deleted.

For each lesion, the constants of its units are fitted by gradient descent (Adam) on reference data,
starting from the better of zero and the units' means, and the best constants seen are kept, so the
loss on the reference data is never above that of zero or mean ablation. Many single-unit lesions of
a layer are fitted at once: the batch is repeated, one copy per lesion, each copy with its own unit
set to its own constant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from lesion._util import eval_mode, model_device
from lesion.core.batch import Batch, batches, output_tensor
from lesion.core.replacements import Replacement
from lesion.core.sites import hook_site
from lesion.errors import LesionError

LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]  # (k, batch, ...) outputs -> (k,) mean losses


@dataclass(frozen=True)
class Optimal(Replacement):
    """The per-unit constant minimising the mean loss on ``reference`` (default: the sweep's data).

    ``loss(outputs (k, batch, ...), batch) -> (k,)``: default cross-entropy for integer targets
    (next-token cross-entropy when there is none), mean squared error for float targets. Fitted on at
    most ``examples`` examples, ``steps`` Adam steps of learning rate ``lr``.
    """

    steps: int = 60
    lr: float = 0.05
    examples: int = 2000
    reference: Any = None
    loss: LossFn | None = None
    constants: dict | None = field(default=None, repr=False, compare=False)
    constant = True

    fitted_field = "constants"

    def fit(self, model, data, sites, lesions) -> Optimal:
        if self.constants is not None:
            return self
        ref = self.reference if self.reference is not None else data
        if ref is None:
            raise LesionError("Optimal() needs reference data: Optimal(reference=data), or use it in a sweep")
        batch = _head(ref, self.examples, model_device(model))
        jobs: dict[str, list[tuple[int, ...]]] = {}
        for les in lesions:
            if les.units.positional:
                raise LesionError(
                    "Optimal() fits constants for units at every position; drop the '@' positions"
                )
            for layer, idx in les.units.items():
                jobs.setdefault(layer, []).append(tuple(idx))
        constants = {}
        for layer, sets in jobs.items():
            unique = list(dict.fromkeys(sets))
            for (layer_, idx), c in _fit_layer(self, model, sites[layer], unique, batch).items():
                constants[(layer_, idx)] = c
        return replace(self, constants=constants)

    def values(self, cur, ctx):
        key = (ctx.site.name, tuple(ctx.units.tolist()))
        if self.constants is None or key not in self.constants:
            raise LesionError(
                f"Optimal() was not fitted for units {list(key[1])[:5]} of {key[0]!r}; fit it first"
            )
        return self.constants[key].reshape(-1, ctx.site.group).to(device=cur.device, dtype=cur.dtype)

    def fill(self, site, lesion=None):
        idx = tuple(lesion.units[site.name]) if lesion is not None else None
        if self.constants is None or (site.name, idx) not in self.constants:
            raise LesionError(f"Optimal() was not fitted for this lesion of {site.name!r}")
        out = torch.zeros(site.width)
        out[list(idx)] = self.constants[(site.name, idx)].float().cpu()
        return out


def _head(data, n: int, device) -> Batch:
    """The first ``n`` examples of ``data`` as one batch on ``device``."""
    parts, got = [], 0
    for b in batches(data, batch_size=min(n, 1000)):
        parts.append(b.slice(0, n - got))
        got += len(parts[-1])
        if got >= n:
            break
    first = parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return Batch(
        tuple(torch.cat([p.args[i] for p in parts]) for i in range(len(first.args))),
        {k: torch.cat([p.kwargs[k] for p in parts]) for k in first.kwargs},
        None if first.target is None else cat("target"),
        {k: torch.cat([p.fields[k] for p in parts]) for k in first.fields},
        cat("ids"),
    ).to(device)


def _fit_layer(opt: Optimal, model, site, sets: list[tuple[int, ...]], batch: Batch) -> dict:
    """Constants for each unit set of ``site`` (fitted in blocks of copies of the batch)."""
    from lesion.stats import collect_stats

    means = collect_stats(model, batch, [site], histograms=False, labels=False)[site.name].mean
    per_copy = max(1, sum(a.numel() for a in (*batch.args, *batch.kwargs.values()) if torch.is_tensor(a)))
    block = max(1, min(64, (16 << 20) // per_copy))
    g = site.group  # a head view: each unit owns g channels, each with its own constant
    out = {}
    for i in range(0, len(sets), block):
        part = sets[i : i + block]
        channels = [tuple(u * g + j for u in s for j in range(g)) for s in part]
        for idx, c in zip(part, _fit_block(opt, model, site, channels, batch, means), strict=True):
            out[(site.name, idx)] = c
    return out


def _fit_block(opt, model, site, sets, batch: Batch, means) -> list[torch.Tensor]:
    k, m = len(sets), max(len(s) for s in sets)
    index = torch.tensor([list(s) + [s[-1]] * (m - len(s)) for s in sets])  # (k, m), padded by repeats
    device = model_device(model)
    big = batch.map(lambda v: v.repeat(k, *[1] * (v.ndim - 1)))
    loss_fn = opt.loss or _default_loss

    def losses(c: torch.Tensor) -> torch.Tensor:  # (k, m) constants -> (k,) mean losses
        def edit(raw):
            h = site.view(raw)
            u = h.movedim(site.unit_dim, -1).unflatten(0, (k, -1))  # (k, batch, ..., channels)
            mask = torch.zeros(k, u.shape[-1], dtype=torch.bool, device=h.device)
            mask[torch.arange(k)[:, None], index] = True
            vals = torch.zeros(k, u.shape[-1], dtype=h.dtype, device=h.device)
            vals = vals.scatter(1, index.to(h.device), c.to(h.dtype))
            shape = (k, *[1] * (u.ndim - 2), u.shape[-1])
            u = torch.where(mask.reshape(shape), vals.reshape(shape), u)
            return site.unview(u.flatten(0, 1).movedim(-1, site.unit_dim), raw)

        handle = hook_site(dict(model.named_modules())[site.target], site, edit)
        try:
            out = output_tensor(big.run(model))
        finally:
            handle.remove()
        return loss_fn(out.reshape(k, len(batch), *out.shape[1:]), batch)

    with eval_mode(model):
        with torch.no_grad():
            zero = torch.zeros(k, m, device=device)
            mean = means[index].to(device)
            l0, l1 = losses(zero), losses(mean)
        start = torch.where((l1 < l0)[:, None], mean, zero)
        best, best_loss = start.clone(), torch.minimum(l0, l1)
        c = start.clone().requires_grad_(True)
        optim = torch.optim.Adam([c], lr=opt.lr)
        for _ in range(opt.steps):
            lo = losses(c)
            better = lo.detach() < best_loss
            best = torch.where(better[:, None], c.detach(), best)
            best_loss = torch.minimum(best_loss, lo.detach())
            (c.grad,) = torch.autograd.grad(lo.sum(), [c])  # the model's own .grad is never touched
            optim.step()
        with torch.no_grad():
            lo = losses(c)
            best = torch.where((lo < best_loss)[:, None], c.detach(), best)
    return [best[j, : len(s)].detach().cpu() for j, s in enumerate(sets)]


def _default_loss(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean loss per copy: cross-entropy (integer targets), MSE (float targets), or next-token loss."""
    k = out.shape[0]
    y = batch.target
    if y is None:
        from lesion.core.metric import _next_token

        logits, target, valid = _next_token(out, batch)
        ce = F.cross_entropy(
            logits[:, valid].flatten(0, 1).float(), target[valid].repeat(k), reduction="none"
        )
        return ce.reshape(k, -1).mean(1)
    if y.dtype.is_floating_point:
        return ((out.float() - y.float().reshape(out.shape[1:])[None]) ** 2).reshape(k, -1).mean(1)
    c = out.shape[-1]
    ce = F.cross_entropy(out.reshape(-1, c).float(), y.reshape(-1).long().repeat(k), reduction="none")
    return ce.reshape(k, -1).mean(1)
