"""Split large sweeps into shard jobs and merge them back: the unit of parallel work is a job.

A single-unit sweep becomes ``shards`` jobs over contiguous ranges of the model's units plus a merge; a
set of ablation curves becomes jobs over ranges of random-order repeats (ranked orders grouped
``per_shard`` at a time) plus a merge. Shards are ordinary content-addressed jobs, so every backend runs
the very same ones (a table does not depend on where its shards ran) and a finished shard is never redone
after a restart. The merge concatenates the shards' tables in shard order, which is the row order of
the unsharded table; each row is computed exactly as the unsharded sweep computes it (a unit's deletion
or a repeat's random order does not depend on which others run in the same job).

>>> model = Job("train", {"seed": 0})
>>> merged = sharded_curves(model, {"orders": ["random"], "repeats": 5}, per_shard=2)
>>> merged.kind, [d.params["repeats"] for d in merged.deps.values()]
('merge', [[0, 1], [2, 3], [4]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lesion.errors import LesionError
from lesion.experiments.job import Job


def sharded_units(model: Job, params: Mapping[str, Any], *, shards: int = 1) -> Job:
    """A ``units`` job over every unit of ``model``, as ``shards`` unit ranges merged in order."""
    _check_count("shards", shards)
    if shards == 1:
        return Job("units", dict(params), {"model": model})
    parts = [Job("units", {**params, "shard": [i, shards]}, {"model": model}) for i in range(shards)]
    return merge(parts, "units.parquet")


def sharded_curves(
    model: Job, params: Mapping[str, Any], deps: Mapping[str, Job] | None = None, *, per_shard: int = 1
) -> Job:
    """A ``curves`` job (``params["orders"]``, ``params["repeats"]``) split into jobs of at most
    ``per_shard`` curves: ranges of random-order repeats, and runs of consecutive ranked orders."""
    _check_count("per_shard", per_shard)
    deps = {"model": model, **(deps or {})}
    orders = list(params.get("orders", ["random"]))
    repeats = int(params.get("repeats", 10))
    groups: list[dict[str, Any]] = []
    ranked: list = []

    def flush() -> None:
        if ranked:
            groups.append({"orders": list(ranked), "repeats": 1})
            ranked.clear()

    for order in orders:
        if order != "random":
            ranked.append(order)
            if len(ranked) == per_shard:
                flush()
            continue
        flush()
        for start in range(0, repeats, per_shard):
            ids = list(range(start, min(start + per_shard, repeats)))
            groups.append({"orders": ["random"], "repeats": ids})
    flush()
    if len(groups) <= 1:
        return Job("curves", dict(params), deps)
    return merge([Job("curves", {**params, **g}, deps) for g in groups], "curves.parquet")


def merge(parts: Sequence[Job], file: str) -> Job:
    """A job whose ``file`` is the concatenation of ``file`` of every part, in order."""
    width = len(str(len(parts) - 1))
    return Job("merge", {"files": [file]}, {f"shard{i:0{width}d}": p for i, p in enumerate(parts)})


def shard_slice(n: int, shard: int, shards: int) -> slice:
    """The ``shard``-th of ``shards`` contiguous, near-equal ranges of ``range(n)`` (as ``np.array_split``).

    >>> [shard_slice(10, i, 3) for i in range(3)]
    [slice(0, 4, None), slice(4, 7, None), slice(7, 10, None)]
    """
    if not 0 <= shard < shards:
        raise LesionError(f"shard {shard} of {shards}; expected 0 <= shard < shards")
    size, extra = divmod(n, shards)
    start = shard * size + min(shard, extra)
    return slice(start, start + size + (shard < extra))


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LesionError(f"{name}={value!r}; expected a positive int")
