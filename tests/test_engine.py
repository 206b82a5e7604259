"""The fast engine: where it applies its shortcuts, where it falls back, and that it stays exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lesion
from lesion.analyses.sweep import evaluate_lesions
from lesion.core.lesions import Lesion
from lesion.core.replacements import as_replacement
from lesion.core.runner import Runner
from lesion.core.units import Unit
from lesion.engine import Engine, Plan, Unsupported
from lesion.engine.dispatch import cumulative, engine_of, first_k
from tests.test_reference import make


def consumers(model, x):
    sites = lesion.find_sites(model, x[:2])
    eng = Engine(model, [(x, torch.zeros(len(x), dtype=torch.long))], sites)
    return {k: (v.node.target if v else None) for k, v in eng.consumers.items()}


def test_consumers_found_through_eval_identities():
    mlp = nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)
    )
    assert consumers(mlp.eval(), torch.randn(3, 4)) == {"1": "3", "4": "5"}
    conv = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 25, 3),
    )  # fmt: skip
    # a conv reads relu "2" directly; "4" is read through Flatten, so no shortcut there
    assert consumers(conv.eval(), torch.randn(2, 1, 7, 7)) == {"2": "3", "4": None}


def test_residual_site_with_two_readers_has_no_shortcut():
    model, x, _ = make("residual", 0)
    assert consumers(model, x) == {"act0": None, "act1": "b2", "act2": None}  # act2 feeds the add


def all_units(sites):
    return [Unit(s.name, i) for s in sites for i in range(s.width)]


@pytest.mark.parametrize("kind", ["mlp", "conv", "residual"])
@pytest.mark.parametrize("value", [0.0, 0.7, "mean"])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000), chunk=st.sampled_from([7, 64, 1024]))
def test_engine_equals_reference(kind, value, seed, chunk):
    model, x, y = make(kind, seed, n=50)
    sites = lesion.find_sites(model, x[:2])
    ev = Runner(model, (x, y), sites, batch_size=chunk)
    stats = lesion.collect_stats(model, (x, y), sites, histograms=False) if value == "mean" else None
    units = all_units(sites)
    replacement = as_replacement(value, stats)
    lesions = ev.fit([Lesion([u], replacement) for u in units])
    fast = evaluate_lesions(ev, lesions)
    assert ev.fallbacks == {}
    ref = ev.run(lesions)  # the slow path: one full pass per lesion, with hooks
    np.testing.assert_allclose(fast["loss"], ref["loss"], atol=1e-5)
    np.testing.assert_array_equal(fast["confusion"], ref["confusion"])
    seq = [lesions[i] for i in np.random.default_rng(seed).permutation(len(units))]
    counts = [0, 1, 2, len(seq) // 2, len(seq)]
    got = cumulative(ev, seq, counts)
    want = ev.run([first_k(seq, k) for k in counts])
    np.testing.assert_allclose(got["loss"], want["loss"], atol=1e-5)
    np.testing.assert_allclose(got["accuracy"], want["accuracy"], atol=1e-5)
    assert ev.fallbacks == {}


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)

    def forward(self, x):
        h = self.act(self.fc(x))
        if h.sum() > 0:  # control flow on data: cannot be traced
            h = h * 2
        return self.out(h)


class FixedBatch(nn.Module):
    """Reads the batch size before the site and reshapes with it after: expansion would be wrong."""

    def __init__(self):
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x):
        b = x.shape[0]
        h = self.act(self.fc(x)).view(b, 2, 3)
        return self.out(h.reshape(b, 6))


@pytest.mark.parametrize("model_cls", [DataDependent, FixedBatch])
def test_fallback_keeps_results_exact(model_cls):
    torch.manual_seed(0)
    model = model_cls().eval()
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    table = lesion.unit_table(model, (x, y))
    assert table.attrs["engine_fallbacks"]  # the engine said why it stepped aside
    slow = lesion.unit_table(model, (x, y), engine=False)
    np.testing.assert_allclose(table["delta_loss"], slow["delta_loss"], atol=1e-6)
    curves = lesion.ablation_curves(model, (x, y), repeats=2)
    slow_curves = lesion.ablation_curves(model, (x, y), repeats=2, engine=False)
    np.testing.assert_allclose(curves["loss"], slow_curves["loss"], atol=1e-6)


def test_untraceable_model_is_reported():
    with pytest.raises(Unsupported, match="cannot be traced"):
        Plan(DataDependent(), ["act"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    model, x, y = make("conv", 5, n=80)
    cpu = lesion.unit_table(model, (x, y))
    gpu = lesion.unit_table(model.cuda(), (x.cuda(), y.cuda()))
    np.testing.assert_allclose(gpu["delta_loss"], cpu["delta_loss"], atol=1e-4)
    np.testing.assert_allclose(gpu["selectivity"], cpu["selectivity"], atol=1e-5)
    curves_cpu = lesion.ablation_curves(model.cpu(), (x, y), repeats=2)
    curves_gpu = lesion.ablation_curves(model.cuda(), (x.cuda(), y.cuda()), repeats=2)
    np.testing.assert_allclose(curves_gpu["loss"], curves_cpu["loss"], atol=1e-4)


def test_bf16_is_close_and_reports_its_deviation():
    model, x, y = make("mlp", 9, n=200)
    sites = lesion.find_sites(model, x[:2])
    units = all_units(sites)
    runner = Runner(model, (x, y), sites)
    fp32 = evaluate_lesions(runner, runner.fit([Lesion([u]) for u in units]))
    ev = Runner(model, (x, y), sites, precision="bf16")
    bf16 = evaluate_lesions(ev, ev.fit([Lesion([u]) for u in units]))
    assert ev.fallbacks == {} and 0 < ev.deviation["loss"] < 0.05
    np.testing.assert_allclose(bf16["loss"], fp32["loss"], atol=0.05)
    with pytest.raises(lesion.LesionError, match="unknown precision 'fp8'"):
        Runner(model, (x, y), sites, precision="fp8")


def test_streamed_loader_and_one_shot_iterator_give_the_same_table():
    model, x, y = make("conv", 4, n=90)
    base = lesion.unit_table(model, (x, y))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    streamed = lesion.unit_table(model, loader)
    one_shot = lesion.unit_table(model, iter([(x[:50], y[:50]), (x[50:], y[50:])]))
    for other in (streamed, one_shot):
        np.testing.assert_allclose(other["delta_loss"], base["delta_loss"], atol=1e-5)
        np.testing.assert_allclose(other["selectivity"], base["selectivity"], atol=1e-6)


def test_exact_sparsity_skips_the_examples_a_deletion_cannot_change():
    """Zeroing unit j changes nothing for an example whose unit j is already 0 after the ReLU: those
    (lesion, example) pairs keep the intact output and skip the later layers; the table is unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x, y = torch.randn(300, 6), torch.randint(0, 4, (300,))
    sites = lesion.find_sites(model, x[:2])
    units = [f"{s.name}:{j}" for s in sites for j in range(32)] + ["3:5"]
    runner = Runner(model, [(x, y)], sites)
    engine_of(runner).sparse = True
    fast = evaluate_lesions(runner, runner.fit([Lesion(u) for u in units]))
    eng = engine_of(runner)
    skipped = 1 - eng.computed / eng.examples
    assert 0.3 < skipped < 1  # about half the ReLU outputs are exactly 0
    assert runner.skipped() == skipped
    dense = Runner(model, [(x, y)], sites)
    full = evaluate_lesions(dense, dense.fit([Lesion(u) for u in units]))
    slow = Runner(model, [(x, y)], sites, engine=False).run([Lesion(u) for u in units])
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(fast[key], full[key], atol=1e-6)
        np.testing.assert_allclose(fast[key], slow[key], atol=1e-6)
    with torch.no_grad():  # the dense path still skips units dead on every example (nothing else)
        h1 = model[1](model[0](x))
        dead = int((h1 == 0).all(0).sum() + (model[3](model[2](h1)) == 0).all(0).sum())
    assert engine_of(dense).computed == engine_of(dense).examples - 300 * dead


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("value", [0.0, "mean"])
def test_random_orders_side_by_side_equal_the_hook_path(kind, value, monkeypatch):
    """Several random orders run together (one set of kernels per step for all) give each order's own
    curve: equal to the hook path at every count, for linear (rank-1) and conv (re-run) consumers."""
    model, x, y = make(kind, seed=3)
    data = (x, y)
    monkeypatch.setattr(Engine, "side_by_side", True, raising=False)
    fast = lesion.ablation_curves(model, data, repeats=4, replacement=value, seed=1)
    slow = lesion.ablation_curves(model, data, repeats=4, replacement=value, seed=1, engine=False)
    assert fast.attrs["engine_fallbacks"] == {}
    assert fast.attrs["served"]["graph"] == len(fast)  # every point of the 4 orders on the engine
    np.testing.assert_allclose(fast.loss, slow.loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast.accuracy, slow.accuracy, atol=1 / len(y) + 1e-9)


