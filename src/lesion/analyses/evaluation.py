"""Evaluate a model, intact or lesioned, on a dataset: loss, accuracy, per-class accuracy, confusion.

``evaluate`` is the reference, one full forward pass; use it inside ``lesion.ablate`` to evaluate a
lesioned model. It is ``sweep``'s slow path with the ``Classification`` metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from lesion.core.batch import Data
from lesion.core.lesions import Edit, hooks
from lesion.core.metric import Classification
from lesion.core.runner import Runner


@dataclass(frozen=True)
class Evaluation:
    """Mean cross-entropy loss, accuracy and per-class accuracy over ``n`` examples."""

    n: int
    loss: float
    accuracy: float
    per_class_accuracy: np.ndarray  # (classes,), NaN for a class absent from the data
    confusion: np.ndarray  # (classes, classes): rows true class, columns predicted
    values: dict[str, float] = field(default_factory=dict)  # every scalar the metric gave (its own columns)


def as_evaluation(values: Mapping[str, np.ndarray], i: int = 0) -> Evaluation:
    """The ``i``-th lesion's Classification values as an Evaluation (with any other metric's scalars
    measured alongside in ``values``)."""
    conf = values["confusion"][i]
    scalars = {k: float(v[i]) for k, v in values.items() if np.ndim(v) == 1}
    return Evaluation(int(conf.sum()), float(values["loss"][i]), float(values["accuracy"][i]),
                      values["accuracy_class"][i], conf, scalars)  # fmt: skip


def evaluate(
    model: nn.Module, data: Data, *, edits: Mapping[str, Edit] | None = None, batch_size: int = 1000
) -> Evaluation:
    """Loss, accuracy, per-class accuracy and confusion matrix of ``model`` on ``data`` (eval mode).

    Use inside a lesioning context (``lesion.ablate``) to evaluate a lesioned model.

    >>> import torch
    >>> net = torch.nn.Linear(2, 2)
    >>> evaluate(net, (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))).n
    4
    """
    with hooks(model, edits or {}):
        return as_evaluation(Runner(model, data, [], metric=Classification(), batch_size=batch_size).intact)
