"""The random-rotation control checked against the obvious computations, and the smaller additions
reproduce relies on: unit_table without importance, convnets with their own layer list."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import lesion
import lesion.analyses.controls
import lesion.analyses.measures
from lesion.analyses.controls import _draw, _joint, _seed
from lesion.core import interventions as iv
from lesion.errors import LesionError
from lesion.models import build_model


@pytest.fixture(scope="module")
def net_and_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    net = build_model({"kind": "mlp", "input_shape": [1, 4, 4], "widths": [12, 8], "n_classes": 3}, seed=1)
    return net.eval(), (x, y)


def test_unit_basis_is_zero_ablation_of_a_seeded_random_set(net_and_data):
    net, xy = net_and_data
    curves = lesion.analyses.controls.direction_curves(net, xy, fractions=[0.0, 0.5, 1.0], repeats=2, seed=3)
    for r in range(2):
        orders = {
            name: _draw(w, _seed(3, r, i))[1] for i, (name, w) in enumerate([("relu1", 12), ("relu2", 8)])
        }
        spec = [f"relu1:{int(i)}" for i in orders["relu1"][:6]] + [
            f"relu2:{int(i)}" for i in orders["relu2"][:4]
        ]
        with lesion.ablate(net, spec):
            want = lesion.evaluate(net, xy)
        got = curves[(curves.basis == "units") & (curves.repeat == r) & (curves.fraction == 0.5)].iloc[0]
        assert got.n_ablated == 10
        assert got.accuracy == pytest.approx(want.accuracy) and got.loss == pytest.approx(want.loss, rel=1e-6)


def test_random_basis_removes_the_first_columns_of_a_rotation(net_and_data):
    net, xy = net_and_data
    curves = lesion.analyses.controls.direction_curves(net, xy, fractions=[0.0, 0.25, 1.0], repeats=1, seed=5)

    q1 = iv.random_directions(12, 12, seed=_seed(5, 0, 0))[:, :3]
    q2 = iv.random_directions(8, 8, seed=_seed(5, 0, 1))[:, :2]
    with lesion.ablate_directions(net, "relu1", q1), lesion.ablate_directions(net, "relu2", q2):
        want = lesion.evaluate(net, xy)
    row = curves[(curves.basis == "random") & (curves.fraction == 0.25)].iloc[0]
    assert row.accuracy == pytest.approx(want.accuracy) and row.loss == pytest.approx(want.loss, rel=1e-5)
    # removing every direction of a layer is removing the whole layer, in either basis
    full = curves[curves.fraction == 1.0]
    assert full.loss.max() - full.loss.min() < 1e-5
    intact = lesion.evaluate(net, xy)
    assert curves[curves.fraction == 0.0].loss.to_numpy() == pytest.approx(intact.loss)


def test_direction_information_of_units_matches_unit_table(net_and_data):
    net, xy = net_and_data
    info = lesion.analyses.controls.direction_information(net, xy)
    table = lesion.unit_table(net, xy, importance=False)
    units = info[info.basis == "units"].reset_index(drop=True)
    assert list(units.layer) == list(table.layer) and list(units["index"]) == list(table.unit)
    live = ~table.dead.to_numpy()
    np.testing.assert_allclose(
        units.mutual_info.to_numpy()[live], table.mutual_info.to_numpy()[live], atol=1e-9
    )
    assert set(info.basis) == {"units", "random"} and len(info) == 2 * (12 + 8)


def test_joint_counts_are_quantile_bins():
    acts = np.arange(20, dtype=float)[:, None]  # one unit, 20 distinct values
    labels = np.array([0] * 10 + [1] * 10)
    joint = _joint(acts, labels, bins=2)
    assert joint.tolist() == [[[10, 0], [0, 10]]]
    assert lesion.analyses.measures.mutual_information(joint).tolist() == [1.0]


def test_unit_table_without_importance_keeps_statistics(net_and_data):
    net, xy = net_and_data
    full = lesion.unit_table(net, xy)
    light = lesion.unit_table(net, xy, importance=False)
    cols = [
        "layer",
        "unit",
        "selectivity",
        "preferred_class",
        "mutual_info",
        "mean_activity",
        "sd_activity",
        "dead",
    ]
    pd.testing.assert_frame_equal(full[cols], light[cols])
    assert light[["loss", "accuracy", "delta_loss", "delta_accuracy"]].isna().all().all()
    assert light.attrs["accuracy"] == pytest.approx(full.attrs["accuracy"])


def test_convnet_with_its_own_layer_list():
    arch = {
        "kind": "convnet",
        "input_shape": [1, 12, 12],
        "n_classes": 4,
        "channels": [3, 5],
        "strides": [1, 2],
    }
    net = build_model(arch, seed=0)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.stride[0]) for c in convs] == [(3, 1), (5, 2)]
    assert tuple(net(torch.zeros(2, 1, 12, 12)).shape) == (2, 4)
    with pytest.raises(LesionError, match="give both channels and strides"):
        build_model({**arch, "strides": None}, seed=0)
    with pytest.raises(LesionError, match="channels has 2 entries, strides 1"):
        build_model({**arch, "strides": [1]}, seed=0)
