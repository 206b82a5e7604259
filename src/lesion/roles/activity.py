"""What each unit responds to, in one streaming pass: top and bottom examples by activity (a streaming
top-k), how often it is active, an activity histogram and a stored sample of per-example activity (for
correlations between units and the simulation score). Memory: units x (k + bins + sample)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lesion.core.batch import Data
from lesion.core.capture import grab
from lesion.core.sites import Site
from lesion.core.stats import per_example


class TopK:
    """The ``k`` largest values per column seen so far, with their example ids; ties: lower id first."""

    def __init__(self, k: int, width: int, largest: bool = True):
        self.k, self.largest = k, largest
        self.values = torch.empty(0, width)  # float32: the activity as the model computed it
        self.ids = torch.empty(0, width, dtype=torch.long)
        self.where = torch.empty(0, width, dtype=torch.long)

    def update(self, act: torch.Tensor, ids: torch.Tensor, where: torch.Tensor) -> None:
        """Add ``act`` (batch, units) of examples ``ids`` (batch,), later ids than any seen before."""
        v = torch.cat([self.values, act.float()])
        i = torch.cat([self.ids, ids[:, None].expand_as(act)])
        w = torch.cat([self.where, where])
        order = torch.sort(v, dim=0, descending=self.largest, stable=True).indices[: self.k]
        self.values, self.ids, self.where = v.gather(0, order), i.gather(0, order), w.gather(0, order)


@dataclass
class Activity:
    """One site's per-unit findings: (k, units) top/bottom, (units,) frequency, (units, bins) histogram."""

    site: Site
    top: TopK
    bottom: TopK
    active: torch.Tensor  # (units,) examples with activity > 0
    edges: torch.Tensor  # (units, bins + 1)
    counts: torch.Tensor  # (units, bins)
    sample: torch.Tensor  # (n_sample, units) per-example activity of the first examples
    s1: torch.Tensor | None = None  # (units,) sum of per-example activity (float64)
    s2: torch.Tensor | None = None  # (units,) sum of its squares
    n: int = 0
    class_sum: torch.Tensor | None = None  # (classes, units) sums of activity by label
    class_count: torch.Tensor | None = None  # (classes,)

    @property
    def mean(self) -> torch.Tensor:
        return self.s1 / max(self.n, 1)

    @property
    def sd(self) -> torch.Tensor:
        return (self.s2 / max(self.n, 1) - self.mean**2).clamp_min(0).sqrt()


def _where(h: torch.Tensor, site: Site, dim: int) -> torch.Tensor:
    """(batch, units) flat position of each unit's maximum in a feature map (a head: the token where it
    writes most); 0 for a neuron."""
    if not (site.spatial or site.heads):
        return torch.zeros(h.shape[0], h.shape[dim], dtype=torch.long)
    h = h.movedim(dim, 1)
    return h.reshape(h.shape[0], h.shape[1], -1).argmax(2)


def _any_active(h: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, units): whether the unit is above 0 anywhere in the example."""
    h = h.movedim(dim, 1)
    return (h.reshape(h.shape[0], h.shape[1], -1) > 0).any(2)


def head_norms(h: torch.Tensor, site: Site) -> torch.Tensor:
    """(batch, tokens, heads): the norm of each head's slice of the attention output at each token."""
    h = h.movedim(site.unit_dim, -1)
    return h.reshape(*h.shape[:-1], site.width, site.group).norm(dim=-1).reshape(h.shape[0], -1, site.width)


def _view(h: torch.Tensor, site: Site) -> tuple[torch.Tensor, int]:
    """(activity with one channel per unit, its unit axis): a head site becomes (batch, tokens, heads)."""
    return (head_norms(h, site).transpose(1, 2), 1) if site.heads else (h, site.unit_dim)


def head_ranges(model, data, sites, batch_size) -> tuple[dict, dict]:
    """Per head site, the (heads,) range of per-example activity (the mean over tokens of each head's
    output norm): the histogram's edges for heads, whose statistics ``collect_stats`` keeps by channel."""
    heads = [s for s in sites if s.heads]
    lo = {s.name: torch.full((s.width,), float("inf"), dtype=torch.float64) for s in heads}
    hi = {s.name: torch.full((s.width,), -float("inf"), dtype=torch.float64) for s in heads}
    for acts, _, _ in grab(model, data, heads, batch_size=batch_size) if heads else ():
        for s in heads:
            act = head_norms(acts[s.name].float().cpu(), s).mean(1).double()  # (batch, heads)
            lo[s.name] = torch.minimum(lo[s.name], act.amin(0))
            hi[s.name] = torch.maximum(hi[s.name], act.amax(0))
    return lo, hi