@pytest.mark.parametrize("value", [0.0, "mean"])
def test_transposed_last_layer_and_folded_masks_equal_the_hook_path(value, monkeypatch):
    """With 64+ rows per chunk the engine runs the 3-output last layer as W @ x^T and folds cumulative
    masks into the Linear consumers' weights; both must give the hooked model's numbers."""
    from lesion.engine import cumulative as curves
    from lesion.engine import graph

    calls = {"transposed": 0, "folded": 0}
    transposed, folded = graph._transposed_linear, curves._CurveState._folded

    def count_t(*a):
        calls["transposed"] += 1
        return transposed(*a)

    def count_f(state, node, mod):
        call = folded(state, node, mod)

        def counted(x):
            calls["folded"] += 1
            return call(x)

        return counted

    monkeypatch.setattr(graph, "_transposed_linear", count_t)
    monkeypatch.setattr(curves._CurveState, "_folded", count_f)
    monkeypatch.setattr(Engine, "head_curves", False)  # the graph's path (headcurve has its own tests)
    model, x, y = make("mlp", 3, n=300)
    sites = lesion.find_sites(model, x[:2])
    ev = Runner(model, (x, y), sites, batch_size=128)
    stats = lesion.collect_stats(model, (x, y), sites, histograms=False) if value == "mean" else None
    lesions = ev.fit([Lesion([u], as_replacement(value, stats)) for u in all_units(sites)])
    fast, ref = evaluate_lesions(ev, lesions), ev.run(lesions)
    np.testing.assert_allclose(fast["loss"], ref["loss"], atol=1e-5)
    np.testing.assert_array_equal(fast["confusion"], ref["confusion"])
    seq = [lesions[i] for i in np.random.default_rng(0).permutation(len(lesions))]
    counts = list(range(len(seq) + 1))
    got, want = cumulative(ev, seq, counts), ev.run([first_k(seq, k) for k in counts])
    np.testing.assert_allclose(got["loss"], want["loss"], atol=1e-5)
    np.testing.assert_allclose(got["accuracy"], want["accuracy"], atol=1e-9)
    assert ev.fallbacks == {}
    assert calls["transposed"] > 0 and calls["folded"] > 0


