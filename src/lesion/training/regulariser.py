"""The selectivity regulariser of Leavitt & Morcos (2020): a differentiable class selectivity per
mini-batch, and the hooks that capture the regularised sites' activity during training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from lesion.core.lesions import hooks
from lesion.core.sites import find_sites
from lesion.errors import LesionError


def batch_selectivity(
    acts: Sequence[torch.Tensor], y: torch.Tensor, n_classes: int, *, eps: float = 1e-7
) -> torch.Tensor:
    """Differentiable mean class selectivity of one mini-batch, the quantity Leavitt & Morcos regularise.

    ``acts``: per site, activity (batch, units, ...) with units on dim 1 (feature maps are averaged over
    space first). Per unit, class means over the batch; SI = (mu_max - mu_rest) / (mu_max + mu_rest +
    eps), mu_rest the mean of the other present classes' means (classes absent from the batch are left
    out). Returns the mean over sites of each site's mean SI over units; 0 with fewer than two classes.
    Written with masks, not data-dependent shapes, so it works under ``torch.func.vmap``.

    >>> h = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # unit 0 fires only for class 0, unit 1 always
    >>> round(float(batch_selectivity([h], torch.tensor([0, 1]), 2)), 6)
    0.5
    """
    onehot = (y[:, None] == torch.arange(n_classes, device=y.device)).to(acts[0].dtype)  # (batch, classes)
    counts = onehot.sum(0)  # (classes,)
    present = (counts > 0)[:, None]  # (classes, 1)
    n_present = present.sum()
    per_site = []
    for h in acts:
        a = h.flatten(2).mean(2) if h.ndim > 2 else h  # (batch, units)
        means = (onehot.T @ a) / counts.clamp(min=1)[:, None]  # (classes, units)
        mu_max = torch.where(present, means, -math.inf).amax(0)  # (units,)
        rest = (torch.where(present, means, 0.0).sum(0) - mu_max) / (n_present - 1).clamp(min=1)
        per_site.append(((mu_max - rest) / (mu_max + rest + eps)).mean())
    return torch.where(n_present >= 2, torch.stack(per_site).mean(), 0.0)


class Regulariser:
    """The selectivity term ``-alpha * batch_selectivity`` of the activity that forward hooks capture
    at the regularised sites while ``capture`` is active. False (and no hooks) when alpha is 0.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, alpha: float, names, n_classes: int):
        self.alpha, self.n_classes = alpha, n_classes
        self.sites: dict[str, int] = {}  # site name -> unit dim
        self.captured: dict[str, torch.Tensor] = {}
        if alpha != 0:
            found = find_sites(
                model, example, None if names is None else [names] if isinstance(names, str) else list(names)
            )
            if not found:
                raise LesionError("select_reg needs sites with units; the model has no activation modules")
            self.sites = {s.name: s.unit_dim for s in found}

    def __bool__(self) -> bool:
        return bool(self.sites)

    def capture(self, model: nn.Module):
        """Hooks on ``model``'s sites for the duration of a ``with`` block (none when inert)."""
        return hooks(model, {s: self._grab(s) for s in self.sites}) if self.sites else nullcontext()

    def penalty(self, y: torch.Tensor) -> torch.Tensor:
        """The term for the batch just run forward, with labels ``y``; releases the captured activity."""
        acts = [self.captured.pop(s).movedim(dim, 1) for s, dim in self.sites.items()]
        return -self.alpha * batch_selectivity(acts, y, self.n_classes)

    def _grab(self, name: str):
        def edit(h: torch.Tensor) -> torch.Tensor:
            self.captured[name] = h
            return h

        return edit
