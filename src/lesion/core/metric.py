"""What a lesion is measured by: streaming metrics with a leading lesion axis.

A metric accumulates, for ``n`` lesions at once, sums over the examples it is shown:
``reset(n)``; ``update(outputs, batch, lesions)`` with ``outputs`` (k, batch, ...) the model's outputs
under the k lesions of the slice ``lesions``; ``compute()`` -> ``{name: array (n, ...)}``; ``merge``
adds another accumulator's sums (another shard of the data). Scalar outputs (n,) become table columns
(and ``delta_<name>`` against the intact model); (n, c) outputs become columns ``<name>_0..``.

>>> import torch
>>> m = MSE(); m.reset(1)
>>> b = Batch((torch.zeros(2, 1),), target=torch.zeros(2, 1))
>>> m.update(torch.tensor([[[1.0], [3.0]]]), b, slice(0, 1))
>>> m.compute()["mse"].tolist()
[5.0]
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lesion.core.batch import Batch
from lesion.errors import DataError, LesionError


class MetricError(LesionError, ValueError):
    """A metric that cannot score these outputs (wrong shape, NaN) or is missing what it needs."""


def check_labels(y: torch.Tensor, n_classes: int, where: str = "") -> None:
    """Class indices must lie in 0..n_classes - 1; ``where`` (e.g. ``"batch 3: "``) prefixes the error."""
    if y.numel() and int(y.min()) < 0:
        raise DataError(f"{where}label {int(y.min())} is negative; expected class indices >= 0")
    if y.numel() and int(y.max()) >= n_classes:
        raise DataError(
            f"{where}label {int(y.max())} is out of range; the model has {n_classes} outputs, expected "
            f"labels 0..{n_classes - 1}"
        )


class Metric:
    """Base: subclasses keep float64 sums in ``self.sums`` (name -> array with a leading lesion axis).

    What the rest of lesion asks of a metric, so that a new one works everywhere (sweeps, curves, AUC,
    attribution, the optimal replacement, the explorer):

    - ``main``: the column effects are reported in (``delta_<main>``); the attribution estimate and the
      optimal replacement predict and minimise it.
    - ``curve``: the column ablation curves are summarised by (their AUC); ``main`` when None.
    - ``higher_is_better``: whether a larger ``main`` is the better model (logit difference) or the
      worse one (a loss); the optimal replacement seeks the better end.
    - ``loss(output, batch)``: a differentiable ``(sum over the batch, count)`` whose ratio, summed over
      batches, is the ``main`` column; needed by attribution and the optimal replacement only.
    - ``close(reference, fast, n)``: whether the engine's values agree with the slow path's; the name
      and values of the first disagreement, or None.
    - ``unscored_last``: the outputs at the last sequence position count for nothing (next-token loss:
      no token follows it), so a lesion there alone cannot change the metric (a ``LesionNote`` says so).
    """

    main: str = "value"
    curve: str | None = None
    classes = False  # targets are class labels: per-class parts and selectivity apply
    higher_is_better = False
    unscored_last = False
    needs_intact = False  # update() is also given the intact model's outputs

    def reset(self, n: int) -> None:
        self.n = n
        self.sums: dict[str, np.ndarray] = {}

    def _add(self, name: str, lesions: slice, values: np.ndarray) -> None:
        if name not in self.sums:
            self.sums[name] = np.zeros((self.n, *values.shape[1:]), dtype=values.dtype)
        target = self.sums[name]
        if values.shape[1:] != target.shape[1:]:  # e.g. more classes seen later: grow
            grown = np.zeros((self.n, *np.maximum(values.shape[1:], target.shape[1:])), dtype=target.dtype)
            grown[(slice(None), *(slice(0, s) for s in target.shape[1:]))] = target
            self.sums[name] = target = grown
        target[(lesions, *(slice(0, s) for s in values.shape[1:]))] += values

    def merge(self, other: Metric) -> Metric:
        """Fold another accumulator over the same lesions (another shard of the data) into this one."""
        for name, v in other.sums.items():
            self._add(name, slice(0, self.n), v)
        return self

    def update(self, outputs: torch.Tensor, batch: Batch, lesions: slice, intact=None) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def curve_column(self) -> str:
        return self.curve or self.main

    def loss(self, output: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, float]:
        """(the differentiable sum of the ``main`` value over the batch, the count it averages over)."""
        raise MetricError(
            f"metric {type(self).__name__} has no differentiable loss; expected a metric that defines "
            "loss(output, batch) -> (sum, count), e.g. NextTokenLoss, LogitDiff, Classification, MSE or "
            "Scalar(fn) with a differentiable fn"
        )

    def harm(self, delta):
        """How much worse a change ``delta`` of the ``main`` value makes the model: ``delta`` for a loss,
        ``-delta`` where higher is better (a unit's importance, the order curves delete by)."""
        return -delta if self.higher_is_better else delta

    def losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The differentiable mean ``main`` value of each of k copies of the model's output (k, batch, ...)
        -> (k,), as ``loss`` gives it copy by copy; a metric may compute all copies at once."""
        parts = [self.loss(o, batch) for o in outputs]
        return torch.stack([total / max(count, 1.0) for total, count in parts])

    def close(
        self, reference: dict[str, np.ndarray], fast: dict[str, np.ndarray], n: int | None
    ) -> str | None:
        """None when every value of ``fast`` matches ``reference`` to float rounding (relative 1e-4,
        absolute 1e-4 of the largest value); else what disagreed."""
        for key, want in reference.items():
            if key in self.exempt:
                continue
            got = fast[key]
            if key in self.discrete and n:
                tol = max(1, n // 1000) / n  # float rounding may flip a near-tie prediction
                ok = bool(np.all(np.abs(want - got) <= tol + 1e-12))
            else:
                scale = max(1.0, float(np.nanmax(np.abs(want)))) if np.size(want) else 1.0
                ok = np.allclose(got, want, rtol=1e-4, atol=1e-4 * scale, equal_nan=True)
            if not ok:
                return f"engine gave {key} {np.ravel(got)[:3]}; reference {np.ravel(want)[:3]}"
        return None

    discrete: tuple[str, ...] = ()  # shares of examples (accuracy): a near-tie may flip one prediction
    exempt: tuple[str, ...] = ()  # outputs that follow a discrete one (confusion): not compared


class Classification(Metric):
    """Mean cross-entropy ``loss``, ``accuracy``, ``accuracy_class`` (n, C) and ``confusion`` (n, C, C)
    against integer class targets; outputs are logits (..., classes) (extra axes: every position counts)."""

    main, curve, classes = "loss", "accuracy", True
    discrete, exempt = ("accuracy",), ("confusion", "accuracy_class")

    def __init__(self, n_classes: int | None = None):
        self.n_classes = n_classes

    def update(self, outputs, batch, lesions, intact=None):
        y = batch.target
        if y is None:
            raise DataError("classification needs targets; expected (inputs, labels) batches")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise DataError(f"labels have dtype {y.dtype}; expected integer class indices")
        k = outputs.shape[0]
        if outputs.ndim < 3 or outputs.shape[1:-1] != y.shape:
            raise DataError(
                f"the model returned {tuple(outputs.shape[1:])} for labels of shape {tuple(y.shape)}; "
                "expected logits (batch, classes)"
            )
        c = outputs.shape[-1]
        check_labels(y, c)
        if not _finite(outputs):
            raise DataError("the model produced NaN or infinite outputs; expected finite logits")
        logits = outputs.reshape(k, -1, c).float()
        yk = y.reshape(-1).long()
        ce, pred = _cross_entropy(logits.flatten(0, 1), yk.repeat(k))  # per example, summed in float64
        loss = ce.double().reshape(k, -1).sum(1).cpu().numpy()
        pred = pred.reshape(k, -1)  # (k, m)
        width = max(c, self.n_classes or 0)
        lesion_idx = torch.arange(k, device=pred.device)[:, None]
        flat = ((lesion_idx * width + yk[None]) * width + pred).reshape(-1)
        conf = torch.bincount(flat, minlength=k * width * width).reshape(k, width, width).cpu().numpy()
        self._add("loss", lesions, loss)
        self._add("count", lesions, np.full(k, yk.numel(), dtype=np.int64))
        self._add("confusion", lesions, conf.astype(np.int64))

    def compute(self):
        conf = self.sums["confusion"]
        n = self.sums["count"].astype(np.float64)
        totals = conf.sum(2)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(totals > 0, np.diagonal(conf, axis1=1, axis2=2) / totals, np.nan)
        accuracy = np.trace(conf, axis1=1, axis2=2) / n
        return {
            "loss": self.sums["loss"] / n,
            "accuracy": accuracy,
            "accuracy_class": per_class,
            "confusion": conf,
        }

    def loss(self, output, batch):
        y = batch.field("target")
        logits = output.float().reshape(-1, output.shape[-1])
        return F.cross_entropy(logits, y.reshape(-1).long(), reduction="sum"), float(y.numel())

    def losses(self, outputs, batch):  # every copy in one cross-entropy call
        y, k, c = batch.field("target"), outputs.shape[0], outputs.shape[-1]
        ce = F.cross_entropy(outputs.reshape(-1, c).float(), y.reshape(-1).long().repeat(k), reduction="none")
        return ce.reshape(k, -1).mean(1)


def _finite(t: torch.Tensor) -> bool:
    """Whether every element is finite: one read pass to two scalars (NaN propagates through both),
    where ``isfinite(t).all()`` writes and reads a mask as large as ``t``."""
    if t.numel() == 0 or not (t.dtype.is_floating_point or t.dtype.is_complex):
        return True
    if t.dtype.is_complex:
        return bool(torch.isfinite(t).all())
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) and torch.isfinite(hi))


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy and predicted class of (n, c) logits. On a CPU with few classes both
    are computed on the transpose, whose log-softmax and argmax run along the n examples: 21 us instead
    of 84 us at (1,024, 10) for the loss, where a cumulative sweep spends a sixth of its time (profile
    in the README), and 1 ms instead of 6 ms for the argmax of 262,144 rows (2026-12-02, AMD EPYC)."""
    if logits.device.type != "cpu" or logits.shape[1] > 64:
        return F.cross_entropy(logits, y, reduction="none"), logits.argmax(-1)
    t = logits.T.contiguous()
    best, pred = t[0].clone(), torch.zeros(t.shape[1], dtype=torch.long, device=t.device)
    for c in range(1, t.shape[0]):  # strictly greater: the first of tied maxima wins, as argmax
        more = t[c] > best
        torch.maximum(best, t[c], out=best)
        pred.masked_fill_(more, c)
    return -torch.log_softmax(t, 0).gather(0, y[None])[0], pred


class MSE(Metric):
    """Mean squared error against float targets of the output's shape (regression)."""

    main = "mse"

    def loss(self, output, batch):
        y = batch.field("target")
        err = (output.float() - y.float().reshape(output.shape)) ** 2
        return err.sum(), float(err.numel())

    def losses(self, outputs, batch):
        y, k = batch.field("target"), outputs.shape[0]
        return ((outputs.float() - y.float().reshape(outputs.shape[1:])[None]) ** 2).reshape(k, -1).mean(1)

    def update(self, outputs, batch, lesions, intact=None):
        y = batch.target
        if y is None or not y.dtype.is_floating_point:
            raise DataError(
                "MSE needs float targets; expected (inputs, targets) with targets of the output's shape"
            )
        if outputs.shape[1:] != y.shape and outputs.shape[1:] != (*y.shape, 1):
            raise MetricError(
                f"MSE: outputs {tuple(outputs.shape[1:])} vs targets {tuple(y.shape)}; expected equal shapes"
            )
        err = (outputs.double() - y.double().reshape(outputs.shape[1:])[None]) ** 2
        k = outputs.shape[0]
        self._add("se", lesions, err.reshape(k, -1).sum(1).cpu().numpy())
        self._add("count", lesions, np.full(k, float(err[0].numel())))

    def compute(self):
        return {"mse": self.sums["se"] / self.sums["count"]}


class Scalar(Metric):
    """Any per-example function ``fn(output, batch) -> values (batch,)``, averaged: the column ``name``.
    ``batch["target"]``, ``batch["attention_mask"]``... give the batch's fields by name.

    >>> import torch
    >>> m = Scalar(lambda out, batch: out[:, 0], name="first"); m.reset(1)
    >>> m.update(torch.tensor([[[2.0], [4.0]]]), Batch((torch.zeros(2),), ids=torch.arange(2)), slice(0, 1))
    >>> m.compute()["first"].tolist()
    [3.0]
    """

    def __init__(
        self, fn: Callable[[torch.Tensor, Batch], torch.Tensor], name: str = "value", higher_is_better=False
    ):
        self.fn, self.name, self.higher_is_better = fn, name, bool(higher_is_better)

    @property
    def main(self) -> str:  # type: ignore[override]
        return self.name

    def loss(self, output, batch):
        return torch.as_tensor(self.fn(output, batch)).sum(), float(output.shape[0])

    def update(self, outputs, batch, lesions, intact=None):
        b = outputs.shape[1]
        vals = []
        for out in outputs:
            v = torch.as_tensor(self.fn(out, batch))
            if v.shape != (b,):
                raise MetricError(
                    f"metric {self.name!r} returned shape {tuple(v.shape)}; expected one value per example "
                    f"({b},)"
                )
            if not torch.isfinite(v).all():
                raise MetricError(
                    f"metric {self.name!r} returned NaN or infinite values; expected finite numbers"
                )
            vals.append(v.double().sum())
        self._add(self.name, lesions, torch.stack(vals).cpu().numpy())
        self._add("count", lesions, np.full(len(vals), float(b)))

    def compute(self):
        return {self.name: self.sums[self.name] / self.sums["count"]}


class Joint(Metric):
    """Several metrics measured on the same outputs in one pass: ``first`` decides what effects are
    reported in (``main``, ``curve``, ``higher_is_better``, ``loss``), the others add their columns.
    Column names must not collide.

    >>> import torch
    >>> m = Joint(MSE(), Scalar(lambda out, batch: out[:, 0], name="first")); m.reset(1)
    >>> b = Batch((torch.zeros(2, 1),), target=torch.zeros(2, 1))
    >>> m.update(torch.tensor([[[1.0], [3.0]]]), b, slice(0, 1))
    >>> {k: v.tolist() for k, v in m.compute().items()}, m.main
    ({'mse': [5.0], 'first': [2.0]}, 'mse')
    """

    def __init__(self, first: Metric, *others: Metric):
        parts = (first, *others)
        for part in parts:
            if not isinstance(part, Metric):
                raise MetricError(f"Joint({type(part).__name__}): expected lesion.metrics.Metric instances")
        self.parts = parts
        self.main, self.curve, self.higher_is_better = first.main, first.curve, first.higher_is_better
        self.classes = any(p.classes for p in parts)
        self.unscored_last = first.unscored_last
        self.needs_intact = any(p.needs_intact for p in parts)
        # the engine's agreement check (``close``) applies every part's rules to the columns
        self.discrete = tuple(k for p in parts for k in p.discrete)
        self.exempt = tuple(k for p in parts for k in p.exempt)

    def reset(self, n: int) -> None:
        super().reset(n)
        for part in self.parts:
            part.reset(n)

    def update(self, outputs, batch, lesions, intact=None):
        for part in self.parts:
            part.update(outputs, batch, lesions, intact=intact if part.needs_intact else None)

    def merge(self, other: Metric) -> Metric:
        if not isinstance(other, Joint) or len(other.parts) != len(self.parts):
            raise MetricError(
                f"cannot merge a {type(other).__name__} into a Joint of {len(self.parts)} metrics"
            )
        for mine, theirs in zip(self.parts, other.parts, strict=True):
            mine.merge(theirs)
        return self

    def compute(self):
        out: dict[str, np.ndarray] = {}
        for part in self.parts:
            values = part.compute()
            clash = sorted(set(values) & set(out))
            if clash:
                raise MetricError(
                    f"Joint: {type(part).__name__} gives the column(s) {clash} another metric gives too; "
                    "expected metrics with distinct column names"
                )
            out |= values
        return out

    def loss(self, output, batch):
        return self.parts[0].loss(output, batch)

    def __copy__(self) -> Joint:  # a runner copies its metric per run: each part gets its own sums
        return Joint(*(copy.copy(p) for p in self.parts))


def columns(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Table columns of computed metric values: (n,) as they are, (n, c) as ``name_0..``; others dropped."""
    out = {}
    for name, v in values.items():
        if v.ndim == 1:
            out[name] = v
        elif v.ndim == 2:
            out |= {f"{name}_{j}": v[:, j] for j in range(v.shape[1])}
    return out
