"""The analysis pipeline's triage and memory budget: ``lesion analyze --triage`` and ``--max-memory``."""

from __future__ import annotations


def batch_for(net, data, config, batch_size: int = 1000) -> int:
    """The batch size ``config.max_memory`` allows (``lesion.analyses.memory``), else ``batch_size``."""
    if not config.max_memory:
        return batch_size
    from lesion.analyses.memory import plan_batch

    return plan_batch(net, data, [], config.max_memory, batch_size)


def triaged(table, net, data, sites, metric, config, spread: dict | None):
    """``table`` (one row per unit) with the triaged sweep's numbers: ``estimate``, ``source`` and the
    metric columns (exact where computed, the estimate in ``delta_<main>`` elsewhere); attrs["triage"]."""
    from lesion.analyses.sweep import sweep

    tri = sweep(net, data, metric=metric, sites=sites, triage=config.triage, seed=config.seed,
                max_memory=config.max_memory, progress=True, **(spread or {}))  # fmt: skip
    tri = tri.set_index(["layer", "unit"])
    keyed = table.set_index(["layer", "unit"])
    for col in tri.columns:
        if col != "lesion":
            keyed[col] = tri[col].reindex(keyed.index).to_numpy()
    out = keyed.reset_index()
    out.attrs.update(table.attrs)
    out.attrs.update(tri.attrs)
    return out
