"""Triage: every unit's effect estimated, the likely large ones computed exactly, and the misses counted.

``sweep(model, data, triage=budget)`` lands here. The attribution estimate (one forward and one backward
pass per batch) ranks every unit; an exact budget of ``B`` lesions goes first to every attention head
where the heads take at most half of it (the estimate is known to fail for heads; ``heads_first``), then
to the top units by |estimate| and to a seeded uniform random sample of ``m`` of the rest (``sample``
share of what is left). The heads and the top units form the top block.
The table has every unit: exact numbers where computed (``source == "exact"``), the estimate elsewhere.

The recall of the true top-k (``k`` = the top 1% by |exact effect| by default) is estimated from the
random sample alone, never from the estimate, so a poor estimate shows as a low recall. Recall is
``1 - X / k`` with ``X`` the number of top-k units left unexamined. The confidence set for ``X`` inverts
an exact hypergeometric test (``recall_interval``): under the hypothesis ``X = x`` the top-k threshold is
the ``(k - x)``-th largest examined |effect|, and the rest ``R`` (every unit outside the top block, of
which the sample is a uniform draw of ``m``) then holds ``x + c`` units above it, ``c`` of them in the
sample; ``x`` stays in the set unless ``c`` lies in either ``(1 - level) / 2`` tail of
Hypergeometric(|R|, x + c, m). The point estimate scales the sample's count to the unexamined units.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from lesion.analyses.attribution import estimates, fitted_replacement, main_column
from lesion.backends.ray_sweep import evaluate
from lesion.core.batch import Data
from lesion.core.lesions import Lesion, as_lesion, replacement_key
from lesion.core.metric import Classification, Metric, columns
from lesion.core.runner import Runner
from lesion.core.sites import Site
from lesion.errors import LesionError
from lesion.util.progress import progress_bar

TOP = 0.01  # the recall is of the top 1% of units by |exact effect|
SAMPLE = 0.5  # share of the exact budget spent on the random sample of the rest (the recall's evidence)
LEVEL = 0.95  # confidence of the recall interval
PILOT = 8  # lesions timed to turn a time budget into a number of lesions
ROUNDS = 3  # a time budget: rounds of exact lesions, each sized by the rate the one before measured
SAFETY = 0.9  # share of the time left that a further round may plan for
_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def parse_budget(budget: Any, n_units: int) -> tuple[int | None, float | None]:
    """(lesions, None) for a count or a share (``"10%"``), (None, seconds) for a time (``"10min"``)."""
    if isinstance(budget, bool) or budget is None:
        raise LesionError(f"triage={budget!r}; expected a number of units, a share like '10%' or a time")
    if isinstance(budget, int | np.integer):
        return _count(int(budget), n_units, repr(budget)), None
    text = str(budget).strip().lower().replace(" ", "")
    if re.fullmatch(r"-?\d+", text):  # a count given as text (the command line)
        return _count(int(text), n_units, repr(budget)), None
    share = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
    if share:
        return _count(math.ceil(float(share.group(1)) / 100 * n_units), n_units, repr(budget)), None
    timed = re.fullmatch(r"(\d+(?:\.\d+)?)(s|sec|min|m|h)", text)
    if timed:
        seconds = float(timed.group(1)) * _UNITS[timed.group(2)]
        if seconds <= 0:
            raise LesionError(f"triage={budget!r}: a time budget must be positive")
        return None, seconds
    raise LesionError(
        f"triage={budget!r}; expected a number of units (an int), a share ('10%') or a time ('90s', '10min', "
        "'1h')"
    )


def _count(b: int, n_units: int, shown: str) -> int:
    if b < 1:
        raise LesionError(f"triage={shown}: an exact budget must be at least 1 unit")
    if b > n_units:
        raise LesionError(
            f"triage={shown}: the budget is larger than the model's {n_units} units; expected at most "
            f"{n_units} (or no triage: an exact sweep of every unit)"
        )
    return b


def choose(
    est: np.ndarray, budget: int, *, sample: float = SAMPLE, seed: int = 0, always: Sequence[int] = ()
) -> tuple[np.ndarray, ...]:
    """(top, sampled): the ``always`` positions (examined whatever their estimate), the top units of the
    others by |estimate| and a seeded uniform sample of ``m = round(sample * b)`` of the rest, ``b`` the
    budget left after ``always`` (no sample when the budget covers every unit)."""
    n = len(est)
    if not 0 <= sample < 1:
        raise LesionError(f"sample={sample!r}; expected a share of the budget in [0, 1)")
    fixed = np.unique(np.asarray(always, dtype=np.int64))
    left, others = budget - len(fixed), np.setdiff1d(np.arange(n), fixed)
    if left < 0:
        raise LesionError(f"{len(fixed)} units to examine always exceed the exact budget of {budget}")
    m = 0 if left >= len(others) else min(round(sample * left), len(others) - (left - round(sample * left)))
    order = others[np.argsort(-np.abs(est[others]), kind="stable")]
    top = np.sort(np.concatenate([fixed, order[: left - m]]))
    rest = np.sort(order[left - m :])
    rng = np.random.default_rng(seed)
    sampled = np.sort(rng.choice(rest, size=m, replace=False)) if m else np.zeros(0, dtype=np.int64)
    return top, sampled


def heads_first(units: Sequence[tuple[str, int]], sites: Sequence[Site], budget: int) -> np.ndarray:
    """Positions of the attention heads among ``units``, examined exactly whatever their estimate where
    they take at most half the budget: the first-order estimate is known to fail for heads (attention
    saturates; Kramar et al. 2024's AtP* and the T4 study's first block), and heads are few (144 of
    GPT-2 small's 37,008 units)."""
    heads = {s.name for s in sites if s.heads}
    idx = np.array([i for i, (layer, _) in enumerate(units) if layer in heads], dtype=np.int64)
    return idx if 0 < len(idx) <= budget // 2 else np.zeros(0, dtype=np.int64)


def recall_interval(top: np.ndarray, sampled: np.ndarray, rest: int, k: int, level: float = LEVEL) -> dict:
    """Recall of the true top-``k`` (by |effect|) from the exact |effects| of the ``top`` block and of a
    uniform ``sampled`` draw from the ``rest`` units outside it (the sample included); see the module doc.

    Returns ``recall`` (point), ``low``, ``high`` (the interval), ``missed`` (point estimate of the top-k
    units left unexamined), ``missed_high`` and ``threshold`` (the top-k threshold under the point).
    """
    from scipy.stats import hypergeom

    sampled = np.abs(np.asarray(sampled, dtype=np.float64))
    m, unseen = len(sampled), rest - len(sampled)
    a = np.sort(np.concatenate([np.abs(np.asarray(top, dtype=np.float64)), sampled]))[::-1]
    ranked = np.concatenate([[math.inf], a, [-math.inf]])  # ranked[i] = a_i, the i-th largest examined
    tail = (1 - level) / 2
    xs = range(max(0, k - len(a)), min(k, unseen) + 1)  # the unexamined members of the top k
    accepted, point = [], (math.nan, math.nan, math.inf)
    for x in xs:
        # X = x: the top k are a_1..a_{k-x} and x unexamined units, so of the unexamined units at most x
        # lie above a_{k-x} and at least x above a_{k-x+1}; the sample's counts above each test both.
        hi_t, lo_t = ranked[k - x], ranked[k - x + 1]
        c_hi, c_lo = int((sampled > hi_t).sum()), int((sampled > lo_t).sum())
        ok = True
        if m:
            ok = hypergeom.sf(c_hi - 1, rest, min(rest, x + c_hi), m) > tail  # not too many above a_{k-x}
            ok = ok and (x + c_lo > rest or hypergeom.cdf(c_lo, rest, x + c_lo, m) > tail)  # nor too few
            gap = abs(x - c_hi * unseen / m)
            if gap < point[2]:
                point = (x, float(hi_t), gap)
        if ok:
            accepted.append(x)
    accepted = accepted or list(xs) or [0]  # no hypothesis survives (ties, tiny samples): claim nothing
    missed, thr = point[:2]
    if unseen == 0:
        missed, thr = 0, float(ranked[min(k, len(a))])
    return {
        "recall": 1 - missed / k, "low": 1 - max(accepted) / k, "high": 1 - min(accepted) / k,
        "missed": missed, "missed_high": max(accepted), "threshold": thr,
    }  # fmt: skip


def triage_sweep(
    model: nn.Module,
    data: Data,
    lesions: Sequence[Lesion | Any] | None,
    metric: Metric | None,
    budget: Any,
    *,
    sites: Sequence[Site],
    seed: int = 0,
    top: float = TOP,
    sample: float = SAMPLE,
    level: float = LEVEL,
    batch_size: int = 1000,
    engine: bool = True,
    precision: str = "fp32",
    progress: bool = False,
    spread: dict | None = None,
    cache_bytes: int | None = None,
    exhaust_heads: bool = True,
) -> pd.DataFrame:
    """``sweep(..., triage=budget)``: one row per single-unit lesion (default: every unit of ``sites``,
    deleted with zero). Columns: ``lesion``, ``layer``, ``unit``, ``estimate``, ``source`` (exact or
    estimated), the metric's columns (NaN where estimated) and ``delta_<column>``; ``delta_<main>`` holds
    the estimate where no exact number was computed. ``df.attrs["triage"]`` holds the budget, the top
    block, the sample, k, the recall, its interval and the method. ``exhaust_heads=False`` ranks heads
    by their estimate like any unit (to measure how the recall interval reports a poor estimate)."""
    start = time.perf_counter()
    metric = metric if metric is not None else Classification()
    col = main_column(metric)
    units, raw = _single_units(lesions, sites)
    by_name = {s.name: s for s in sites}
    used = [by_name[n] for n in dict.fromkeys(layer for layer, _ in units)]
    count, seconds = parse_budget(budget, len(units))
    runner = Runner(
        model, data, used, metric=metric, batch_size=batch_size, engine=engine, precision=precision
    )
    r = fitted_replacement(model, runner.data, used, raw)
    est_by_site = estimates(model, runner.data, used, metric, r, batch_size=batch_size, progress=progress)
    est = np.array([est_by_site[layer][j] for layer, j in units])
    every = runner.fit([Lesion(f"{layer}:{j}", r) for layer, j in units])
    spread = spread or {}
    done: dict[int, dict[str, np.ndarray]] = {}
    if seconds is not None:
        count = _timed_count(runner, every, est, seconds - (time.perf_counter() - start), done, spread)

    def picked(c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:  # (.., not yet evaluated)
        always = heads_first(units, used, c) if exhaust_heads else np.zeros(0, dtype=np.int64)
        top_idx, sampled = choose(est, c, sample=sample, seed=seed, always=always)
        todo = [i for i in np.concatenate([top_idx, sampled]).tolist() if i not in done]
        return always, top_idx, sampled, todo

    for _ in range(ROUNDS):  # a time budget: later rounds fill what is left at the rate just measured
        always, top_idx, sampled, todo = picked(count)
        t0 = time.perf_counter()
        with progress_bar(None, "exact lesions", progress, total=len(todo)) as bar:
            values = evaluate(runner, [every[i] for i in todo], bar=bar, **spread) if todo else {}
        for j, i in enumerate(todo):
            done[i] = {key: v[j] for key, v in values.items()}
        if seconds is None or not todo:
            break
        per = (time.perf_counter() - t0) / len(todo)
        grown = _grown(count, len(units), SAFETY * (seconds - (time.perf_counter() - start)), per, picked)
        if grown is None:
            break
        count = grown
    df = _table(every, units, est, done, runner, col)
    k = max(1, math.ceil(top * len(units)))
    exact = df[f"delta_{col}"].to_numpy()
    rest = len(units) - len(top_idx)
    stats = recall_interval(exact[top_idx], exact[sampled], rest, k, level)
    df.attrs["triage"] = {
        "budget": str(budget), "units": len(units), "exact": len(done), "top": len(top_idx),
        "heads_first": len(always),
        "sampled": len(sampled), "seed": seed, "k": k, "top_share": top, "level": level, **stats,
        "seconds": time.perf_counter() - start,
        "bounded": stats["low"] > 0,
        "method": "exact hypergeometric test inverted over the number of top-k units left unexamined, "
        "from the uniform random sample of the units outside the top block (lesion.analyses.triage); "
        "attention heads examined exactly first where they take at most half the budget",
    }  # fmt: skip
    df.attrs["triage"]["claim"] = recall_claim(df.attrs["triage"])
    return df


def recall_claim(tri: dict) -> str:
    """What a triage's recall interval supports, in words: a lower bound where the random sample gives one;
    where it cannot rule out that every top-k unit went unexamined (``low`` = 0: too few sampled units
    for the top share, or a poor estimate), that the recall is not bounded, so a point of 1.0 is never read
    as high recall."""
    k, low, high, level = tri["k"], tri["low"], tri["high"], tri["level"]
    if low > 0:
        return (
            f"recall of the true top {k} >= {low:.2f} at {level:.0%} confidence (interval [{low:.2f}, "
            f"{high:.2f}], point {tri['recall']:.2f})"
        )
    return (
        f"recall of the true top {k} not bounded: the random sample of {tri['sampled']} cannot rule out that "
        f"the top units went unexamined (interval [0.00, {high:.2f}] at {level:.0%}); the point "
        f"{tri['recall']:.2f} is no evidence of high recall: a larger budget or sample share would bound it"
    )


def _single_units(lesions, sites: Sequence[Site]) -> tuple[list[tuple[str, int]], Any]:
    """The (layer, index) of every lesion (each one unit at every position) and their shared replacement."""
    if lesions is None:
        return [(s.name, j) for s in sites for j in range(s.width)], 0.0
    chosen = [as_lesion(les).resolve(list(sites)) for les in lesions]
    if not chosen:
        raise LesionError("triage needs lesions to choose from; got none")
    keys = {replacement_key(les.replacement) for les in chosen}
    if len(keys) > 1:
        raise LesionError("triage ranks units deleted the same way; expected one replacement for all lesions")
    units = []
    for les in chosen:
        items = list(les.units.items())
        if les.units.positional or len(items) != 1 or items[0][1] is None or len(items[0][1]) != 1:
            raise LesionError(
                f"triage estimates single units; lesion {les} is not one unit at every position (expected "
                "specs like 'relu1:3', or lesions=None for every unit of the sites)"
            )
        units.append((items[0][0], items[0][1][0]))
    return units, chosen[0].replacement


def _timed_count(runner, every, est, seconds, done, spread) -> int:
    """The lesions that fit ``seconds``: the top ``PILOT`` by |estimate| are evaluated (kept in ``done``)
    and timed; the rest of the time is filled at that rate."""
    order = np.argsort(-np.abs(est), kind="stable")[: min(PILOT, len(est))].tolist()
    t0 = time.perf_counter()
    values = evaluate(runner, [every[i] for i in order], **spread)
    per = (time.perf_counter() - t0) / len(order)
    for j, i in enumerate(order):
        done[i] = {key: v[j] for key, v in values.items()}
    extra = int(max(0.0, seconds - per * len(order)) / per) if per > 0 else len(est)
    # at least twice the pilot: the top block (half the budget) then holds the pilot's units
    return min(len(est), max(len(order) + extra, 2 * len(order)))


def _grown(count: int, total: int, seconds: float, per: float, picked) -> int | None:
    """The largest count above ``count`` whose lesions not yet evaluated (``picked(c)[3]``) fit
    ``seconds`` at ``per`` seconds each; None where that adds fewer than ``count / 20`` lesions (another
    round would cost more in checks than it adds)."""
    fits = lambda c: len(picked(c)[3]) * per <= seconds  # noqa: E731
    lo, hi = count, total
    while lo < hi:  # the lesions left to evaluate grow with the count (a new sample may replace the old)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo if lo > count and len(picked(lo)[3]) >= max(1, count // 20) else None


def _table(every, units, est, done, runner: Runner, col: str) -> pd.DataFrame:
    intact = columns(runner.intact)
    exact = sorted(done)
    got = columns({key: np.stack([done[i][key] for i in exact]) for key in runner.intact}) if exact else {}
    df = pd.DataFrame({
        "lesion": [str(les) for les in every], "layer": [u[0] for u in units], "unit": [u[1] for u in units],
        "estimate": est, "source": np.where(np.isin(np.arange(len(units)), exact), "exact", "estimated"),
    })  # fmt: skip
    for name in intact:
        full = np.full(len(units), np.nan)
        if exact:
            full[exact] = got[name]
        df[name] = full
    for name in intact:
        df[f"delta_{name}"] = df[name] - intact[name][0]
    main = df[f"delta_{col}"].to_numpy().copy()
    guessed = df["source"].to_numpy() == "estimated"
    main[guessed] = est[guessed]
    df[f"delta_{col}"] = main
    df.attrs.update(intact={k: float(v[0]) for k, v in intact.items()}, n=runner.n, metric=col)
    df.attrs.update(engine_fallbacks=dict(runner.fallbacks), served=dict(runner.served))
    return df


__all__ = ["choose", "heads_first", "parse_budget", "recall_claim", "recall_interval", "triage_sweep"]
