"""Streaming per-unit statistics over a dataset, in memory bounded by the number of units.

``UnitMoments`` keeps, per unit of one site: the mean and SD of its activity over every element (all
examples, and all spatial positions of a feature map), the class-conditional means of its per-example
activity (feature maps averaged over space first), the largest absolute activity (dead units) and the
range. ``UnitHistogram`` counts per-example activity in bins jointly with the label, for mutual
information. Both have update / compute / merge / reset, so shards of a dataset can be reduced apart.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lesion.core.batch import Data, output_tensor, reusable
from lesion.core.capture import grab
from lesion.core.metric import Metric, check_labels
from lesion.core.sites import Site
from lesion.errors import DataError, LesionError
from lesion.util import Binning


def per_example(h: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, units): each unit's activity per example, feature maps averaged over space."""
    h = h.movedim(dim, 1)
    return h.reshape(h.shape[0], h.shape[1], -1).mean(2)


class UnitMoments:
    """Streaming moments of one site's units (Chan et al.'s parallel update, in float64)."""

    def __init__(self, width: int, n_classes: int):
        self.width, self.n_classes = width, n_classes
        self.reset()

    def reset(self) -> None:
        u, c = self.width, self.n_classes
        self.n_examples = 0
        self.n_elements = 0
        self.mean = torch.zeros(u, dtype=torch.float64)
        self.m2 = torch.zeros(u, dtype=torch.float64)
        self.class_sum = torch.zeros(c, u, dtype=torch.float64)
        self.class_count = torch.zeros(c, dtype=torch.float64)
        self.max_abs = torch.zeros(u, dtype=torch.float64)
        self.lo = torch.full((u,), np.inf, dtype=torch.float64)
        self.hi = torch.full((u,), -np.inf, dtype=torch.float64)

    def update(self, h: torch.Tensor, y: torch.Tensor, dim: int) -> None:
        """Add a batch: activations ``h`` with units on ``dim``, labels ``y`` (batch,)."""
        h = h.detach().movedim(dim, 1).double().cpu()
        flat = h.transpose(0, 1).reshape(self.width, -1)  # (units, batch * positions)
        n_b = flat.shape[1]
        mean_b = flat.mean(1)
        m2_b = ((flat - mean_b[:, None]) ** 2).sum(1)
        n = self.n_elements
        delta = mean_b - self.mean
        total = n + n_b
        self.mean += delta * (n_b / total)
        self.m2 += m2_b + delta**2 * (n * n_b / total)
        self.n_elements = total
        self.max_abs = torch.maximum(self.max_abs, flat.abs().amax(1))
        act = per_example(h, 1)  # (batch, units)
        self.lo = torch.minimum(self.lo, act.amin(0))
        self.hi = torch.maximum(self.hi, act.amax(0))
        if y is not None:
            y = y.cpu()
            self.class_sum.index_add_(0, y, act)
            self.class_count += torch.bincount(y, minlength=self.n_classes).double()
        self.n_examples += act.shape[0]

    def merge(self, other: UnitMoments) -> UnitMoments:
        """Fold another accumulator (e.g. another shard of the data) into this one."""
        n, m = self.n_elements, other.n_elements
        if m:
            total = n + m
            delta = other.mean - self.mean
            self.mean += delta * (m / total)
            self.m2 += other.m2 + delta**2 * (n * m / total)
            self.n_elements = total
        self.class_sum += other.class_sum
        self.class_count += other.class_count
        self.max_abs = torch.maximum(self.max_abs, other.max_abs)
        self.lo = torch.minimum(self.lo, other.lo)
        self.hi = torch.maximum(self.hi, other.hi)
        self.n_examples += other.n_examples
        return self

    @property
    def sd(self) -> torch.Tensor:
        return (self.m2 / max(self.n_elements, 1)).sqrt()

    @property
    def class_means(self) -> torch.Tensor:
        """(classes, units); NaN for a class with no examples."""
        return self.class_sum / self.class_count[:, None]


class UnitHistogram:
    """Joint counts (units, bins, classes) of per-example activity and label, for mutual information."""

    def __init__(self, edges: torch.Tensor, n_classes: int):
        self.edges = edges.double()  # (units, bins + 1), increasing per unit
        self.n_classes = n_classes
        self.reset()

    def reset(self) -> None:
        u, b = self.edges.shape[0], self.edges.shape[1] - 1
        self.counts = torch.zeros(u, b, self.n_classes, dtype=torch.float64)

    def update(self, act: torch.Tensor, y: torch.Tensor) -> None:
        """Add per-example activity ``act`` (batch, units) with labels ``y``."""
        u, b = self.counts.shape[:2]
        inner = self.edges[:, 1:-1].contiguous()  # (units, bins - 1)
        bins = torch.searchsorted(inner, act.double().T.contiguous(), right=True)  # (units, batch)
        flat = (torch.arange(u)[:, None] * b + bins) * self.n_classes + y.cpu()[None, :]
        self.counts.view(-1).index_add_(0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.float64))

    def merge(self, other: UnitHistogram) -> UnitHistogram:
        if not torch.equal(self.edges, other.edges):
            raise LesionError("cannot merge histograms with different bin edges")
        self.counts += other.counts
        return self


