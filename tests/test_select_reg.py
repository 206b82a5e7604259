"""The selectivity regulariser: the batch quantity by hand, and its effect on held-out selectivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lesion
import lesion.analyses.measures
from lesion.data import Dataset, load_dataset
from lesion.models import mlp
from lesion.training.loop import train
from lesion.training.regulariser import batch_selectivity


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def held_out_selectivity(model: torch.nn.Module, data: Dataset) -> float:
    sites = lesion.find_sites(model, data.x_test[:2])
    stats = lesion.collect_stats(model, (data.x_test, data.y_test), sites, histograms=False)
    si = np.concatenate(
        [lesion.analyses.measures.selectivity_index(stats[s.name].class_means)[0] for s in sites]
    )
    return float(np.nanmean(si))  # dead units (NaN) are left out


def test_batch_selectivity_by_hand():
    # unit 0: class means 3 (class 0), 1 (class 1), 0 (class 2) -> (3 - 0.5) / (3 + 0.5)
    # unit 1: the same mean 2 for every class -> 0
    h = torch.tensor([[3.0, 2.0], [3.0, 2.0], [1.0, 2.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, 1, 2])
    expected = (2.5 / 3.5 + 0.0) / 2
    assert float(batch_selectivity([h], y, 3, eps=0.0)) == pytest.approx(expected)


def test_absent_classes_are_left_out():
    h = torch.tensor([[4.0], [0.0]])
    y = torch.tensor([0, 1])
    # the 8 classes absent from the batch do not count as zero means
    assert float(batch_selectivity([h], y, 10, eps=0.0)) == pytest.approx(1.0)
    assert float(batch_selectivity([h], torch.tensor([0, 0]), 10)) == 0.0  # one class: no selectivity


def test_sites_are_averaged_and_maps_pooled_over_space():
    fc = torch.tensor([[1.0], [0.0]])  # SI 1
    conv = torch.ones(2, 1, 3, 3)  # same mean for both classes: SI 0
    conv[1, 0, 0, 0] = 10.0  # class 1's map mean becomes 2, class 0's stays 1: SI 1/3
    y = torch.tensor([0, 1])
    si = float(batch_selectivity([fc, conv], y, 2, eps=0.0))
    assert si == pytest.approx((1.0 + 1 / 3) / 2)


def test_matches_selectivity_index_on_a_batch():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(200, 7, generator=g)
    y = torch.randint(5, (200,), generator=g)
    means = torch.stack([h[y == c].mean(0) for c in range(5)])
    expected = np.mean(lesion.analyses.measures.selectivity_index(means)[0])
    assert float(batch_selectivity([h], y, 5, eps=0.0)) == pytest.approx(expected, rel=1e-5)


def test_differentiable_and_finite_for_dead_units():
    h = torch.zeros(4, 3, requires_grad=True)
    si = batch_selectivity([h], torch.tensor([0, 1, 2, 0]), 3)
    si.backward()
    assert si.item() == 0.0 and torch.isfinite(h.grad).all()


def test_sign_of_alpha_moves_held_out_selectivity(digits):
    """alpha < 0 lowers the mean class selectivity of the hidden units, alpha > 0 raises it."""
    si = {}
    for alpha in (-1.0, 0.0, 1.0):
        model = mlp(digits.input_shape, [32], digits.n_classes, seed=0)
        history = train(model, digits, epochs=5, lr=1e-2, seed=0, select_reg=alpha)
        si[alpha] = held_out_selectivity(model, digits)
        assert history["test_accuracy"].iloc[-1] > 0.85
    assert si[-1.0] < si[0.0] - 0.1
    assert si[1.0] > si[0.0] + 0.1
