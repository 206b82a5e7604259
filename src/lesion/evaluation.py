"""Evaluate a model, intact or lesioned, on a dataset: loss, accuracy, per-class accuracy.

``Evaluator`` holds validated batches on the model's device so that a sweep evaluates many lesions over
the same data without re-reading it. This is the obvious implementation, one full forward pass per
lesion; it is the reference that faster engines are checked against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesion import interventions as iv
from lesion._batches import Data, check_labels, materialise
from lesion._util import eval_mode, model_device
from lesion.lesioning import Edit, hooks
from lesion.sites import Site
from lesion.stats import forward


@dataclass(frozen=True)
class Evaluation:
    """Mean cross-entropy loss, accuracy and per-class accuracy over ``n`` examples."""

    n: int
    loss: float
    accuracy: float
    per_class_accuracy: np.ndarray  # (classes,), NaN for a class absent from the data
    confusion: np.ndarray  # (classes, classes): rows true class, columns predicted


class Evaluator:
    """Evaluate ``model`` on fixed ``data`` under any number of lesions, one forward pass per lesion."""

    def __init__(self, model: nn.Module, data: Data, sites: Sequence[Site], *, batch_size: int = 1000):
        self.model = model
        self.sites = {s.name: s for s in sites}
        self.batches = materialise(data, model_device(model), batch_size=batch_size)
        self.n = sum(len(y) for _, y in self.batches)
        self.intact = self.run(None)

    @property
    def n_classes(self) -> int:
        return self.intact.confusion.shape[0]

    def run(self, edits: Mapping[str, Edit] | None) -> Evaluation:
        """Evaluate with the given output edits applied (None: intact)."""
        loss, conf = 0.0, None
        with torch.no_grad(), eval_mode(self.model), hooks(self.model, edits or {}):
            for k, (x, y) in enumerate(self.batches):
                logits = forward(self.model, x, k)
                c = logits.shape[1]
                check_labels(y, c, k)
                loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                pairs = y * c + logits.argmax(1)
                counts = torch.bincount(pairs, minlength=c * c).reshape(c, c).cpu()
                conf = counts if conf is None else conf + counts
        return _summarise(loss, conf.numpy(), self.n)

    def zero(self, selection: Mapping[str, Sequence[int] | np.ndarray]) -> Evaluation:
        """Evaluate with the units of ``selection`` (layer -> indices) zero-ablated."""
        return self.run(self.clamp_edits(selection, 0.0))

    def clamp_edits(self, selection, value, means=None) -> dict[str, Edit]:
        """Edits that clamp the units of ``selection`` to ``value`` (or to their ``means`` per layer)."""
        edits = {}
        for layer, idx in selection.items():
            if len(idx) == 0:
                continue
            site = self.sites[layer]
            if means is not None:
                vals = means[layer][list(idx)]
                edits[layer] = lambda h, i=list(idx), v=vals, d=site.unit_dim: iv.clamp(h, i, v, d)
            elif value == 0.0:
                keep = torch.ones(site.width, device=model_device(self.model))
                keep[list(idx)] = 0.0
                edits[layer] = lambda h, m=keep, d=site.unit_dim: iv.mask(h, m, d)
            else:
                edits[layer] = lambda h, i=list(idx), v=value, d=site.unit_dim: iv.clamp(h, i, v, d)
        return edits


def _summarise(loss: float, conf: np.ndarray, n: int) -> Evaluation:
    totals = conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(totals > 0, np.diag(conf) / totals, np.nan)
    return Evaluation(n, loss / n, float(np.trace(conf)) / n, per_class, conf)


def evaluate(
    model: nn.Module, data: Data, *, edits: Mapping[str, Edit] | None = None, batch_size: int = 1000
) -> Evaluation:
    """Loss, accuracy, per-class accuracy and confusion matrix of ``model`` on ``data`` (eval mode).

    Use inside a lesioning context (``lesion.ablate``) to evaluate a lesioned model.
    """
    ev = Evaluator(model, data, [], batch_size=batch_size)
    return ev.run(edits) if edits else ev.intact