def bin_edges(sample: torch.Tensor, lo, hi, bins: int, binning: str) -> torch.Tensor:
    """(units, bins + 1) edges: quantiles of ``sample`` (examples, units) or equal-width over [lo, hi]."""
    if binning == "quantile":
        q = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
        return torch.quantile(sample.double(), q, dim=0).T.contiguous()
    if binning == "uniform":
        t = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
        return (lo[:, None] + (hi - lo)[:, None] * t[None, :]).contiguous()
    raise LesionError(f"unknown binning {binning!r}; expected 'quantile' or 'uniform'")


@dataclass
class SiteStats:
    """What ``collect_stats`` learned about one site's units."""

    site: Site
    moments: UnitMoments
    histogram: UnitHistogram | None

    @property
    def unit_dim(self) -> int:
        return self.site.unit_dim

    @property
    def mean(self) -> torch.Tensor:
        return self.moments.mean.float()

    @property
    def sd(self) -> torch.Tensor:
        return self.moments.sd.float()

    @property
    def class_means(self) -> torch.Tensor:
        return self.moments.class_means

    @property
    def dead(self) -> torch.Tensor:
        """Units never active on the data (largest |activity| exactly 0)."""
        return self.moments.max_abs == 0


@dataclass(frozen=True)
class Intact:
    """The intact model's metric values on some data, measured while the statistics were gathered: a
    runner on the very same data and metric takes them instead of a pass of its own."""

    values: dict  # metric.compute() of one lesion (the intact model)
    n: int  # examples
    source: tuple  # what the data was (``data_key``): a runner reuses these only for equal data
    metric: Any  # the metric, with its settings
    batch_size: int  # batches sum in their own order: equal values need equal batches


def data_key(data) -> tuple | None:
    """A key equal for the same in-memory tensors (same storage, shape and version): an ``(x, y)`` pair,
    one tensor, or a dict of tensors; None for anything else (a loader, a generator), never reused."""

    def one(t):
        if not isinstance(t, torch.Tensor):
            raise TypeError
        return (t.data_ptr(), tuple(t.shape), t.dtype, t.device, t._version)

    try:
        if isinstance(data, torch.Tensor):
            return (one(data),)
        if isinstance(data, tuple | list) and data:
            return tuple(one(t) for t in data)
        if isinstance(data, Mapping) and data:
            return tuple((k, one(v)) for k, v in sorted(data.items()))
    except TypeError:
        return None
    return None


def same_metric(a, b) -> bool:
    """Two metrics that compute the same values: the same class with the same settings (metrics among
    the settings, as a ``Joint``'s parts, compared the same way)."""

    if type(a) is not type(b):
        return False
    mine, theirs = ({k: v for k, v in vars(m).items() if k not in ("sums", "n")} for m in (a, b))
    if mine.keys() != theirs.keys():
        return False
    for key, x in mine.items():
        y = theirs[key]
        if isinstance(x, tuple | list) and x and all(isinstance(v, Metric) for v in x):
            if not isinstance(y, tuple | list) or len(x) != len(y):
                return False
            if not all(same_metric(u, v) for u, v in zip(x, y, strict=True)):
                return False
            continue
        try:
            if not bool(x == y):
                return False
        except (RuntimeError, TypeError, ValueError):  # tensors or arrays among the settings: only itself
            return a is b
    return True


class Stats(Mapping[str, SiteStats]):
    """Per-site statistics, indexed by layer name."""

    def __init__(
        self, per_site: dict[str, SiteStats], n_classes: int, intact: Intact | None = None, settings=None
    ):
        self._d = per_site
        self.n_classes = n_classes
        self.intact = intact  # the intact model's metric values, measured in the same pass
        self.settings = dict(settings or {})  # how they were gathered (bins, binning, histograms...)

    def __getitem__(self, k: str) -> SiteStats:
        return self._d[k]

    # one measurement is one value: equal and hashed by identity (a replacement holding these statistics
    # is then hashable, so lesions sharing it share one fit and one engine group)
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


