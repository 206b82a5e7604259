"""Hand-weighted toys (tests/toys.py): every number below is computed on paper from the weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lesion
from tests.toys import ToyConv, ToyMLP, ToyResidual, mean_loss, toy_data, toy_images

INTACT = mean_loss((2, 1), (2, 7))
NO_U1 = mean_loss((0, 1), (0, 7))  # class 0 now wrong
NO_U2 = mean_loss((2, 1), (2, 4))  # one duplicate gone: still right
NO_U2_U3 = mean_loss((2, 1), (2, 1))  # both duplicates gone: class 1 wrong

TOYS = {
    "mlp": (ToyMLP, toy_data),
    "conv": (ToyConv, toy_images),
    "conv_bn": (lambda: ToyConv(batchnorm=True), toy_images),
    "residual": (ToyResidual, toy_data),
}


@pytest.fixture(params=list(TOYS))
def toy(request):
    make, data = TOYS[request.param]
    return make(), data()


def test_unit_table_matches_paper(toy):
    model, data = toy
    table = lesion.unit_table(model, data, units="act:*")
    t = table.set_index("unit")
    assert table.attrs["accuracy"] == 1.0
    assert table.attrs["loss"] == pytest.approx(INTACT, abs=1e-6)
    # u0: perfectly selective for class 0, zero outgoing weight -> importance exactly 0
    assert t.loc[0, "selectivity"] == pytest.approx(1.0)
    assert t.loc[0, "preferred_class"] == 0
    assert t.loc[0, "delta_loss"] == pytest.approx(0.0, abs=1e-7)
    assert t.loc[0, "delta_accuracy"] == 0.0
    assert t.loc[0, "mutual_info"] == pytest.approx(1.0)
    # u1: not selective at all, carries the output
    assert t.loc[1, "selectivity"] == pytest.approx(0.0)
    assert t.loc[1, "mutual_info"] == pytest.approx(0.0)
    assert t.loc[1, "delta_accuracy"] == pytest.approx(-0.5)
    assert t.loc[1, "delta_loss"] == pytest.approx(NO_U1 - INTACT, abs=1e-6)
    assert t.loc[1, "delta_accuracy_class_0"] == pytest.approx(-1.0)
    assert t.loc[1, "delta_accuracy_class_1"] == 0.0
    # u2, u3: duplicates; deleting one costs no accuracy
    for u in (2, 3):
        assert t.loc[u, "selectivity"] == pytest.approx(1.0)
        assert t.loc[u, "preferred_class"] == 1
        assert t.loc[u, "delta_accuracy"] == 0.0
        assert t.loc[u, "delta_loss"] == pytest.approx(NO_U2 - INTACT, abs=1e-6)
    # u4: dead
    assert t.loc[4, "dead"] and not t.loc[[0, 1, 2, 3], "dead"].any()
    assert math.isnan(t.loc[4, "selectivity"]) and t.loc[4, "preferred_class"] == -1
    assert t.loc[4, "delta_loss"] == pytest.approx(0.0, abs=1e-7)


def test_both_duplicates_cost_a_lot(toy):
    model, data = toy
    with lesion.ablate(model, "act:2-3"):
        ev = lesion.evaluate(model, data)
    assert ev.accuracy == 0.5
    assert ev.loss == pytest.approx(NO_U2_U3, abs=1e-6)
    assert ev.per_class_accuracy.tolist() == [1.0, 0.0]
    assert ev.confusion.tolist() == [[4, 0], [4, 0]]


def test_cumulative_curve_in_a_given_order(toy):
    model, data = toy
    order = ["act:0", "act:2", "act:3", "act:1", "act:4"]
    curves = lesion.ablation_curves(model, data, candidates=["act"], orders=[order])
    assert curves["accuracy"].tolist() == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    assert curves["fraction"].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    expected_loss = [INTACT, INTACT, NO_U2, NO_U2_U3, mean_loss((0, 1), (0, 1)), mean_loss((0, 1), (0, 1))]
    assert curves["loss"].tolist() == pytest.approx(expected_loss, abs=1e-6)
    aucs = lesion.curve_auc(curves)
    assert aucs["auc"].item() == pytest.approx(0.75)  # trapezoid on paper
    assert aucs["auc_normalised"].item() == 1.0


def test_ranked_orders_follow_the_unit_table():
    model, data = ToyMLP(), toy_data()
    table = lesion.unit_table(model, data)
    from lesion.analyses.paper import unit_order
    from lesion.core.units import Unit

    pool = [Unit("act", i) for i in range(5)]
    high = unit_order("selectivity_high", pool, units=table)
    low = unit_order("selectivity_low", pool, units=table)
    imp = unit_order("importance_high", pool, units=table)
    assert [u.index for u in high] == [0, 2, 3, 1, 4]  # ties keep order, dead last
    assert [u.index for u in low] == [1, 0, 2, 3, 4]
    assert [u.index for u in imp] == [1, 2, 3, 0, 4]


def test_residual_branch_only_lesion():
    model, data = ToyResidual(), toy_data()
    with lesion.ablate(model, "branch_act:1"):
        ev = lesion.evaluate(model, data)
    # z0 = 2 (h1 + 0) / 2 = 1: class 0 gets logits (1, 1), class 1 (1, 7)
    assert ev.loss == pytest.approx(mean_loss((1, 1), (1, 7)), abs=1e-6)
    assert ev.accuracy == 1.0  # argmax of a tie is the first index
    with lesion.ablate(model, "act:1"):  # feeds the skip and the branch
        assert lesion.evaluate(model, data).loss == pytest.approx(NO_U1, abs=1e-6)


def test_batchnorm_ablation_differs_from_zeroing_weights():
    model, data = ToyConv(batchnorm=True), toy_images()
    with lesion.ablate(model, "act:1"):
        ablated = lesion.evaluate(model, data).loss
    zeroed = ToyConv(batchnorm=True)
    with torch.no_grad():
        zeroed.conv.weight[1] = 0
        zeroed.conv.bias[1] = 0
    # bn(0) = 1, so the "deleted" unit still fires: zeroing weights is not a lesion under batch norm
    assert lesion.evaluate(zeroed, data).loss == pytest.approx(INTACT, abs=1e-6)
    assert ablated == pytest.approx(NO_U1, abs=1e-6)


def test_mean_and_constant_ablation():
    model, data = ToyMLP(), toy_data()
    table = lesion.unit_table(model, data, replacement="mean")
    # clamping the constant unit u1 to its mean (1) changes nothing; u2 to its mean 1/2 halves it
    t = table.set_index("unit")
    assert t.loc[1, "delta_loss"] == pytest.approx(0.0, abs=1e-7)
    assert t.loc[2, "delta_loss"] == pytest.approx(mean_loss((2, 2.5), (2, 5.5)) - INTACT, abs=1e-6)
    with lesion.ablate(model, "act:0", 5.0):
        assert lesion.evaluate(model, data).loss == pytest.approx(INTACT, abs=1e-6)  # weight 0


def test_noise_at_scale_zero_is_intact_and_sd_is_right():
    model, data = ToyMLP(), toy_data()
    stats = lesion.collect_stats(model, data, lesion.find_sites(model, data[0][:2]))
    assert stats["act"].sd.tolist() == pytest.approx([0.5, 0.0, 0.5, 0.5, 0.0])
    noise = lesion.noise_curves(model, data, scales=[0.0, 1.0], repeats=2, reference=stats)
    assert noise[noise.scale == 0.0]["loss"].tolist() == pytest.approx([INTACT, INTACT], abs=1e-6)
    assert (noise[noise.scale == 1.0]["loss"] != INTACT).all()


def test_selectivity_vs_importance_drops_dead_units():
    table = lesion.unit_table(ToyMLP(), toy_data())
    corr = lesion.selectivity_vs_importance(table)
    assert corr.loc[corr.layer == "all", "n"].item() == 4
    # selectivities (1, 0, 1, 1) against delta_loss (0, big, small, small): strongly negative
    assert corr.loc[corr.layer == "all", "pearson_r"].item() < -0.5


def test_direction_removal_of_a_unit_axis_equals_zero_ablation():
    model, data = ToyMLP(), toy_data()
    q = lesion.core.interventions.unit_directions(5, [2, 3])
    with lesion.ablate_directions(model, "act", q):
        ev = lesion.evaluate(model, data)
    assert ev.loss == pytest.approx(NO_U2_U3, abs=1e-6)
    q_all = lesion.core.interventions.random_directions(5, 5, seed=3)
    with lesion.ablate_directions(model, "act", q_all):
        out = model(data[0])
    np.testing.assert_allclose(out.detach().numpy(), np.tile([0.0, 1.0], (8, 1)), atol=1e-5)
