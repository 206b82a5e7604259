"""The one measuring spine of ``lesion analyze``, for classifiers and language models alike.

A ``Study`` says what differs (the data of the unit table and of the curves, the sites, the metric,
the ranked orders, whether per-unit noise is measured); ``measure`` runs the same steps for every
study: one statistics pass over the curves' data that also measures the intact model (shared by the
unit table where it is the same data, the curves and the noise), the single-unit table (exact, or
triaged with ``--triage``), the cumulative ablation curves and the noise curves. Batches follow
``--max-memory`` everywhere.

May import: ``lesion.core``, ``lesion.analyses``, ``lesion.pipeline.scale``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lesion.pipeline.scale import batch_for, triaged

if TYPE_CHECKING:  # the command line imports this module without torch
    import pandas as pd

    from lesion.core.batch import Data
    from lesion.core.metric import Metric
    from lesion.core.sites import Site

Stage = Callable[[int, str], None]  # (step of 4, what happens now): progress reporting


def _quiet(k: int, text: str) -> None:
    pass


@dataclass(frozen=True)
class Study:
    """What one analysis measures. ``test``: the unit table's held-out data; ``train``: the curves' and
    the noise's data (a classifier's training labels; a language model's: ``test`` itself);
    ``candidates``: the layers the curves delete; ``orders``: ranked orders beside random; ``noise``:
    per-unit noise curves on ``noise_sites`` (default: the candidates)."""

    test: Data
    train: Data
    sites: Sequence[Site]
    candidates: Sequence[str]
    metric: Metric
    orders: tuple[str, ...]
    noise: bool = False
    noise_sites: Sequence[str] | None = None
    examples: str = "test examples"  # how stage 1 counts the unit table's data

    @property
    def curve_sites(self) -> list[Site]:
        """The sites the statistics pass over ``train`` gathers moments at: the noise's (their SDs scale
        the noise), none without noise (the pass then only measures the intact model)."""
        names = set(self.noise_sites or self.candidates) if self.noise else set()
        return [s for s in self.sites if s.name in names]


def measure(net, study: Study, config, clock, stage: Stage = _quiet, spread: dict | None = None):
    """(unit table, curves, noise curves or None) of ``study``; ``config`` an ``AnalysisConfig``,
    ``clock`` laps every step. The model runs intact once per distinct split of data."""
    import numpy as np

    from lesion.analyses.paper import ablation_curves, noise_curves, unit_table
    from lesion.core.stats import collect_stats

    test, train, sites, metric = study.test, study.train, list(study.sites), study.metric
    size = batch_for(net, test, config)
    # one pass over the curves' data: the noise SDs and the intact model, for the curves, the noise and,
    # where the data is the same, the unit table
    measured = collect_stats(net, train, study.curve_sites, histograms=False, labels=metric.classes,
                             metric=metric, batch_size=size)  # fmt: skip
    shared = measured if test is train else None
    stage(1, f"single-unit ablations: {sum(s.width for s in sites)} units, {_count(test)} {study.examples}")
    if config.triage:
        base = unit_table(net, test, sites=sites, metric=metric, importance=False, batch_size=size,
                          reference=shared)  # fmt: skip
        table = triaged(base, net, test, sites, metric, config, spread)
    else:
        table = unit_table(net, test, sites=sites, metric=metric, progress=True, batch_size=size,
                           reference=shared, **(spread or {}))  # fmt: skip
    clock.lap("unit_table")
    stage(2, f"cumulative ablation: {config.repeats} random + {len(study.orders)} ranked orders")
    grid = None if config.fractions is None else np.linspace(0.0, 1.0, int(config.fractions))
    curve = ablation_curves(
        net, train, sites=sites, candidates=list(study.candidates), orders=("random", *study.orders),
        repeats=config.repeats, seed=config.seed, fractions=grid, units=table, metric=metric,
        batch_size=size, progress=True, reference=measured,
    )  # fmt: skip
    clock.lap("ablation_curves")
    noisy: pd.DataFrame | None = None
    if study.noise:
        stage(3, f"per-unit noise: {config.noise_repeats} draws per scale")
        noisy = noise_curves(net, train, sites=sites, candidates=[s.name for s in study.curve_sites],
                             repeats=config.noise_repeats, seed=config.seed, metric=metric, batch_size=size,
                             progress=True, reference=measured)  # fmt: skip
        clock.lap("noise_curves")
    return table, curve, noisy


def _count(data: Data) -> int:
    if isinstance(data, dict):
        return len(data["input_ids"])
    return len(data[1])
