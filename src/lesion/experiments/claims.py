"""Claims with uncertainty: a statistic, its confidence interval, a criterion, and a three-way verdict.

A claim is decided by one or more ``Check``s. Each compares a statistic's 95% interval with a criterion:
the claim **holds** when the whole interval lies on the claimed side, **does not hold** when the whole
interval lies on the other side, and is **inconclusive** when the interval straddles the criterion (the
data cannot tell). A claim with several tests holds when all hold, does not hold when any does not, and
is inconclusive otherwise. Intervals come from a bootstrap with a fixed seed (over networks, and over
random ablation orders within each network) or from the test the claim names (Fisher's z for a
correlation). Where a test is inconclusive, ``needed_n`` estimates how many samples would decide it.

>>> t = make_check("diff", 0.3, (0.1, 0.5), criterion=0.0, direction=">", n=10, unit="networks")
>>> t.verdict
'holds'
>>> make_check("diff", 0.05, (-0.05, 0.15), criterion=0.0, direction=">", n=10, unit="networks").needed_n
82
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

HOLDS, FAILS, OPEN = "holds", "does not hold", "inconclusive"
LEVEL = 0.95
Z = 1.959963984540054  # two-sided 95%
Z_POWER = 0.8416212335729143  # 80% power
BOOT = 1000  # bootstrap resamples
SEED = 0  # every bootstrap of every claim draws from this seed: the same tables give the same intervals
MAX_N = 10_000  # power estimates are capped here: beyond it, read 'more than 10,000'


@dataclass(frozen=True)
class Check:
    """One comparison: ``estimate`` (interval ``ci_low..ci_high``) against ``criterion``.

    ``direction``: ">" (claimed: statistic above criterion), "<" (below), or "within" (claimed: |statistic|
    below criterion; the interval is of the statistic itself). ``n``: how many ``unit``s it rests on.
    ``needed_n``: for an inconclusive test, about how many ``unit``s would make the interval clear the
    criterion if the estimate stayed the same (None when decided, or when the estimate sits on it).
    """

    name: str
    estimate: float
    ci_low: float
    ci_high: float
    criterion: float
    direction: str
    n: int
    unit: str
    method: str
    verdict: str
    needed_n: int | None

    def as_dict(self) -> dict:
        return {k: _plain(v) for k, v in asdict(self).items()}


def verdict(ci_low: float, ci_high: float, criterion: float, direction: str) -> str:
    """Where the interval lies relative to the criterion.

    >>> verdict(0.1, 0.3, 0.0, ">"), verdict(-0.3, -0.1, 0.0, ">"), verdict(-0.1, 0.2, 0.0, ">")
    ('holds', 'does not hold', 'inconclusive')
    >>> verdict(-0.2, 0.3, 0.5, "within"), verdict(0.6, 0.9, 0.5, "within"), verdict(0.3, 0.6, 0.5, "within")
    ('holds', 'does not hold', 'inconclusive')
    """
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return OPEN
    if direction == ">":
        return HOLDS if ci_low > criterion else FAILS if ci_high <= criterion else OPEN
    if direction == "<":
        return HOLDS if ci_high < criterion else FAILS if ci_low >= criterion else OPEN
    if direction == "within":
        if -criterion < ci_low and ci_high < criterion:
            return HOLDS
        return FAILS if ci_low >= criterion or ci_high <= -criterion else OPEN
    raise ValueError(f"direction={direction!r}; expected '>', '<' or 'within'")


def combine(verdicts: Sequence[str]) -> str:
    """All hold: holds; any does not hold: does not hold; otherwise inconclusive.

    >>> combine(["holds", "inconclusive"]), combine(["inconclusive", "does not hold"]), combine(["holds"])
    ('inconclusive', 'does not hold', 'holds')
    """
    if any(v == FAILS for v in verdicts):
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else OPEN


def needed_n(
    estimate: float, ci: tuple[float, float], criterion: float, direction: str, n: int
) -> int | None:
    """Samples needed for a 95% interval to clear ``criterion`` with 80% power, if the effect stays the same.

    The interval's half-width shrinks as 1/sqrt(n): n' = n * ((z_0.975 + z_0.8) * se / |estimate - c|)^2,
    se the half-width / 1.96. None where the estimate sits on the criterion (no finite n decides it).
    """
    se = (ci[1] - ci[0]) / (2 * Z)
    gap = abs(abs(estimate) - criterion) if direction == "within" else abs(estimate - criterion)
    if not (np.isfinite(se) and np.isfinite(gap)) or gap <= 1e-12 or se <= 0:
        return None
    return int(min(MAX_N, math.ceil(n * ((Z + Z_POWER) * se / gap) ** 2)))


def make_check(
    name: str,
    estimate: float,
    ci: tuple[float, float],
    *,
    criterion: float,
    direction: str,
    n: int,
    unit: str,
    method: str | None = None,
) -> Check:
    """A ``Check`` with its verdict and, when inconclusive, its power estimate."""
    lo, hi = float(ci[0]), float(ci[1])
    method = method or f"bootstrap over {unit} ({BOOT:,} resamples, seed {SEED})"
    v = verdict(lo, hi, criterion, direction)
    need = needed_n(estimate, (lo, hi), criterion, direction, n) if v == OPEN else None
    return Check(name, float(estimate), lo, hi, float(criterion), direction, int(n), unit, method, v, need)


# ---- intervals


def percentile(samples, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap ``samples`` (non-finite resamples dropped)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return math.nan, math.nan
    a = (1 - level) / 2
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))


def bootstrap(
    groups: Mapping[object, Sequence[Sequence[float]]],
    stat: Callable[..., float],
    *,
    attrs: Mapping[object, Sequence[float]] | None = None,
    boot: int = BOOT,
    seed: int = SEED,
) -> tuple[float, tuple[float, float]]:
    """A two-level bootstrap: networks within groups, then repeats (random orders) within each network.

    ``groups``: {group: [values of network 1 (one per repeat), values of network 2, ...]}. Each resample
    draws the networks of every group with replacement and, for each drawn network, its repeats with
    replacement (a group with a single measurement gives no interval: NaN); ``stat`` receives
    {group: array of per-network means} (and, with ``attrs`` {group:
    one number per network}, those numbers of the drawn networks as a second argument) and returns one
    number. Returns the statistic on the data as measured and its 95% percentile interval.

    >>> g = {"a": [[1.0, 1.0], [1.0, 1.0]], "b": [[0.0, 0.0]]}
    >>> bootstrap(g, lambda m: m["a"].mean() - m["b"].mean(), boot=50)
    (1.0, (1.0, 1.0))
    """
    data = {k: [np.asarray(v, dtype=np.float64) for v in nets] for k, nets in groups.items()}
    if any(len(nets) == 1 and nets[0].size == 1 for nets in data.values()):
        means = {k: np.array([v.mean() for v in nets]) for k, nets in data.items()}
        point = stat(means) if attrs is None else stat(means, {k: np.asarray(v) for k, v in attrs.items()})
        return float(point), (math.nan, math.nan)  # one measurement in a group: no variability to resample
    extra = None if attrs is None else {k: np.asarray(v, dtype=np.float64) for k, v in attrs.items()}
    means = {k: np.array([v.mean() for v in nets]) for k, nets in data.items()}
    point = stat(means) if extra is None else stat(means, extra)
    rng = np.random.default_rng(seed)
    out = np.empty(boot)
    for b in range(boot):
        drawn, drawn_attrs = {}, {}
        for k, nets in data.items():
            pick = rng.integers(0, len(nets), len(nets))
            drawn[k] = np.array([nets[i][rng.integers(0, len(nets[i]), len(nets[i]))].mean() for i in pick])
            if extra is not None:
                drawn_attrs[k] = extra[k][pick]
        out[b] = stat(drawn) if extra is None else stat(drawn, drawn_attrs)
    return float(point), percentile(out)


def bootstrap_rows(
    arrays: Mapping[object, np.ndarray],
    stat: Callable[[dict[object, np.ndarray]], float],
    *,
    boot: int = BOOT,
    seed: int = SEED,
) -> tuple[float, tuple[float, float]]:
    """Bootstrap over the rows of each array independently (units, random orders, repeated curves).

    ``arrays``: {key: (rows, ...) array}; ``stat`` receives {key: the mean over rows} of the data as
    measured, then of each resample (rows drawn with replacement, key by key).

    >>> bootstrap_rows({"a": np.array([[1.0, 2.0], [1.0, 2.0]])}, lambda m: m["a"][1] - m["a"][0])
    (1.0, (1.0, 1.0))
    """
    data = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    point = stat({k: v.mean(0) for k, v in data.items()})
    rng = np.random.default_rng(seed)
    out = [
        stat({k: v[rng.integers(0, len(v), len(v))].mean(0) for k, v in data.items()}) for _ in range(boot)
    ]
    return float(point), percentile(out)


def bootstrap_medians(
    values: Mapping[object, np.ndarray], stat: Callable[[dict[object, float]], float], *, seed: int = SEED
) -> tuple[float, tuple[float, float]]:
    """Bootstrap of a function of per-group medians (units resampled within each group)."""
    data = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    rng = np.random.default_rng(seed)
    resampled = {k: np.median(v[rng.integers(0, len(v), (BOOT, len(v)))], axis=1) for k, v in data.items()}
    out = [stat({k: r[b] for k, r in resampled.items()}) for b in range(BOOT)]
    return float(stat({k: float(np.median(v)) for k, v in data.items()})), percentile(out)


def fisher_ci(r: float, n: int, *, spearman: bool = False) -> tuple[float, float]:
    """95% interval of a correlation by Fisher's z (Spearman: the Fieller et al. SE, 1.06 / sqrt(n - 3)).

    >>> [round(v, 3) for v in fisher_ci(0.5, 28)]
    [0.156, 0.736]
    """
    if n <= 3 or not np.isfinite(r):
        return math.nan, math.nan
    z, se = math.atanh(max(min(r, 0.999999), -0.999999)), (1.06 if spearman else 1.0) / math.sqrt(n - 3)
    return math.tanh(z - Z * se), math.tanh(z + Z * se)


def correlation_check(
    name: str, r: float, n: int, *, criterion: float, direction: str, unit: str, spearman: bool = False
) -> Check:
    """A correlation against a criterion, its interval by Fisher's z; "within" tests |r| < criterion."""
    ci = fisher_ci(r, n, spearman=spearman)
    return make_check(
        name,
        r,
        ci,
        criterion=criterion,
        direction=direction,
        n=n,
        unit=unit,
        method="Fisher z interval" + (" (Spearman SE)" if spearman else ""),
    )


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