def activity(
    model: nn.Module,
    data: Data,
    sites: Sequence[Site],
    lo: dict[str, torch.Tensor],
    hi: dict[str, torch.Tensor],
    *,
    k: int = 8,
    bins: int = 20,
    sample: int = 4000,
    batch_size: int = 1000,
    n_classes: int = 0,
) -> tuple[dict[str, Activity], torch.Tensor | None, torch.Tensor]:
    """Stream ``data`` once. ``lo``/``hi``: per-unit range of per-example activity (from
    ``collect_stats``; ``head_ranges`` for heads), the histogram's edges. An attention head's activity
    is the mean over tokens of the norm of its output. Returns the findings by site (with class sums of
    the activity over ``n_classes`` classes where there are labels), every example's label (None
    without labels) and the ids of the sampled examples (the first ``sample``)."""
    found: dict[str, Activity] = {}
    for s in sites:
        w = s.width if s.heads else s.width * s.group
        t = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
        edges = lo[s.name][:, None] + (hi[s.name] - lo[s.name])[:, None] * t[None]
        found[s.name] = Activity(
            s,
            TopK(k, w),
            TopK(k, w, largest=False),
            torch.zeros(w, dtype=torch.long),
            edges,
            torch.zeros(w, bins, dtype=torch.long),
            torch.empty(0, w),
            torch.zeros(w, dtype=torch.float64),
            torch.zeros(w, dtype=torch.float64),
        )
        found[s.name].class_sum = torch.zeros(n_classes, w, dtype=torch.float64)
        found[s.name].class_count = torch.zeros(n_classes, dtype=torch.float64)
    labels, ids_kept = [], []
    for acts, b, _ in grab(model, data, sites, batch_size=batch_size):
        ids = b.ids.cpu()
        y = b.target
        room = max(0, sample - sum(len(i) for i in ids_kept))
        ids_kept.append(ids[:room])
        labelled = y is not None and y.ndim == 1 and not y.dtype.is_floating_point
        if labelled:
            labels.append(y.cpu().long())
        for s in sites:
            f = found[s.name]
            h, dim = _view(acts[s.name].float().cpu(), s)
            act = per_example(h, dim)  # (batch, units)
            where = _where(h, s, dim)
            f.top.update(act, ids, where)
            f.bottom.update(act, ids, where)
            f.active += _any_active(h, dim).sum(0)
            f.counts += _histogram(act.double(), f.edges)
            f.sample = torch.cat([f.sample, act[:room]])
            f.s1 += act.double().sum(0)
            f.s2 += (act.double() ** 2).sum(0)
            f.n += act.shape[0]
            if labelled and n_classes:
                f.class_sum.index_add_(0, y.cpu().long(), act.double())
                f.class_count += torch.bincount(y.cpu().long(), minlength=n_classes).double()
    n = sum(f.n for f in found.values()) // max(len(found), 1)
    y_all = torch.cat(labels) if labels and sum(map(len, labels)) == n else None
    return found, y_all, torch.cat(ids_kept)


def _histogram(act: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(units, bins) counts of ``act`` (batch, units) in each unit's equal-width bins (last bin closed,
    as numpy's histogram)."""
    u, b = edges.shape[0], edges.shape[1] - 1
    inner = edges[:, 1:-1].contiguous()
    idx = torch.searchsorted(inner, act.T.contiguous(), right=True).clamp_(0, b - 1)  # (units, batch)
    idx[edges[:, -1] == edges[:, 0]] = 0  # a unit of constant activity: every example in the first bin
    flat = (torch.arange(u)[:, None] * b + idx).reshape(-1)
    return torch.bincount(flat, minlength=u * b).reshape(u, b)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two vectors; NaN when either is constant (or fewer than 2 values)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / np.sqrt((a @ a) * (b @ b)))


def correlations(sample: np.ndarray) -> np.ndarray:
    """(units, units) Pearson correlations of per-example activity (n, units); 0 for constant units."""
    sample = np.asarray(sample, dtype=np.float64)
    x = sample - sample.mean(0)
    norm = np.sqrt((x * x).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(norm > 0, x / norm, 0.0)
    return z.T @ z
