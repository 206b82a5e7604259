"""The random-rotation control: the same deletions and measures in a randomly rotated basis.

Units are one orthonormal basis of a layer's activity among many. Deleting ``k`` random orthonormal
directions instead of ``k`` units, and measuring the class information of random directions instead of
units, tells whether the network's own axes are special (Bau et al. 2017 found interpretability falls
under random rotations; Morcos et al. 2018 found random directions about as important as units).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from lesion.analyses.curves import _curve_columns
from lesion.analyses.measures import mutual_information
from lesion.analyses.paper import _seed
from lesion.analyses.sweep import sites_for
from lesion.core import interventions as iv
from lesion.core.batch import Data, reusable
from lesion.core.capture import grab
from lesion.core.lesions import Lesion
from lesion.core.metric import Metric
from lesion.core.replacements import Directions
from lesion.core.runner import Runner
from lesion.core.sites import Site, default_candidates
from lesion.util.progress import progress_bar


def direction_curves(
    model: nn.Module,
    data: Data,
    *,
    candidates: Sequence[str] | None = None,
    fractions: Sequence[float] = tuple(np.linspace(0, 1, 21)),
    repeats: int = 5,
    seed: int = 0,
    metric: Metric | None = None,
    batch_size: int = 1000,
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracy (the metric's scalar values) as a growing share of each candidate layer's space is
    deleted, in two bases.

    ``basis="units"``: a random, nested set of round(f x width) units per layer is zeroed.
    ``basis="random"``: as many random orthonormal directions per layer (nested columns of one random
    rotation) are projected out. Columns: ``basis, repeat, fraction, n_ablated`` and the metric's scalar
    columns (``accuracy, loss`` for the default ``Classification``).
    """
    data = reusable(data)
    sites = sites_for(model, data)
    cand = [s for s in sites if s.name in candidates] if candidates else default_candidates(sites)
    runner = Runner(model, data, sites, metric=metric, batch_size=batch_size)
    rows = []
    bar = progress_bar(None, "direction curves", progress, total=2 * repeats * len(fractions))
    for r in range(repeats):
        draws = {s.name: _draw(s.width, _seed(seed, r, i)) for i, s in enumerate(cand)}
        for basis in ("units", "random"):
            for f in fractions:
                k = {s.name: round(float(f) * s.width) for s in cand}
                together = [_lesion(s, *draws[s.name], k[s.name], basis) for s in cand if k[s.name]]
                res = _curve_columns(runner.run([together]) if together else runner.intact, runner.metric)
                rows.append(
                    {"basis": basis, "repeat": r, "fraction": float(f), "n_ablated": sum(k.values())}
                    | {name: float(v[0]) for name, v in res.items()}
                )
                bar.update()
    bar.close()
    return pd.DataFrame(rows)


def _draw(width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random rotation (width, width) and a random order of the units, both seeded."""
    order = torch.randperm(width, generator=torch.Generator().manual_seed(seed))
    return iv.random_directions(width, width, seed=seed), order


def _lesion(site: Site, rotation: torch.Tensor, order: torch.Tensor, k: int, basis: str) -> Lesion:
    if basis == "random":  # the first k columns of one rotation: nested as k grows
        return Lesion(f"{site.name}:*", Directions(rotation[:, :k]))
    return Lesion({site.name: order[:k].tolist()})


def direction_information(
    model: nn.Module,
    data: Data,
    *,
    candidates: Sequence[str] | None = None,
    bins: int = 10,
    seed: int = 0,
    batch_size: int = 1000,
) -> pd.DataFrame:
    """Mutual information (bits, ``bins`` quantile bins) with the label of every unit and of as many
    random orthonormal directions, per candidate layer (maps averaged over space).

    Columns: ``layer, basis, index, mutual_info``.
    """
    data = reusable(data)
    sites = sites_for(model, data)
    cand = [s for s in sites if s.name in candidates] if candidates else default_candidates(sites)
    acts, labels = _activity(model, data, cand, batch_size)
    frames = []
    for i, s in enumerate(cand):
        q = iv.random_directions(s.width, s.width, seed=_seed(seed, 0, i)).double().numpy()
        for basis, a in (("units", acts[s.name]), ("random", acts[s.name] @ q)):
            mi = mutual_information(_joint(a, labels, bins))
            frames.append(
                pd.DataFrame(
                    {"layer": s.name, "basis": basis, "index": np.arange(s.width), "mutual_info": mi}
                )
            )
    return pd.concat(frames, ignore_index=True)


def _activity(model, data, sites: list[Site], batch_size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-example activity (examples, units) of each site, maps averaged over space, and the labels."""
    grabbed: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    labels = []
    for acts, b, _ in grab(model, data, sites, batch_size=batch_size):
        for s in sites:
            h = acts[s.name].movedim(s.unit_dim, -1)
            grabbed[s.name].append(h.reshape(h.shape[0], -1, h.shape[-1]).mean(1).double().cpu())
        labels.append(b.target.cpu())
    return {n: torch.cat(v).numpy() for n, v in grabbed.items()}, torch.cat(labels).numpy()


def _joint(acts: np.ndarray, labels: np.ndarray, bins: int) -> np.ndarray:
    """Counts (units, bins, classes) of quantile-binned activity and label."""
    n_classes = int(labels.max()) + 1
    out = np.zeros((acts.shape[1], bins, n_classes))
    for u in range(acts.shape[1]):
        edges = np.quantile(acts[:, u], np.linspace(0, 1, bins + 1)[1:-1])
        b = np.searchsorted(edges, acts[:, u], side="right")
        np.add.at(out[u], (b, labels), 1.0)
    return out


__all__ = ["direction_curves", "direction_information"]
