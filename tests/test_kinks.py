"""The ReLU-head shortcut (``lesion.engine.kinks``): single-unit lesions before a ReLU and a narrow last
Linear as Jacobians plus exact corrections at the pre-activations that cross zero."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lesion
from lesion.analyses.sweep import evaluate_lesions
from lesion.core.lesions import Lesion
from lesion.core.replacements import as_replacement
from lesion.core.runner import Runner
from lesion.core.units import Unit
from lesion.engine import Plan
from lesion.engine import kinks as K
from lesion.engine.dispatch import engine_of


def dense(z, a, w, v, b):
    """Every lesion by hand: z' = z - a w_j, then V relu(z') + b; (k * batch, c) lesion-major."""
    moved = z.unsqueeze(0) - a.T.unsqueeze(2) * w.T.unsqueeze(1)  # (k, batch, n)
    crossed = int(((moved > 0) != (z > 0).unsqueeze(0)).sum())
    return F.linear(torch.relu(moved), v, b).flatten(0, 1), crossed


def head_of(n: int, c: int, k: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inner, head = nn.Linear(k, n).to(dtype), nn.Linear(n, c).to(dtype)
    with torch.no_grad():
        for p in (*inner.parameters(), *head.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.3)
    return K.ReluHead(inner, head), g


@pytest.mark.parametrize("signed", [False, True])
def test_lesions_equal_the_dense_computation_and_correct_every_crossing(signed, monkeypatch):
    monkeypatch.setattr(K, "MAX_CANDIDATES", 1.0)  # never decline: many crossings on purpose
    rh, g = head_of(n=40, c=5, k=23)
    z = torch.randn(300, 40, generator=g, dtype=torch.float64)
    a = torch.rand(300, 23, generator=g, dtype=torch.float64) * 2
    a[a < 0.6] = 0  # examples where the unit is off: nothing moves
    if signed:
        a = a - 0.5  # a mean replacement: a unit can add less than its replacement
    units = torch.arange(23)
    w, v, b = rh.inner.weight, rh.head.weight, rh.head.bias
    out = F.linear(torch.relu(z), v, b)
    got = rh.lesions(z, out, a, units, piece=1000)
    assert got is not None
    values, kinks = got
    want, crossed = dense(z, a, w, v, b)
    assert crossed > 100  # the test data has many crossings
    assert kinks == crossed  # every crossing found and corrected, none invented
    torch.testing.assert_close(values, want, rtol=1e-10, atol=1e-10)
    # the mask-held answer alone (no corrections) is wrong on this data
    held = torch.relu(z).unsqueeze(0) - (z > 0).unsqueeze(0) * a.T.unsqueeze(2) * w.T.unsqueeze(1)
    assert not torch.allclose(F.linear(held, v, b).flatten(0, 1), want, atol=1e-6)


def test_a_subset_of_lesions_reads_their_own_columns():
    rh, g = head_of(n=30, c=4, k=12)
    z = torch.randn(50, 30, generator=g, dtype=torch.float64)
    units = torch.tensor([7, 2, 11])
    a = torch.rand(50, 3, generator=g, dtype=torch.float64)
    v, b = rh.head.weight, rh.head.bias
    got = rh.lesions(z, F.linear(torch.relu(z), v, b), a, units, piece=64)
    assert got is not None
    want, _ = dense(z, a, rh.inner.weight[:, units], v, b)
    torch.testing.assert_close(got[0], want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_candidates_contain_every_crossing_at_extreme_scales(seed):
    """float32 inputs over 40 orders of magnitude: terms of the P-norm underflow and overflow without
    the scaling; every (example, unit) that crosses zero (decided in float64) is still a candidate."""
    g = torch.Generator().manual_seed(seed)
    n, k, batch = 32, 48, 64
    a = 10 ** (torch.rand(batch, k, generator=g) * 40 - 20) * (torch.rand(batch, k, generator=g) > 0.3)
    w = torch.randn(n, k, generator=g) * 10 ** (torch.rand(n, k, generator=g) * 8 - 6)
    # pre-activations at the size of a typical move, so that crossings are common but not universal
    typical = (a.double().unsqueeze(1) * w.double().abs().unsqueeze(0)).amax(2)  # (batch, n)
    z = (torch.randn(batch, n, generator=g).double() * typical * 3).float()
    monkey = K.MAX_CANDIDATES
    K.MAX_CANDIDATES = 1.0
    try:
        near = K._candidates(z, a, w)
    finally:
        K.MAX_CANDIDATES = monkey
    assert near is not None
    cand = torch.zeros(batch, n, dtype=torch.bool)
    cand[near] = True
    moved = z.double().unsqueeze(2) - a.double().unsqueeze(1) * w.double().unsqueeze(0)  # (batch, n, k)
    crossing = ((moved > 0) != (z.double() > 0).unsqueeze(2)).any(2)
    assert 0 < int(crossing.sum()) < crossing.numel()
    assert bool(cand[crossing].all())  # never misses
    assert int(cand.sum()) <= 3 * int(crossing.sum())  # and is not everything


def test_declines_where_most_pairs_are_candidates_and_on_non_finite_input():
    rh, g = head_of(n=20, c=3, k=8)
    z = torch.randn(40, 20, generator=g, dtype=torch.float64) * 1e-6  # everything sits at the kink
    a = torch.rand(40, 8, generator=g, dtype=torch.float64)
    out = F.linear(torch.relu(z), rh.head.weight, rh.head.bias)
    assert rh.lesions(z, out, a, torch.arange(8), piece=100) is None
    z = torch.randn(40, 20, generator=g, dtype=torch.float64)
    a[3, 2] = float("inf")
    assert rh.lesions(z, out, a, torch.arange(8), piece=100) is None


class Functional(nn.Module):
    def __init__(self, how: str, out: int = 3, after=None):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 6), nn.Linear(6, 7), nn.Linear(7, out)
        self.act1 = nn.ReLU()  # the site
        self.how, self.after = how, after

    def forward(self, x):
        h = self.act1(self.fc1(x))
        z = self.fc2(h)
        h2 = {"fn": F.relu, "torch": torch.relu, "method": lambda t: t.relu(), "tanh": torch.tanh}[self.how](
            z
        )
        y = self.fc3(h2)
        return y if self.after is None else self.after(y)


def head_after(model, site_index=0):
    sites = lesion.find_sites(model, torch.randn(2, 5))
    plan = Plan(model, {s.name: s for s in sites})
    name = sites[site_index].name
    cons = plan.consumer(name, flat=True)
    return K.relu_head(plan, cons.node) if cons else None


@pytest.mark.parametrize("how", ["fn", "torch", "method"])
def test_relu_head_found_for_every_way_of_writing_relu(how):
    rh = head_after(Functional(how).eval())
    assert rh is not None and rh.head.out_features == 3


@pytest.mark.parametrize(
    "model",
    [
        Functional("tanh"),  # not a ReLU
        Functional("fn", out=K.MAX_OUT + 1),  # a wide last layer: the Jacobians cost more than they save
        Functional("fn", after=lambda y: torch.log_softmax(y, -1)),  # the Linear is not the output
        Functional("fn", after=lambda y: (y, y)),  # an output tuple
    ],
)
def test_relu_head_absent_for_anything_else(model):
    assert head_after(model.eval()) is None


def test_relu_head_through_dropout_not_other_layers_and_absent_at_the_last_site():
    drop = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 7), nn.ReLU(), nn.Dropout(), nn.Identity())
    assert head_after(nn.Sequential(*drop, nn.Linear(7, 3)).eval()) is not None  # eval: identities
    norm = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 7), nn.ReLU(), nn.LayerNorm(7))
    assert head_after(nn.Sequential(*norm, nn.Linear(7, 3)).eval()) is None
    mlp = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3))
    assert head_after(mlp.eval()) is not None
    assert head_after(mlp.eval(), site_index=1) is None  # its consumer is the output itself


@pytest.mark.parametrize("value", [0.0, "mean"])
@pytest.mark.parametrize("share", [K.MAX_CANDIDATES, 1.0])
def test_engine_sweep_through_the_shortcut_equals_the_hook_path(value, share, monkeypatch):
    monkeypatch.setattr(K, "MAX_CANDIDATES", share)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 4)).eval()
    with torch.no_grad():
        model[2].bias += 0.5  # pre-activations away from zero: a realistic few percent of candidates
    x, y = torch.randn(300, 20), torch.randint(0, 4, (300,))
    sites = lesion.find_sites(model, x[:2])
    runner = Runner(model, (x, y), sites, batch_size=128)
    stats = lesion.collect_stats(model, (x, y), sites, histograms=False) if value == "mean" else None
    lesions = runner.fit(
        [Lesion([Unit(s.name, i)], as_replacement(value, stats)) for s in sites for i in range(s.width)]
    )
    fast = evaluate_lesions(runner, lesions)
    eng = engine_of(runner)
    assert runner.fallbacks == {}
    assert eng.kinks > 0 and eng.declined == 0  # the first layer's 48 lesions took the shortcut
    slow = Runner(model, (x, y), sites, engine=False).run(lesions)
    np.testing.assert_allclose(fast["loss"], slow["loss"], atol=1e-6)
    np.testing.assert_array_equal(fast["confusion"], slow["confusion"])


def test_engine_falls_back_to_the_dense_step_where_the_shortcut_declines():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    with torch.no_grad():
        model[2].weight *= 1e-3  # every pre-activation sits near its kink (bias only): all are candidates
        model[2].bias.mul_(1e-4)
    x, y = torch.randn(100, 6), torch.randint(0, 3, (100,))
    sites = lesion.find_sites(model, x[:2])
    runner = Runner(model, (x, y), sites, batch_size=50)
    lesions = runner.fit([Lesion([Unit(s.name, i)]) for s in sites for i in range(s.width)])
    fast = evaluate_lesions(runner, lesions)
    assert engine_of(runner).declined > 0 and runner.fallbacks == {}
    slow = Runner(model, (x, y), sites, engine=False).run(lesions)
    np.testing.assert_allclose(fast["loss"], slow["loss"], atol=1e-6)


def test_dead_units_cost_nothing_on_the_shortcut_and_keep_the_intact_values(monkeypatch):
    monkeypatch.setattr(K, "MAX_CANDIDATES", 1.0)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[0].bias[[3, 7, 8]] = -100.0  # never fire
    x, y = torch.randn(200, 10), torch.randint(0, 3, (200,))
    sites = lesion.find_sites(model, x[:2])
    units = [Lesion([Unit(sites[0].name, i)]) for i in range(24)]  # the first layer: the shortcut's
    runner = Runner(model, (x, y), sites, batch_size=100)
    fast = evaluate_lesions(runner, runner.fit(units))
    eng = engine_of(runner)
    assert runner.fallbacks == {} and eng.kinks > 0 and eng.declined == 0
    assert eng.examples - eng.computed == 3 * 200  # exactly the dead units' pairs were left out
    slow = Runner(model, (x, y), sites, engine=False).run(units)
    np.testing.assert_allclose(fast["loss"], slow["loss"], atol=1e-6)
    intact = float(runner.intact["loss"][0])
    for i in (3, 7, 8):
        assert fast["loss"][i] == pytest.approx(intact, abs=1e-7)


def test_a_classifier_with_dropout_before_its_last_layer_takes_both_shortcuts_exactly(monkeypatch):
    """Dropout between the last ReLU and the classifier (identity in eval mode, where every sweep runs,
    even of a model left in training mode): single units through the kink shortcut, cumulative orders
    through the lean head loop, both equal to the hook path."""
    from lesion.engine.dispatch import cumulative, first_k

    torch.manual_seed(2)
    layers = [nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Dropout(0.5), nn.Linear(24, 4)]
    model = nn.Sequential(*layers).train()  # the sweep puts it in eval mode
    with torch.no_grad():
        model[2].bias += 0.5
    x, y = torch.randn(200, 20), torch.randint(0, 4, (200,))
    sites = lesion.find_sites(model, x[:2])
    runner = Runner(model, (x, y), sites, batch_size=100)
    lesions = runner.fit([Lesion([Unit(s.name, i)]) for s in sites for i in range(s.width)])
    fast = evaluate_lesions(runner, lesions)
    assert runner.fallbacks == {} and engine_of(runner).kinks > 0
    slow = Runner(model, (x, y), sites, engine=False).run(lesions)
    np.testing.assert_allclose(fast["loss"], slow["loss"], atol=1e-6)
    np.testing.assert_array_equal(fast["confusion"], slow["confusion"])
    from lesion.engine import cumulative as curves
    from lesion.engine import headcurve

    served = []
    monkeypatch.setattr(curves, "run_chunk", lambda *a: served.append(headcurve.run_chunk(*a)) or served[-1])
    seq = [lesions[i] for i in np.random.default_rng(0).permutation(len(lesions))]
    counts = list(range(len(seq) + 1))
    got = cumulative(runner, seq, counts)
    want = Runner(model, (x, y), sites, engine=False).run([first_k(seq, k) for k in counts])
    assert runner.fallbacks == {} and served == [True, True]  # both chunks on the lean loop
    np.testing.assert_allclose(got["loss"], want["loss"], atol=1e-6)
    np.testing.assert_array_equal(got["confusion"], want["confusion"])
    assert model.training  # restored
