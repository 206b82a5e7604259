"""What breaks without a unit, with intervals over examples: the per-example loss change as a metric.

``LossChange`` scores a lesion by each example's cross-entropy with the lesion minus without it, and keeps
the sums of those differences and of their squares (overall, per true class and per group of examples),
so a mean and a 95% interval (mean +- 1.96 SE) come from one pass on the fast engine or the slow path
alike. Single units go through ``lesion.sweep``; pairs and the causal test's sets through
``masked_sets``, many sets of one layer side by side in one pass, checked against the slow path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lesion.analyses.sweep import sweep
from lesion.core.batch import Data, output_tensor
from lesion.core.capture import grab
from lesion.core.lesions import Lesion, ablate
from lesion.core.metric import Metric, _cross_entropy, check_labels
from lesion.core.replacements import Replacement, Zero
from lesion.core.runner import Mismatch, Runner
from lesion.core.sites import Site
from lesion.core.stats import per_example
from lesion.core.units import Unit
from lesion.errors import DataError
from lesion.util.modules import eval_mode

Z = 1.96  # two-sided 95% normal quantile


class LossChange(Metric):
    """Per-example loss change (lesioned - intact) against integer labels: sums and sums of squares.

    ``groups`` (examples,) gives each example id a group 0..G-1 (e.g. mislabeled or not). Outputs:
    ``dsum``/``dsq`` (n,), ``loss`` (n,) their mean (the main column, which ``triage`` ranks), ``accuracy``
    (n,) the mean change in correctness, ``count`` (n,), per class
    ``dsum_class``/``dsq_class``/``count_class`` (n, C) and ``accuracy_class`` (n, C), per group
    ``dsum_group``/``dsq_group``/``count_group`` (n, G).
    """

    main, needs_intact = "loss", True

    def __init__(self, n_classes: int, groups: torch.Tensor | None = None):
        self.n_classes, self.groups = n_classes, groups

    def loss(self, output, batch):
        """The batch's summed cross-entropy and its size: the attribution estimate of ``loss`` (the mean
        change) is the gradient of the mean loss, whose intact value the change is taken from."""
        y = batch.target.long()
        return F.cross_entropy(output.float(), y, reduction="sum"), float(len(y))

    def update(self, outputs, batch, lesions, intact=None):
        y = batch.target
        if y is None or y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise DataError("a unit's effect needs integer class labels (batch,); the data has none")
        k, c = outputs.shape[0], outputs.shape[-1]
        check_labels(y, c)
        y = y.long()
        logits = outputs.reshape(k, -1, c).float()
        ce, pred = _cross_entropy(logits.flatten(0, 1), y.repeat(k))
        ce0, pred0 = _cross_entropy(intact.reshape(-1, c).float(), y)
        d = ce.reshape(k, -1).double() - ce0.double()[None]  # (k, batch)
        right = (pred.reshape(k, -1) == y).double() - (pred0 == y).double()[None]  # (k, batch)
        onehot = F.one_hot(y, self.n_classes).double()  # (batch, C)
        self._add("dsum", lesions, d.sum(1).cpu().numpy())
        self._add("dsq", lesions, (d * d).sum(1).cpu().numpy())
        self._add("right", lesions, right.sum(1).cpu().numpy())
        self._add("count", lesions, np.full(k, float(len(y))))
        self._add("dsum_class", lesions, (d @ onehot).cpu().numpy())
        self._add("dsq_class", lesions, ((d * d) @ onehot).cpu().numpy())
        self._add("right_class", lesions, (right @ onehot).cpu().numpy())
        self._add("count_class", lesions, onehot.sum(0).expand(k, -1).cpu().numpy())
        if self.groups is not None:
            g = F.one_hot(self.groups[batch.ids.cpu()].long(), int(self.groups.max()) + 1).double()
            self._add("dsum_group", lesions, (d @ g).cpu().numpy())
            self._add("dsq_group", lesions, ((d * d) @ g).cpu().numpy())
            self._add("count_group", lesions, g.sum(0).expand(k, -1).cpu().numpy())

    def compute(self):
        s = self.sums
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {k: v for k, v in s.items() if k not in ("right", "right_class")}
            out["accuracy"] = s["right"] / s["count"]
            out["loss"] = s["dsum"] / s["count"]
            out["accuracy_class"] = s["right_class"] / s["count_class"]
        return out


def interval(dsum, dsq, count) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% interval (mean +- 1.96 SE) from sums of values and squares over ``count``; NaN
    interval for fewer than 2 values."""
    dsum, dsq, count = (np.asarray(a, np.float64) for a in (dsum, dsq, count))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = dsum / count
        var = np.maximum(dsq - dsum * mean, 0.0) / (count - 1)
        half = np.where(count > 1, Z * np.sqrt(var / count), np.nan)
    return mean, mean - half, mean + half


