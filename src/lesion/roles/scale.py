"""Single-unit effects for an atlas of any size: exact for every unit, or by triage.

``triage="auto"`` (the default of ``build`` and ``lesion atlas``) measures every unit exactly up to
``AUTO_UNITS`` units and above that triages with an exact budget of ``AUTO_SHARE`` of the units (at least
``AUTO_MIN``): ``lesion.analyses.triage.triage_sweep`` (the function ``lesion.sweep(..., triage=)`` runs)
gives the attribution estimate of every unit's zero-replacement effect, exact effects for the top units
by |estimate| and a seeded random sample of the rest, and the estimated recall of the true top-k with
its interval. The second replacement (mean; for a language model resample alone) and a language model's
direct effects are measured for the top block only. Each card says whether its effect is exact or
estimated (``effect_source``); pairs and compensation take units measured exactly only, 8 units with 2
partners each by default.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np

from lesion.analyses.triage import TOP, parse_budget, triage_sweep
from lesion.errors import LesionError, LesionNote
from lesion.roles.effects import _values, single_effects

AUTO_UNITS = 4096  # above this many units, "auto" triages
AUTO_SHARE = 0.005  # the automatic exact budget: this share of the units ...
AUTO_MIN = 64  # ... and at least this many
OFF = ("off", "none", "exact", "no")
PAIRS = (16, 3)  # the default pair units and partners of each ...
PAIRS_TRIAGED = (8, 2)  # ... and of an atlas made by triage (its lesions are the dear ones)


def pair_defaults(pair_units: int | None, partners: int | None, budget) -> tuple[int, int]:
    """The pair stage's units and partners: as given, else the defaults for an exact or triaged atlas."""
    units, each = PAIRS if budget is None else PAIRS_TRIAGED
    return (units if pair_units is None else pair_units), (each if partners is None else partners)


def plan(triage, n_units: int):
    """The triage budget for ``n_units`` units (None: every unit exactly); a bad budget is refused
    here, before any work."""
    if triage is None or triage is False or (isinstance(triage, str) and triage.strip().lower() in OFF):
        return None
    if triage is True or (isinstance(triage, str) and triage.strip().lower() == "auto"):
        if n_units <= AUTO_UNITS:
            return None
        budget = min(n_units, max(AUTO_MIN, math.ceil(AUTO_SHARE * n_units)))
        warnings.warn(
            LesionNote(
                f"{n_units} units (more than {AUTO_UNITS}): effects by triage, exact for {budget} units "
                f"({AUTO_SHARE:.1%}; the top by attribution estimate and a random sample), estimated for "
                "the rest; pass triage=None (--triage off) for every unit exactly"
            ),
            stacklevel=3,
        )
        return budget
    parse_budget(triage, n_units)  # a clear error for a bad budget
    return triage


def recall_share(budget, n_units: int) -> float:
    """The top share whose recall the atlas reports: the top 1%, or fewer units where a count budget's
    top block could not hold them (k at most a quarter of the budget)."""
    count, _ = parse_budget(budget, n_units)
    if count is None:
        return TOP
    return min(TOP, max(1, count // 4) / n_units)


def zero_effects(model, data, sites, metric, budget, *, seed, batch_size, progress, spread) -> dict:
    """Every unit's zero-replacement effect by triage: the metric's outputs (NaN where estimated), the
    ``estimate``, ``exact`` (bool) and ``triage`` (its report as JSON text), by unit."""
    n = sum(s.width for s in sites)
    df = triage_sweep(model, data, None, metric, budget, sites=sites, seed=seed, batch_size=batch_size,
                      top=recall_share(budget, n), progress=progress, spread=spread)  # fmt: skip
    out = {name: _values(df, name) for name in ("dsum", "dsq", "count", "accuracy", "loss")}
    more = ("dsum_class", "dsq_class", "count_class", "accuracy_class", "next_token_ids", "next_token_loss")
    for name in more:
        got = _values(df, name)
        if got.shape[1]:
            out[name] = got
    report = dict(df.attrs["triage"])
    report["engine_fallbacks"] = df.attrs.get("engine_fallbacks", {})
    out |= {"estimate": df["estimate"].to_numpy(np.float64), "exact": (df["source"] == "exact").to_numpy()}
    out["triage"] = np.array(json.dumps(report, default=float))
    return out


def top_block(zero: dict) -> np.ndarray:
    """Positions of the triage's top block (the units with the largest |estimate|), in unit order."""
    report = json.loads(str(zero["triage"]))
    order = np.argsort(-np.abs(zero["estimate"]), kind="stable")[: int(report["top"])]
    return np.sort(order)


def subset_effects(model, data, sites, units, chosen, replacement, metric, **kw) -> dict:
    """``single_effects`` of the units at positions ``chosen``, scattered into arrays over every unit
    (NaN elsewhere)."""
    got, _ = single_effects(model, data, sites, [units[i] for i in chosen], replacement, metric, **kw)
    out = {}
    for name, v in got.items():
        full = np.full((len(units), *v.shape[1:]), np.nan)
        full[chosen] = v
        out[name] = full
    return out


def report(zero: dict) -> dict | None:
    """The triage report kept with the zero effects (None for an exact atlas)."""
    return json.loads(str(zero["triage"])) if "triage" in zero else None


def check_backend(backend: str, address, shards) -> dict:
    """The spread of the exact lesions: ``local`` or ``ray`` (``lesion.backends.ray_sweep``)."""
    from lesion.backends.ray_sweep import check_backend as check

    if backend not in ("local", "ray"):
        raise LesionError(f"backend={backend!r}; expected 'local' or 'ray'")
    check(backend, address, shards, None)
    return {"backend": backend, "address": address, "shards": shards, "resume": None}