def test_transposed_linear_only_for_inference_on_few_outputs():
    from lesion.engine.graph import _skinny, _transposed_linear

    lin, wide = nn.Linear(32, 10), nn.Linear(32, 40)
    x = torch.randn(100, 32)
    with torch.no_grad():
        assert _skinny(lin, x) and not _skinny(wide, x) and not _skinny(lin, x[:10])
        many = torch.randn(512 * torch.get_num_threads() + 1, 32)  # many rows: the BLAS's own layout wins
        assert not _skinny(lin, many) and _skinny(lin, many[:-1])
        out = _transposed_linear(x, lin.weight, lin.bias)
        assert out.is_contiguous() and out.shape == (100, 10)
        torch.testing.assert_close(out, lin(x), rtol=1e-5, atol=1e-6)
    assert not _skinny(lin, x)  # gradients on: the module's own arithmetic
    handle = lin.register_forward_hook(lambda m, i, o: o)
    with torch.no_grad():
        assert not _skinny(lin, x)  # a hook must run
    handle.remove()


def test_cumulative_step_of_a_dead_unit_recomputes_nothing_and_stays_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].bias[[1, 5]] = -100.0  # units 1 and 5 of the first ReLU never fire
    x, y = torch.randn(200, 6), torch.randint(0, 3, (200,))
    sites = lesion.find_sites(model, x[:2])
    ev = Runner(model, (x, y), sites, batch_size=100)
    units = all_units(sites)
    seq = [Lesion([units[i]]) for i in np.random.default_rng(1).permutation(len(units))]
    counts = list(range(len(seq) + 1))
    got = cumulative(ev, seq, counts)
    want = ev.run([first_k(seq, k) for k in counts])
    np.testing.assert_allclose(got["loss"], want["loss"], atol=1e-6)
    np.testing.assert_allclose(got["accuracy"], want["accuracy"], atol=1e-9)
    eng = engine_of(ev)
    assert ev.fallbacks == {}
    # the two dead units' steps: every example unchanged and nothing recomputed (2 steps x 200 examples)
    assert eng.examples - eng.computed >= 2 * 200
    assert eng.unchanged >= 2 * 200


