"""Claims with uncertainty: verdicts, intervals and power estimates with answers known in advance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lesion.experiments.claims import (
    FAILS,
    HOLDS,
    OPEN,
    bootstrap,
    bootstrap_medians,
    bootstrap_rows,
    combine,
    correlation_check,
    fisher_ci,
    make_check,
    needed_n,
    percentile,
    verdict,
)
from lesion.experiments.figures.common import claim


@pytest.mark.parametrize(
    ("lo", "hi", "crit", "direction", "want"),
    [
        (0.1, 0.2, 0.0, ">", HOLDS),
        (-0.2, -0.1, 0.0, ">", FAILS),
        (-0.1, 0.1, 0.0, ">", OPEN),
        (-0.9, -0.85, -0.8, "<", HOLDS),
        (-0.79, -0.5, -0.8, "<", FAILS),
        (-0.9, -0.7, -0.8, "<", OPEN),
        (-0.3, 0.4, 0.5, "within", HOLDS),
        (-0.9, -0.6, 0.5, "within", FAILS),
        (0.4, 0.6, 0.5, "within", OPEN),
        (math.nan, 0.3, 0.0, ">", OPEN),
    ],
)
def test_verdict_is_where_the_interval_lies(lo, hi, crit, direction, want):
    assert verdict(lo, hi, crit, direction) == want


def test_combining_verdicts():
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, OPEN]) == OPEN
    assert combine([OPEN, FAILS, HOLDS]) == FAILS
    assert combine([]) == OPEN


def test_interval_of_a_known_sample():
    assert percentile(np.arange(1001) / 1000) == pytest.approx((0.025, 0.975))
    assert all(math.isnan(v) for v in percentile([math.nan, math.inf]))


def test_bootstrap_of_a_mean_matches_the_normal_interval():
    """Mean of 400 draws of N(0, 1): the percentile interval is about mean +- 1.96 / 20."""
    x = np.random.default_rng(1).normal(size=400)
    est, (lo, hi) = bootstrap_rows({"x": x}, lambda m: float(m["x"]))
    assert est == pytest.approx(x.mean())
    assert lo == pytest.approx(x.mean() - 1.96 / 20, abs=0.02)
    assert hi == pytest.approx(x.mean() + 1.96 / 20, abs=0.02)


def test_bootstrap_is_seeded_and_reproducible():
    rng = np.random.default_rng(0)
    g = {k: [rng.random(5) for _ in range(8)] for k in "ab"}

    def diff(m):
        return m["a"].mean() - m["b"].mean()

    assert bootstrap(g, diff) == bootstrap(g, diff)
    assert bootstrap(g, diff, seed=1) != bootstrap(g, diff)


def test_two_level_bootstrap_sees_network_and_order_noise():
    """Identical networks with noisy orders, or noisy networks with identical orders: both give width."""
    nets_same = {"a": [[0.0, 1.0]] * 5}
    nets_differ = {"a": [[v, v] for v in (0.0, 0.25, 0.5, 0.75, 1.0)]}
    for g in (nets_same, nets_differ):
        est, (lo, hi) = bootstrap(g, lambda m: m["a"].mean())
        assert est == pytest.approx(0.5) and lo < 0.45 < 0.55 < hi
    exact = {"a": [[0.5, 0.5]] * 5}
    assert bootstrap(exact, lambda m: m["a"].mean()) == (0.5, (0.5, 0.5))


def test_a_group_of_one_measurement_gives_no_interval():
    est, (lo, hi) = bootstrap({"a": [[1.0]], "b": [[0.2], [0.3]]}, lambda m: m["a"].mean() - m["b"].mean())
    assert est == pytest.approx(0.75) and math.isnan(lo) and math.isnan(hi)
    assert make_check("x", est, (lo, hi), criterion=0, direction=">", n=3, unit="nets").verdict == OPEN


def test_attrs_follow_the_networks_drawn():
    """The best network by attribute has the larger value in every resample, so the gap never flips."""
    g = {"all": [[1.0, 1.0], [0.0, 0.0], [0.5, 0.5]]}
    est, (lo, hi) = bootstrap(
        g,
        lambda m, a: m["all"][np.argmax(a["all"])] - m["all"][np.argmin(a["all"])],
        attrs={"all": [3, 1, 2]},
    )
    assert est == 1.0 and 0.0 <= lo <= hi <= 1.0


def test_medians_bootstrap():
    rng = np.random.default_rng(0)
    est, (lo, hi) = bootstrap_medians(
        {"a": rng.normal(1.0, 1, 500), "b": rng.normal(0.0, 1, 500)}, lambda m: m["a"] - m["b"]
    )
    assert lo < est < hi and lo > 0.7 and hi < 1.3


def test_fisher_interval_and_correlation_check():
    lo, hi = fisher_ci(0.0, 103)
    assert lo == pytest.approx(-np.tanh(1.96 / 10), abs=1e-3) and hi == pytest.approx(-lo)
    assert all(math.isnan(v) for v in fisher_ci(0.5, 3))
    assert correlation_check("r", -0.9, 12, criterion=0, direction="<", unit="x").verdict == HOLDS
    assert correlation_check("r", 0.05, 12, criterion=0, direction=">", unit="x").verdict == OPEN
    assert correlation_check("r", 0.1, 239, criterion=0.5, direction="within", unit="units").verdict == HOLDS
    assert correlation_check("r", -0.45, 40, criterion=0.5, direction="within", unit="u").verdict == OPEN


def test_power_estimate():
    # half-width 0.1 (se 0.051) around 0.05 with n = 10: n' = 10 * (2.80 * 0.051 / 0.05)^2 = 82
    assert needed_n(0.05, (-0.05, 0.15), 0.0, ">", 10) == 82
    # four times the samples halve the interval: an effect at half the old half-width needs n * ~2
    assert needed_n(0.1, (0.0, 0.2), 0.0, ">", 100) == pytest.approx(204, abs=1)
    assert needed_n(0.0, (-0.1, 0.1), 0.0, ">", 10) is None  # sits on the criterion
    assert needed_n(0.45, (0.3, 0.6), 0.5, "within", 40) > 40
    decided = make_check("d", 0.3, (0.2, 0.4), criterion=0, direction=">", n=10, unit="networks")
    assert decided.needed_n is None
    open_ = make_check("d", 0.05, (-0.05, 0.15), criterion=0, direction=">", n=10, unit="networks")
    assert open_.verdict == OPEN and open_.needed_n == 82


def test_claim_row_carries_interval_verdict_and_n():
    a = make_check("d", 0.002, (-0.01, 0.014), criterion=0, direction=">", n=12, unit="networks")
    b = make_check("e", 0.3, (0.2, 0.4), criterion=0, direction=">", n=12, unit="networks")
    row = claim("F3", "c", "p", "m", {"x": np.float64(1.0)}, [a, b])
    assert row["verdict"] == OPEN and row["holds"] is False
    assert (row["ci_low"], row["ci_high"], row["n"]) == (-0.01, 0.014, 12)
    assert row["needed_n"] == a.needed_n and len(row["tests"]) == 2
    assert claim("F1", "c", "p", "m", {}, [b])["verdict"] == HOLDS
