"""Streaming statistics equal one-shot computations on the full activation matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lesion
from lesion.analyses.measures import mutual_information, selectivity_index
from lesion.core.stats import UnitHistogram, UnitMoments, bin_edges, per_example
from tests.test_reference import make


def full_activations(model, x, site, batch_size):
    """The site's activations for all of ``x``, computed in the same batches the streaming pass uses."""
    out = []
    h = model.get_submodule(site.name).register_forward_hook(lambda m, i, o: out.append(o))
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    h.remove()
    return torch.cat(out).double()


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("binning", ["quantile", "uniform"])
def test_streaming_equals_one_shot(kind, binning):
    model, x, y = make(kind, 7, n=203)
    sites = lesion.find_sites(model, x[:2])
    stats = lesion.collect_stats(model, (x, y), sites, batch_size=19, bins=6, binning=binning)
    for site in sites:
        a = full_activations(model, x, site, 19)  # (n, units, ...)
        flat = a.transpose(0, 1).reshape(site.width, -1).numpy()
        st = stats[site.name]
        np.testing.assert_allclose(st.moments.mean.numpy(), flat.mean(1), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(st.moments.sd.numpy(), flat.std(1), rtol=1e-9, atol=1e-12)
        act = per_example(a, 1).numpy()  # (n, units)
        cm = np.stack([act[y.numpy() == c].mean(0) for c in range(3)])
        np.testing.assert_allclose(st.class_means.numpy(), cm, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(st.dead.numpy(), np.abs(flat).max(1) == 0)
        # one-shot histogram with numpy's own quantiles / equal-width edges
        for u in range(site.width):
            if binning == "quantile":
                edges = np.quantile(act[:, u], np.linspace(0, 1, 7))
            else:
                edges = np.linspace(act[:, u].min(), act[:, u].max(), 7)
            np.testing.assert_allclose(st.histogram.edges[u].numpy(), edges, rtol=1e-12, atol=1e-12)
            bins = np.searchsorted(edges[1:-1], act[:, u], side="right")
            joint = np.zeros((6, 3))
            np.add.at(joint, (bins, y.numpy()), 1)
            np.testing.assert_array_equal(st.histogram.counts[u].numpy(), joint)


def test_two_pass_histogram_when_the_sample_is_smaller_than_the_data():
    model, x, y = make("mlp", 3, n=500)
    sites = lesion.find_sites(model, x[:2])
    small = lesion.collect_stats(model, (x, y), sites, sample_size=100, batch_size=64)
    for s in sites:
        counts = small[s.name].histogram.counts
        assert counts.sum().item() == s.width * 500  # every example counted, not just the sample
        assert counts.sum((0, 1)).tolist() == [float(s.width * (y == c).sum()) for c in range(3)]


def test_merge_of_shards_equals_whole():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 4, 3, 3, generator=g).relu()
    y = torch.randint(0, 5, (300,), generator=g)
    whole = UnitMoments(4, 5)
    whole.update(h, y, 1)
    a, b = UnitMoments(4, 5), UnitMoments(4, 5)
    a.update(h[:100], y[:100], 1)
    b.update(h[100:], y[100:], 1)
    a.merge(b)
    for attr in ("mean", "m2", "class_sum", "class_count", "max_abs", "lo", "hi"):
        torch.testing.assert_close(getattr(a, attr), getattr(whole, attr))
    act = per_example(h, 1)
    edges = bin_edges(act, act.amin(0).double(), act.amax(0).double(), 4, "uniform")
    hw, h1, h2 = UnitHistogram(edges, 5), UnitHistogram(edges, 5), UnitHistogram(edges, 5)
    hw.update(act, y)
    h1.update(act[:150], y[:150])
    h2.update(act[150:], y[150:])
    torch.testing.assert_close(h1.merge(h2).counts, hw.counts)
    a.reset()
    assert a.n_elements == 0 and a.mean.abs().sum() == 0


def test_selectivity_index_formula():
    cm = np.array([[4.0, 1.0, 0.0, 2.0], [0.0, 1.0, 0.0, 2.0], [2.0, 1.0, 0.0, 1.0]])
    si, pref = selectivity_index(cm)
    # unit 0: mu_max 4, rest (0 + 2) / 2 = 1 -> 3/5; unit 1: flat -> 0; unit 2: dead; unit 3: (2-1.5)/3.5
    np.testing.assert_allclose(si[[0, 1, 3]], [0.6, 0.0, 0.5 / 3.5])
    assert np.isnan(si[2]) and pref.tolist() == [0, 0, -1, 0]


def test_mutual_information_known_values():
    indep = np.full((1, 4, 2), 5.0)  # activity independent of label
    assert mutual_information(indep).tolist() == [0.0]
    four = np.zeros((1, 4, 4))
    four[0, range(4), range(4)] = 7  # bin determines the label among 4 classes
    assert mutual_information(four) == pytest.approx([2.0])


def test_nan_activations_are_refused():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    with pytest.raises(lesion.errors.DataError, match="NaN"):
        lesion.collect_stats(net, (x, torch.tensor([0, 1])), lesion.find_sites(net, x[1:]))


def test_same_metric_compares_settings_and_takes_tensor_settings_by_identity():
    """Intact values are reused only for an equal metric; a setting that is a tensor (a metric's example
    groups) cannot be compared by value, so only the metric itself counts as equal."""
    import torch

    from lesion.core.stats import same_metric
    from lesion.metrics import Classification
    from lesion.roles.effects import LossChange

    assert same_metric(Classification(), Classification())
    assert not same_metric(Classification(3), Classification())
    groups = torch.arange(5)
    m = LossChange(3, groups)
    assert same_metric(m, m) and not same_metric(m, LossChange(3, groups.clone()))