def _values(df: pd.DataFrame, name: str) -> np.ndarray:
    """The metric output ``name`` back from ``sweep``'s columns: (n,) or (n, c) from ``name_0..``."""
    if name in df:
        return df[name].to_numpy(np.float64)
    cols = sorted(
        (c for c in df if c.startswith(f"{name}_") and c[len(name) + 1 :].isdigit()),
        key=lambda c: int(c[len(name) + 1 :]),
    )
    return df[cols].to_numpy(np.float64) if cols else np.zeros((len(df), 0))


OUTPUTS = (
    "dsum",
    "dsq",
    "count",
    "accuracy",
    "dsum_class",
    "dsq_class",
    "count_class",
    "accuracy_class",
    "dsum_group",
    "dsq_group",
    "count_group",
    "loss",
    "next_token_ids",
    "next_token_loss",
)


def single_effects(
    model: nn.Module,
    data: Data,
    sites: Sequence[Site],
    units: Sequence[Unit],
    replacement: Replacement,
    metric: Metric,
    *,
    batch_size: int = 1000,
    progress: bool = False,
    spread: dict | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Each unit deleted alone with ``replacement``, through ``lesion.sweep`` (the fast engine where it
    agrees with the slow path; ``spread``: its ``backend``, ``address``, ``shards``, ``resume``): the
    metric's outputs (``LossChange``'s) by unit, and the engine notes."""
    lesions = [Lesion([u], replacement) for u in units]
    df = sweep(model, data, lesions, metric, sites=sites, batch_size=batch_size, progress=progress,
               **(spread or {}))  # fmt: skip
    notes = {k: df.attrs.get(k) for k in ("engine_fallbacks", "served")}
    return {name: _values(df, name) for name in OUTPUTS if any(c.startswith(name) for c in df)}, notes


def set_effects(runner: Runner, sets: Sequence[Sequence[Unit]], *, chunk: int = 32) -> dict[str, np.ndarray]:
    """Each set of units of one layer deleted together (zero), exactly: ``masked_sets`` runs up to
    ``chunk`` sets side by side in one pass; its first set is checked against the slow path (a
    disagreement or an unsupported model sends every set to the slow path). Outputs by set."""
    out: dict[int, dict[str, np.ndarray]] = {}
    by_layer: dict[str, list[int]] = {}
    for i, s in enumerate(sets):
        by_layer.setdefault(s[0].layer, []).append(i)
    for layer, idx in by_layer.items():
        site = runner.sites[layer]
        masks = torch.zeros(len(idx), site.width, dtype=torch.bool)
        for r, i in enumerate(idx):
            masks[r, [u.index for u in sets[i]]] = True
        lesions = [Lesion(list(sets[i]), Zero()) for i in idx]
        try:
            values = masked_sets(runner, site, masks, chunk=chunk)
            runner.agree(runner.run(lesions[:1]), {k: v[:1] for k, v in values.items()})
        except (_Unsupported, Mismatch, RuntimeError) as exc:  # RuntimeError: a model the repeat breaks
            runner.fallbacks[f"sets:{layer}"] = str(exc)
            values = runner.run(lesions)
        for r, i in enumerate(idx):
            out[i] = {k: v[r] for k, v in values.items()}
    keys = out[0].keys() if out else ()
    return {k: np.stack([out[i][k] for i in range(len(sets))]) for k in keys}


class _Unsupported(Exception):
    """The side-by-side pass cannot serve this model (its output does not carry the expanded batch)."""


def masked_sets(runner: Runner, site: Site, masks: torch.Tensor, *, chunk: int = 32) -> dict[str, np.ndarray]:
    """Metric values of ``masks`` (k, units) bool: each row's units clamped to 0 together. A hook on the
    site repeats its output once per row of a chunk (the batch grows k-fold from the site on), so the
    layers before the site run once per chunk, and each chunk costs one pass of the layers after it."""
    if site.heads or site.hook != "output" or site.flat:
        raise _Unsupported(f"site {site.name!r} is a view; sets of its units take the slow path")
    model = runner.model
    module = dict(model.named_modules())[site.target]
    metric = runner.fresh(len(masks))
    keep = (~masks).float()  # (k, units)
    with torch.no_grad(), eval_mode(model):
        for b in runner.batches():
            intact = output_tensor(b.run(model)) if metric.needs_intact else None
            for start in range(0, len(masks), chunk):
                m = keep[start : start + chunk]
                handle = module.register_forward_hook(lambda _m, _i, out, m=m: _repeat(out, m, site.unit_dim))
                try:
                    out = output_tensor(b.run(model))
                finally:
                    handle.remove()
                if out.shape[0] != len(m) * len(b):
                    raise _Unsupported("the model's output does not carry the repeated batch")
                metric.update(
                    out.reshape(len(m), len(b), *out.shape[1:]),
                    b,
                    slice(start, start + len(m)),
                    intact=intact,
                )
    return metric.compute()


def _repeat(h: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    """(k * batch, ...): ``h`` (batch, ...) once per row of ``keep`` (k, units), its units on ``dim``
    multiplied by that row."""
    shape = [keep.shape[0]] + [1] * h.ndim
    shape[1 + dim] = keep.shape[1]
    out = h.unsqueeze(0) * keep.to(h.dtype).reshape(shape)
    return out.reshape(-1, *h.shape[1:])


def mean_activity(
    model: nn.Module, data: Data, sites: Sequence[Site], *, batch_size: int = 1000, limit: int | None = None
) -> dict[str, np.ndarray]:
    """(units,) mean per-example activity at each neuron site, over the first ``limit`` examples (the
    batch that crosses it counted whole); heads are left out (their channels are not units)."""
    measured = [s for s in sites if not s.heads]
    sums = {s.name: np.zeros(s.width) for s in measured}
    n = 0
    for acts, b, _ in grab(model, data, measured, batch_size=batch_size):
        for s in measured:
            sums[s.name] += per_example(acts[s.name].double().cpu(), s.unit_dim).sum(0).numpy()
        n += len(b)
        if limit is not None and n >= limit:
            break
    return {k: v / max(n, 1) for k, v in sums.items()}


def compensation(
    model: nn.Module,
    data: Data,
    sites: Sequence[Site],
    unit: Unit,
    intact: dict[str, np.ndarray],
    *,
    batch_size: int = 1000,
    limit: int | None = None,
) -> dict[str, np.ndarray]:
    """Mean per-example activity of every neuron with ``unit`` deleted (zero) minus ``intact`` (its
    ``mean_activity`` over the same examples: the same ``limit``); ``unit`` itself reads 0 change."""
    with ablate(model, Lesion([unit], Zero()), sites=list(sites)):
        lesioned = mean_activity(model, data, sites, batch_size=batch_size, limit=limit)
    change = {k: v - intact[k] for k, v in lesioned.items()}
    if unit.layer in change:
        change[unit.layer][unit.index] = 0.0
    return change