def test_single_unit_lesions_of_dead_units_cost_nothing_and_keep_the_intact_values():
    """Units that never fire (0 after the ReLU for every example) change nothing when zeroed: the sweep
    skips them (no later layers run for them) and gives them the intact values, the rest as the slow path."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].bias[[1, 5]] = -100.0  # units 1 and 5 of the first ReLU never fire
        model[2].bias[2] = -100.0  # nor unit 2 of the second
    x, y = torch.randn(200, 6), torch.randint(0, 3, (200,))
    sites = lesion.find_sites(model, x[:2])
    units = [Lesion([u]) for u in all_units(sites)]
    runner = Runner(model, (x, y), sites, batch_size=100)
    fast = evaluate_lesions(runner, runner.fit(units))
    slow = Runner(model, (x, y), sites, engine=False).run(units)
    np.testing.assert_allclose(fast["loss"], slow["loss"], atol=1e-6)
    np.testing.assert_allclose(fast["accuracy"], slow["accuracy"], atol=1e-9)
    with torch.no_grad():
        h1 = model[1](model[0](x))
        h2 = model[3](model[2](h1))
    # dead within a batch of 100 counts: a unit silent on one batch is skipped for that batch
    dead = sum(int((h[i : i + 100] == 0).all(0).sum()) for h in (h1, h2) for i in (0, 100))
    assert dead >= 6
    eng = engine_of(runner)
    assert runner.fallbacks == {}
    assert eng.examples - eng.computed == dead * 100  # exactly the dead units' examples were skipped
    intact = Runner(model, (x, y), sites).run([None])
    names = [str(u) for u in units]
    for i in (names.index("1:1"), names.index("1:5"), names.index("3:2")):
        assert fast["loss"][i] == pytest.approx(float(intact["loss"][0]), abs=1e-7)


@pytest.mark.parametrize("kind", ["mlp", "conv", "residual"])
@pytest.mark.parametrize("value", [0.0, "mean"])
@pytest.mark.parametrize("share", [0.0, 1.0])
def test_gathered_cumulative_steps_equal_the_hook_path(kind, value, share, monkeypatch):
    """Exact sparsity for cumulative steps: a step is run on the examples it changes only (gathered,
    updated, scattered back into every later value). Forced on every step (share 1.0) and off (0.0), the
    curves equal the hook path at every count, for rank-1 (Linear), conv and residual models."""
    from lesion.engine import cumulative as curves

    monkeypatch.setattr(Engine, "head_curves", False)  # the graph's path (headcurve has its own tests)
    model, x, y = make(kind, seed=5)
    gathered = []
    real = curves._CurveState._gathered

    def counting(self, *args):
        done = real(self, *args)
        gathered.append(done)
        return done

    monkeypatch.setattr(curves._CurveState, "_gathered", counting)
    monkeypatch.setattr(curves._CurveState, "gather", share)
    fast = lesion.ablation_curves(model, (x, y), repeats=2, replacement=value, seed=2)
    slow = lesion.ablation_curves(model, (x, y), repeats=2, replacement=value, seed=2, engine=False)
    assert fast.attrs["engine_fallbacks"] == {} and fast.attrs["served"]["graph"] == len(fast)
    np.testing.assert_allclose(fast.loss, slow.loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast.accuracy, slow.accuracy, atol=1 / len(y) + 1e-9)
    if share == 1.0 and kind != "conv":  # a Linear consumer: every changed step can be gathered
        assert sum(gathered) > 0
    if share == 0.0:
        assert gathered == []


def test_gather_share_is_the_break_even_of_the_cost_model_computed_by_hand():
    """Linear(4,8) ReLU Linear(8,8) ReLU Linear(8,3), rows changed below the middle Linear's output z
    (8 wide): the dense way costs per row ReLU 8 + Linear output 3 + 0.025 x 3 x 8 multiply-adds = 11.6;
    the gathered way moves z (8; x3 when updated and scattered back) and the output (3), and with scatter
    the later values (8 + 3): 11.6 / (11.6 + 38) with scatter, 11.6 / (11.6 + 11) without."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    plan = Plan(model, [])
    env = {plan.input: torch.randn(5, 4)}
    with torch.no_grad():
        plan.run(env, plan.nodes[1:])
    z = next(n for n in plan.nodes if n.op == "call_module" and n.target == "2")
    assert plan.MAC == 0.025
    assert plan.gather_share(env, z, scatter=True) == pytest.approx(11.6 / 49.6)
    assert plan.gather_share(env, z, scatter=False) == pytest.approx(11.6 / 22.6)
    last = next(n for n in plan.nodes if n.op == "call_module" and n.target == "4")
    assert plan.gather_share(env, last, scatter=True) == 0.0  # nothing after the last layer to save
