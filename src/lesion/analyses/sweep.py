"""One entry point for every lesion study: ``sweep(model, data, lesions, metric)`` -> a tidy DataFrame.

The slow path is the definition: for each lesion, ``with ablate(model, lesion)`` and one full forward
pass per batch, scored by the metric. The fast path (``lesion.engine``) evaluates many single-unit
lesions per pass and cumulative orders incrementally; it is used only where it is exact (constant
per-unit replacements on channel sites of a traceable one-input model) and only after it agreed with
the slow path on the real data of this very sweep; otherwise the slow answer is used and the reason
is kept in ``df.attrs["engine_fallbacks"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from lesion.analyses.memory import plan, retrying
from lesion.backends.ray_sweep import check_backend, evaluate
from lesion.core.batch import Data, first_batch, reusable
from lesion.core.lesions import Lesion, as_lesion
from lesion.core.metric import Metric, columns
from lesion.core.runner import Runner
from lesion.core.sites import Site, find_sites
from lesion.engine.dispatch import evaluate_lesions  # noqa: F401 - its home was here; imported from here
from lesion.errors import LesionError
from lesion.util import Backend, Precision
from lesion.util.progress import progress_bar


def sites_for(model: nn.Module, data: Data, layers: Sequence[str] | str | None = None) -> list[Site]:
    """The sites of ``model``, found with a dry forward pass on the first examples of ``data``."""
    return find_sites(model, first_batch(data), layers)


def sweep(
    model: nn.Module,
    data: Data,
    lesions: Sequence[Lesion | Any] | None = None,
    metric: Metric | None = None,
    *,
    sites: Sequence[Site] | None = None,
    batch_size: int = 1000,
    engine: bool = True,
    precision: Precision = "fp32",
    progress: bool = False,
    backend: Backend = "local",
    address: str | None = None,
    shards: int | None = None,
    resume: str | Path | None = None,
    triage: int | str | None = None,
    seed: int = 0,
    max_memory: int | str | None = None,
) -> pd.DataFrame:
    """Evaluate every lesion on ``data``: one row per lesion, its metric values and their change.

    ``lesions`` are ``Lesion`` values or unit specs (``"relu1:3"``: deleted with the zero replacement).
    ``metric`` defaults to ``Classification()``. Columns: ``lesion`` (its text), one per metric output
    and ``delta_<output>`` (lesioned minus intact). ``df.attrs`` holds the intact values and
    ``engine_fallbacks``. Replacements that need data (mean, resample, optimal) are fitted on ``data``.

    ``triage=budget`` (a number of units, a share ``"10%"`` or a time ``"10min"``): every single-unit
    lesion (``lesions=None``: every unit of the sites) gets the attribution estimate, and the budget buys
    exact numbers for the top units by |estimate| and a ``seed``-ed random sample of the rest; columns
    ``estimate`` and ``source`` (exact / estimated) are added and ``df.attrs["triage"]`` reports the
    estimated recall of the true top 1% with its interval (``lesion.analyses.triage``).
    ``max_memory`` (bytes or ``"4GB"``) sizes the batches to fit (``lesion.analyses.memory``).

    >>> import torch, lesion
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    >>> x, y = torch.randn(40, 4), torch.arange(40) % 3
    >>> df = lesion.sweep(net, (x, y), ["1:0", "1:1-2"])
    >>> list(df.lesion), "delta_loss" in df
    (['1:0', '1:1-2'], True)
    """
    check_backend(backend, address, shards, resume)
    data = reusable(data)
    sites = list(sites) if sites is not None else sites_for(model, data)
    if lesions is None and triage is None:
        raise LesionError("lesions=None sweeps every unit only with triage=; expected lesions to evaluate")
    memory = memory_plan(model, data, max_memory, batch_size)
    spread = {"backend": backend, "address": address, "shards": shards, "resume": resume}
    if triage is not None:
        from lesion.analyses.triage import triage_sweep

        options = {"engine": engine, "precision": precision, "progress": progress, "spread": spread}

        def triaged(bs: int) -> pd.DataFrame:
            return triage_sweep(model, data, lesions, metric, triage, sites=sites, seed=seed, batch_size=bs,
                                cache_bytes=memory["cache_bytes"], **options)  # fmt: skip

        df = retrying(triaged, memory["batch_size"], memory)
        df.attrs["memory"] = memory
        return df

    def run(bs: int) -> tuple[list[Lesion], dict[str, np.ndarray], Runner]:
        runner = Runner(model, data, sites, metric=metric, batch_size=bs, engine=engine, precision=precision)
        runner.cache_bytes = memory["cache_bytes"]
        chosen = runner.fit([as_lesion(les) for les in lesions])
        with progress_bar(None, "lesions", progress, total=len(chosen)) as bar:
            return chosen, evaluate(runner, chosen, bar=bar, **spread), runner

    chosen, values, runner = retrying(run, memory["batch_size"], memory)
    df = table([str(les) for les in chosen], values, runner)
    df.attrs["memory"] = memory
    return df


def memory_plan(model: nn.Module, data: Data, max_memory: int | str | None, batch_size: int) -> dict:
    """The batch and cache sizes a memory budget allows (``lesion.analyses.memory``, which measures one
    example's activations with a pass of its own). Without a budget the given batch size is kept, with
    no extra pass, and running out of memory retries with half the batch (``retrying``)."""
    if max_memory is None:
        return {"batch_size": batch_size, "cache_bytes": None, "budget": None}
    return plan(model, data, max_memory, batch_size)


def table(names: Sequence[str], values: dict[str, np.ndarray], runner: Runner) -> pd.DataFrame:
    """A tidy table: ``lesion``, the metric's columns and ``delta_<column>`` against the intact model."""
    cols = columns(values)
    intact = columns(runner.intact)
    df = pd.DataFrame({"lesion": list(names), **cols})
    for name in cols:
        df[f"delta_{name}"] = df[name] - intact[name][0]
    df.attrs.update(intact={k: float(v[0]) for k, v in intact.items()}, n=runner.n)
    df.attrs.update(engine_fallbacks=dict(runner.fallbacks), engine_deviation=dict(runner.deviation))
    df.attrs.update(served=dict(runner.served), engine_skipped=runner.skipped())
    return df
