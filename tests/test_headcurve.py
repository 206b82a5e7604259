"""Cumulative orders through a ReLU and a narrow last Linear on the lean step loop
(``lesion.engine.headcurve``): every count equals the hooked model, the graph's own path and a computation
written out here by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lesion
from lesion.core.lesions import Lesion
from lesion.core.metric import Classification, Metric
from lesion.core.replacements import as_replacement
from lesion.core.runner import Runner
from lesion.core.units import Unit
from lesion.engine import cumulative as curves
from lesion.engine import headcurve
from lesion.engine.batched import Engine
from lesion.engine.dispatch import cumulative, first_k


def mlp(seed: int = 0, dtype=torch.float32, dead=()):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 20), nn.ReLU(), nn.Linear(20, 4))
    with torch.no_grad():
        model[2].bias += 0.2
        for j in dead:
            model[0].bias[j] = -100.0  # unit j of the first ReLU never fires
    x, y = torch.randn(150, 12, dtype=dtype), torch.randint(0, 4, (150,))
    return model.to(dtype).eval(), x, y


def served(monkeypatch) -> list[bool]:
    """Record each chunk's answer from ``run_chunk`` (True: the lean loop served it)."""
    calls: list[bool] = []
    real = headcurve.run_chunk

    def counting(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(curves, "run_chunk", counting)
    return calls


def by_hand(model, x, y, units, fills) -> tuple[float, float]:
    """(mean loss, accuracy) with ``units`` ((layer, j) pairs) clamped to ``fills``, written out."""
    with torch.no_grad():
        out = logits_by_hand(model, x, units, fills)
    return float(F.cross_entropy(out.double(), y)), float((out.argmax(1) == y).double().mean())


@torch.no_grad()
def logits_by_hand(model, x, units, fills) -> torch.Tensor:
    fc1, fc2, fc3 = model[0], model[2], model[4]
    h1 = torch.relu(fc1(x))
    for layer, j in units:
        if layer == "1":
            h1[:, j] = fills["1"][j]
    h2 = torch.relu(fc2(h1))
    for layer, j in units:
        if layer == "3":
            h2[:, j] = fills["3"][j]
    return fc3(h2)


@pytest.mark.parametrize("value", [0.0, "mean"])
@pytest.mark.parametrize("gather", [0.0, 1.0])
def test_orders_over_both_sites_equal_the_hook_path_at_every_count(value, gather, monkeypatch):
    monkeypatch.setattr(headcurve, "GATHER", gather)  # every A-step on its changed rows, or none
    calls = served(monkeypatch)
    model, x, y = mlp()
    sites = lesion.find_sites(model, x[:2])
    ev = Runner(model, (x, y), sites, batch_size=64)
    stats = lesion.collect_stats(model, (x, y), sites, histograms=False) if value == "mean" else None
    units = [Unit(s.name, i) for s in sites for i in range(s.width)]
    perm = np.random.default_rng(0).permutation(len(units))
    seq = ev.fit([Lesion([units[i]], as_replacement(value, stats)) for i in perm])
    counts = list(range(len(seq) + 1))
    got = cumulative(ev, seq, counts)
    want = Runner(model, (x, y), sites, engine=False).run([first_k(seq, k) for k in counts])
    assert ev.fallbacks == {} and calls and all(calls)  # every chunk on the lean loop
    np.testing.assert_allclose(got["loss"], want["loss"], atol=1e-6)
    np.testing.assert_array_equal(got["confusion"], want["confusion"])


class Outputs(Metric):
    """Keeps every lesion's outputs, (n, examples, c)."""

    def reset(self, n):
        super().reset(n)
        self.parts = [[] for _ in range(n)]

    def update(self, outputs, batch, lesions, intact=None):
        for i, k in enumerate(range(lesions.start, lesions.stop)):
            self.parts[k].append(outputs[i].clone())

    def compute(self):
        return {"out": torch.stack([torch.cat(p) for p in self.parts])}


def run_engine(model, x, y, order, counts, fills=None, *, head=True, chunk=64, metric=None):
    sites = lesion.find_sites(model, x[:2])
    eng = Engine(model, lambda: Runner(model, (x, y), sites, batch_size=chunk).batches(), sites)
    eng.head_curves = head
    metric = metric or Classification()
    metric.reset(len(counts))
    with torch.no_grad():
        curves.cumulative(eng, order, counts, fills, metric)
    return metric.compute(), eng


def test_float64_values_equal_the_computation_by_hand_at_a_subset_of_counts(monkeypatch):
    """Replacements on both sites, counts 0 and a few others."""
    calls = served(monkeypatch)
    model, x, y = mlp(1, torch.float64)
    g = torch.Generator().manual_seed(2)
    fills = {name: torch.rand(n, generator=g, dtype=torch.float64) for name, n in (("1", 24), ("3", 20))}
    order = [("1", 3), ("3", 0), ("1", 5), ("3", 9), ("3", 7), ("1", 2)] + [("1", j) for j in range(6, 20)]
    order += [("3", j) for j in range(1, 7)]
    counts = [0, 2, 4, 5, 6, 13, len(order)]
    got, _ = run_engine(model, x, y, order, counts, fills, metric=Outputs())
    assert calls and all(calls)
    assert got["out"].dtype == torch.float64
    for i, k in enumerate(counts):
        want = logits_by_hand(model, x, order[:k], fills)
        torch.testing.assert_close(got["out"][i], want, rtol=0, atol=1e-12)
    graph, _ = run_engine(model, x, y, order, counts, fills, head=False, metric=Outputs())
    torch.testing.assert_close(got["out"], graph["out"], rtol=0, atol=1e-12)


def test_orders_of_one_site_and_counters_equal_the_graph_path(monkeypatch):
    """An order over site A only uses the lean loop; the unchanged (example, step) pairs it counts are
    the graph path's; dead units' steps are computed by neither."""
    calls = served(monkeypatch)
    monkeypatch.setattr(headcurve, "GATHER", 0.0)  # dense steps: only the dead units' are skipped
    model, x, y = mlp(3, dead=(2, 9))
    order = [("1", j) for j in np.random.default_rng(4).permutation(24)]
    counts = list(range(25))
    got, eng = run_engine(model, x, y, order, counts)
    assert calls and all(calls)
    graph, ref = run_engine(model, x, y, order, counts, head=False)
    np.testing.assert_allclose(got["loss"], graph["loss"], atol=1e-6)
    np.testing.assert_array_equal(got["confusion"], graph["confusion"])
    assert eng.examples == ref.examples == 24 * 150
    assert eng.unchanged == ref.unchanged
    assert eng.examples - eng.computed == 2 * 150  # the two dead units' steps
    monkeypatch.setattr(headcurve, "GATHER", 1.0)  # every step on its changed examples alone
    again, eng = run_engine(model, x, y, order, counts)
    np.testing.assert_allclose(again["loss"], graph["loss"], atol=1e-6)
    assert eng.computed == eng.examples - eng.unchanged  # exactly the changed pairs computed
    for k in (1, 12, 24):
        loss, _ = by_hand(model, x, y, order[:k], {"1": torch.zeros(24)})
        assert got["loss"][k] == pytest.approx(loss, abs=1e-5)


def test_not_used_where_the_order_reaches_other_layers_or_only_the_last_site(monkeypatch):
    calls = served(monkeypatch)
    torch.manual_seed(0)
    layers = [nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU()]
    deep = nn.Sequential(*layers, nn.Linear(9, 3)).eval()
    x, y = torch.randn(80, 8), torch.randint(0, 3, (80,))
    sites = lesion.find_sites(deep, x[:2])
    eng = Engine(deep, lambda: [], sites)
    names = [s.name for s in sites]
    assert headcurve.curve_head(eng, [(names[0], 1), (names[1], 2)]) is None  # site 1 is not before the head
    spec = headcurve.curve_head(eng, [(names[1], 1), (names[2], 2)])
    assert spec is not None and spec[:2] == (names[1], names[2])
    assert headcurve.curve_head(eng, [(names[2], 1)]) is None  # the last site alone: rank-1 on the output
    eng.head_curves = False
    assert headcurve.curve_head(eng, [(names[1], 1)]) is None
    order = [(names[0], 1), (names[1], 2), (names[2], 0)]
    got, _ = run_engine(deep, x, y, order, [0, 1, 2, 3])
    assert calls == []  # the graph's path served it
    want = Runner(deep, (x, y), sites, engine=False).run(
        [None] + [Lesion([Unit(n, j) for n, j in order[:k]]) for k in (1, 2, 3)]
    )
    np.testing.assert_allclose(got["loss"], want["loss"], atol=1e-6)


def test_a_chunk_whose_head_disagrees_with_the_model_runs_on_the_graph(monkeypatch):
    calls = served(monkeypatch)
    real = headcurve.HeadCurve.dense
    wrong = lambda self, z=None: real(self, z) + 1.0  # noqa: E731 -- a wrong reading of the head
    monkeypatch.setattr(headcurve.HeadCurve, "dense", wrong)
    model, x, y = mlp(5)
    order = [("1", j) for j in range(10)] + [("3", j) for j in range(10)]
    counts = list(range(21))
    got, _ = run_engine(model, x, y, order, counts)
    assert calls and not any(calls)  # every chunk declined before any metric update
    monkeypatch.setattr(headcurve.HeadCurve, "dense", real)
    for k in (0, 7, 20):
        loss, _ = by_hand(model, x, y, order[:k], {"1": torch.zeros(24), "3": torch.zeros(20)})
        assert got["loss"][k] == pytest.approx(loss, abs=1e-5)


@pytest.mark.parametrize("counts", [[0, 3, 3], [0, 99], [-1, 2]])
def test_counts_outside_the_order_or_repeated_are_refused_not_miscounted(counts):
    from lesion.engine import Unsupported

    model, x, y = mlp(6)
    with pytest.raises(Unsupported, match="counts must be distinct"):
        run_engine(model, x, y, [("1", j) for j in range(5)], counts)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    chunk=st.sampled_from([5, 64, 150]),
    gather=st.sampled_from([0.0, 0.25, 1.0]),
    fill=st.sampled_from(["zero", "signed"]),
    data=st.data(),
)
def test_random_orders_fills_chunks_and_counts_equal_the_computation_by_hand(
    seed, chunk, gather, fill, data, monkeypatch
):
    """Any interleaving of the two sites' units, signed replacements (a B-unit replaced by a negative
    value, an A-unit whose replacement makes it change every example), chunks of 5 to 150 examples, counts
    with or without 0: every count's float64 outputs equal ``logits_by_hand`` to 1e-10."""
    monkeypatch.setattr(headcurve, "GATHER", gather)
    calls = served(monkeypatch)
    model, x, y = mlp(seed % 7, torch.float64, dead=(seed % 24,))
    units = [("1", j) for j in range(24)] + [("3", j) for j in range(20)]
    order = data.draw(st.permutations(units).map(lambda p: p[: max(1, len(p) * (seed % 5 + 1) // 5)]))
    counts = sorted(data.draw(st.sets(st.integers(0, len(order)), min_size=1, max_size=6)))
    g = torch.Generator().manual_seed(seed)
    if fill == "zero":
        fills = None
        want_fills = {"1": torch.zeros(24, dtype=torch.float64), "3": torch.zeros(20, dtype=torch.float64)}
    else:
        want_fills = fills = {
            n: torch.randn(w, generator=g, dtype=torch.float64) for n, w in (("1", 24), ("3", 20))
        }
    got, _ = run_engine(model, x, y, order, counts, fills, chunk=chunk, metric=Outputs())
    # the lean loop serves every chunk where the steps reach site A (site B alone: rank-1 on the output)
    assert all(calls) and bool(calls) == any(layer == "1" for layer, _ in order[: counts[-1]])
    for i, k in enumerate(counts):
        want = logits_by_hand(model, x, order[:k], want_fills)
        torch.testing.assert_close(got["out"][i], want, rtol=0, atol=1e-10)