class _Reservoir:
    """A uniform sample of at most ``size`` examples' activity and labels (priority sampling)."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.g = torch.Generator().manual_seed(seed)
        self.keys = torch.empty(0)
        self.rows: dict[str, torch.Tensor] = {}
        self.y = torch.empty(0, dtype=torch.long)
        self.seen = 0

    def add(self, acts: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        keys = torch.cat([self.keys, torch.rand(len(y), generator=self.g)])
        self.y = torch.cat([self.y, y.cpu()])
        for k, a in acts.items():
            self.rows[k] = torch.cat([self.rows.get(k, a[:0].cpu()), a.cpu()])
        self.seen += len(y)
        if len(keys) > self.size:
            keep = torch.topk(keys, self.size).indices.sort().values
            keys, self.y = keys[keep], self.y[keep]
            self.rows = {k: v[keep] for k, v in self.rows.items()}
        self.keys = keys

    @property
    def complete(self) -> bool:
        return self.seen == len(self.y)


def collect_stats(
    model: nn.Module,
    data: Data,
    sites: Sequence[Site],
    *,
    bins: int = 10,
    binning: Binning = "quantile",
    histograms: bool = True,
    sample_size: int = 10_000,
    seed: int = 0,
    batch_size: int = 1000,
    labels: bool = True,
    metric=None,
) -> Stats:
    """Stream ``data`` through ``model`` (eval mode) and gather per-unit statistics at ``sites``.

    ``labels=False`` skips everything that needs class labels (class means, histograms): moments only,
    for data of any kind (token sequences, regression targets). Quantile bin edges come from a seeded
    uniform sample of at most ``sample_size`` examples (exact when
    the data is no larger); the joint histograms are then counted over all the data. Memory is bounded by
    units x (classes + bins x classes + sample_size), whatever the dataset size. With ``metric`` the
    intact model's values are measured in the same pass (``stats.intact``), so that a runner on the same
    data need not run the model again.
    """
    data = reusable(data)
    if binning not in ("quantile", "uniform"):
        raise LesionError(f"unknown binning {binning!r}; expected 'quantile' or 'uniform'")
    if bins < 2:
        raise LesionError(f"bins must be at least 2, got {bins}")
    moments: dict[str, UnitMoments] = {}
    sample = _Reservoir(sample_size, seed)
    n_classes = 0
    histograms = histograms and labels
    scored, n = (copy.copy(metric), 0) if metric is not None else (None, 0)
    if scored is not None:
        scored.reset(1)
    for acts, y, logits, b in _stream(model, data, sites, batch_size, labels):
        if scored is not None:
            out = output_tensor(logits)
            scored.update(out[None], b, slice(0, 1), intact=out if scored.needs_intact else None)
            n += len(b)
        n_classes = n_classes or (logits.shape[-1] if labels else 0)
        for s in sites:
            moments.setdefault(s.name, UnitMoments(s.width * s.group, n_classes)).update(
                acts[s.name], y, s.unit_dim
            )
        if histograms:
            sample.add({s.name: per_example(acts[s.name].double(), s.unit_dim) for s in sites}, y)
    hists: dict[str, UnitHistogram | None] = dict.fromkeys(moments)
    if histograms:
        for s in sites:
            m = moments[s.name]
            edges = bin_edges(sample.rows[s.name], m.lo, m.hi, bins, binning)
            hists[s.name] = UnitHistogram(edges, n_classes)
        if sample.complete:
            for s in sites:
                hists[s.name].update(sample.rows[s.name], sample.y)
        else:
            for acts, y, _, _ in _stream(model, data, sites, batch_size, labels):
                for s in sites:
                    hists[s.name].update(per_example(acts[s.name].double(), s.unit_dim), y)
    per_site = {s.name: SiteStats(s, moments[s.name], hists[s.name]) for s in sites}
    key = data_key(data)
    intact = None
    if scored is not None and key is not None:
        intact = Intact(scored.compute(), n, key, metric, batch_size)
    settings = {"bins": bins, "binning": binning, "histograms": histograms, "sample_size": sample_size,
                "seed": seed, "labels": labels}  # fmt: skip
    return Stats(per_site, n_classes, intact, settings)


def _stream(model, data, sites, batch_size, labels=True):
    """Yield (activations by site, labels or None, outputs) per batch, checking labels and finiteness."""
    check = lambda b, k: forward(model, b, k, check=labels)  # noqa: E731
    for k, (acts, b, logits) in enumerate(grab(model, data, sites, batch_size=batch_size, run=check)):
        y = _labels(b, logits, k) if labels else None
        for name, h in acts.items():
            if not torch.isfinite(h).all():
                raise DataError(
                    f"batch {k}: site {name!r} produced NaN or infinite activations; expected finite "
                    "values (check the inputs and the model's weights)"
                )
        yield acts, y, logits, b


def _labels(b, logits: torch.Tensor, k: int) -> torch.Tensor:
    y = b.target
    if y is None or y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(
            f"batch {k}: class statistics need integer labels (batch,); got "
            f"{'none' if y is None else f'{y.dtype} of shape {tuple(y.shape)}'} (use labels=False)"
        )
    check_labels(y, logits.shape[-1], f"batch {k}: ")
    return y.long().cpu()


def forward(model: nn.Module, b, k: int = 0, *, check: bool = True) -> torch.Tensor:
    """Run ``model`` on one batch; a failure from a wrongly shaped input becomes a DataError."""
    from lesion.core.batch import as_batch

    b = as_batch(b)
    try:
        out = output_tensor(b.run(model))
    except (RuntimeError, TypeError) as exc:
        raise DataError(f"batch {k}: the model failed on inputs of shape {b.shapes()}: {exc}") from exc
    if check and out.ndim != 2:
        raise DataError(f"the model returned {tuple(out.shape)}; expected logits (batch, classes)")
    if not torch.isfinite(out).all():
        raise DataError(f"batch {k}: the model produced NaN or infinite outputs; expected finite logits")
    return out
