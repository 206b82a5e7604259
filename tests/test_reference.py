"""Every analysis against the obvious slow implementation: one full forward per lesion, no hooks.

The reference models below apply a lesion inside their own forward code (plain tensor ops), so they
share nothing with lesion's hooks, engines or statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lesion

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class RefMLP(nn.Module):
    def __init__(self, d, h1, h2, c):
        super().__init__()
        self.fc1, self.relu1 = nn.Linear(d, h1), nn.ReLU()
        self.fc2, self.relu2 = nn.Linear(h1, h2), nn.ReLU()
        self.out = nn.Linear(h2, c)

    def forward(self, x):
        return self.ref(x)

    def ref(self, x, lesion=None):
        lesion = lesion or {}
        h = self.relu1(self.fc1(x.flatten(1)))
        h = _zero(h, lesion.get("relu1"), 1)
        h = self.relu2(self.fc2(h))
        h = _zero(h, lesion.get("relu2"), 1)
        return self.out(h)


class RefConvBN(nn.Module):
    def __init__(self, c1, c2, c):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, c1, 3), nn.BatchNorm2d(c1), nn.ReLU()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(c1, c2, 3, stride=2), nn.BatchNorm2d(c2), nn.ReLU()
        self.head = nn.Linear(c2, c)
        for bn in (self.bn1, self.bn2):  # non-trivial eval-mode batch norm
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.5)

    def forward(self, x):
        return self.ref(x)

    def ref(self, x, lesion=None):
        lesion = lesion or {}
        h = _zero(self.act1(self.bn1(self.conv1(x))), lesion.get("act1"), 1)
        h = _zero(self.act2(self.bn2(self.conv2(h))), lesion.get("act2"), 1)
        return self.head(h.mean((2, 3)))


class RefResidual(nn.Module):
    def __init__(self, d, h, c):
        super().__init__()
        self.inp, self.act0 = nn.Linear(d, h), nn.ReLU()
        self.b1, self.act1 = nn.Linear(h, h), nn.ReLU()
        self.b2, self.act2 = nn.Linear(h, h), nn.ReLU()
        self.out = nn.Linear(h, c)

    def forward(self, x):
        return self.ref(x)

    def ref(self, x, lesion=None):
        lesion = lesion or {}
        h = _zero(self.act0(self.inp(x)), lesion.get("act0"), 1)
        g = _zero(self.act1(self.b1(h)), lesion.get("act1"), 1)
        g = _zero(self.act2(self.b2(g)), lesion.get("act2"), 1)
        return self.out(h + g)


def _zero(h, idx, dim):
    if not idx:
        return h
    h = h.clone()
    index = [slice(None)] * h.ndim
    index[dim] = list(idx)
    h[tuple(index)] = 0.0
    return h


def make(kind: str, seed: int, n: int = 60):
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "mlp":
            model, x = RefMLP(6, 7, 5, 3), torch.randn(n, 6, generator=g)
        elif kind == "conv":
            model, x = RefConvBN(4, 3, 3), torch.randn(n, 1, 7, 7, generator=g)
        else:
            model, x = RefResidual(5, 6, 3), torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return model.eval(), x, y


def ref_eval(model, x, y, les=None):
    with torch.no_grad():
        z = model.ref(x, les)
    pred = z.argmax(1)
    per_class = [int((pred[y == c] == c).sum()) / int((y == c).sum()) for c in range(z.shape[1])]
    return float(F.cross_entropy(z, y)), int((pred == y).sum()) / len(y), np.array(per_class)


KINDS = ["mlp", "conv", "residual"]


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_unit_table_equals_one_forward_per_unit(kind, seed):
    model, x, y = make(kind, seed)
    sites = lesion.find_sites(model, x[:2])
    table = lesion.unit_table(model, (x, y), sites=sites, units=[f"{s.name}:*" for s in sites], batch_size=17)
    loss0, acc0, pc0 = ref_eval(model, x, y)
    assert table.attrs["engine_fallbacks"] == {}  # the fast engine computed every row
    assert table.attrs["loss"] == pytest.approx(loss0, abs=1e-5)
    for row in table.itertuples():
        loss, acc, pc = ref_eval(model, x, y, {row.layer: [row.unit]})
        assert row.delta_loss == pytest.approx(loss - loss0, abs=1e-5)
        assert row.delta_accuracy == pytest.approx(acc - acc0, abs=1e-9)
        for c in range(3):
            assert getattr(row, f"delta_accuracy_class_{c}") == pytest.approx(pc[c] - pc0[c], abs=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_cumulative_curves_equal_one_forward_per_step(kind, seed):
    model, x, y = make(kind, seed)
    sites = lesion.find_sites(model, x[:2])
    pool = [(s.name, i) for s in sites for i in range(s.width)]
    perm = np.random.default_rng(seed).permutation(len(pool))
    order = [f"{pool[i][0]}:{pool[i][1]}" for i in perm]
    layers = [s.name for s in sites]
    curves = lesion.ablation_curves(model, (x, y), candidates=layers, orders=[order, "random"], repeats=2)
    assert curves.attrs["engine_fallbacks"] == {}
    custom = curves[curves.order == "custom_0"]
    assert len(custom) == len(pool) + 1
    for row in custom.itertuples():
        les: dict[str, list[int]] = {}
        for i in perm[: row.n_ablated]:
            les.setdefault(pool[i][0], []).append(pool[i][1])
        loss, acc, _ = ref_eval(model, x, y, les)
        assert row.loss == pytest.approx(loss, abs=1e-5)
        assert row.accuracy == pytest.approx(acc, abs=1e-9)
    rand = curves[curves.order == "random"]
    assert sorted(rand.repeat.unique()) == [0, 1]
    again = lesion.ablation_curves(model, (x, y), candidates=layers, orders=["random"], repeats=2)
    pd_equal = again.reset_index(drop=True).equals(rand.reset_index(drop=True))
    assert pd_equal, "same seed must give the same random curves"


def test_default_candidates_are_last_three_conv_sites():
    from lesion.core.sites import default_candidates

    convs = [m for i in range(4) for m in (nn.Conv2d(1 if i == 0 else 2, 2, 3, padding=1), nn.ReLU())]
    net = nn.Sequential(*convs, nn.Flatten(), nn.Linear(2 * 25, 8), nn.ReLU(), nn.Linear(8, 3))
    sites = lesion.find_sites(net, torch.zeros(1, 1, 5, 5))
    assert [s.name for s in sites] == ["1", "3", "5", "7", "10"]
    assert [s.name for s in default_candidates(sites)] == ["3", "5", "7"]
    assert all(s.unit_dim == 1 and s.width == 2 and s.spatial for s in sites[:4])
    assert sites[-1].width == 8 and not sites[-1].spatial


def test_weight_norm_order_uses_incoming_weights():
    model, _x, _y = make("mlp", 1)
    from lesion.analyses.paper import unit_order
    from lesion.core.units import Unit

    pool = [Unit("relu1", i) for i in range(7)]
    got = unit_order("weight_norm_high", pool, model=model)
    norms = model.fc1.weight.detach().norm(dim=1).numpy()
    assert [u.index for u in got] == list(np.argsort(-norms, kind="stable"))


def test_noise_curves_are_seeded_and_grow_with_scale():
    model, x, y = make("mlp", 2, n=300)
    a = lesion.noise_curves(model, (x, y), scales=[0.0, 0.1, 10.0], repeats=3, seed=5)
    b = lesion.noise_curves(model, (x, y), scales=[0.0, 0.1, 10.0], repeats=3, seed=5)
    pd_equal = a.equals(b)
    assert pd_equal
    loss0, _acc0, _ = ref_eval(model, x, y)
    assert a[a.scale == 0.0]["loss"].to_numpy() == pytest.approx(loss0, abs=1e-5)
    by_scale = a.groupby("scale")["loss"].mean()
    assert by_scale[10.0] > by_scale[0.1] > by_scale[0.0] - 1e-6


def test_noise_sd_is_scale_times_unit_sd():
    from lesion.core import interventions as iv

    h = torch.zeros(20_000, 3, 2, 2)
    sd = torch.tensor([1.0, 2.0, 0.0])
    g = torch.Generator().manual_seed(0)
    out = iv.noise(h, sd, 0.5, dim=1, generator=g)
    emp = out.transpose(0, 1).reshape(3, -1).std(1)
    np.testing.assert_allclose(emp.numpy(), [0.5, 1.0, 0.0], rtol=0.02, atol=1e-6)
    out_var = iv.noise(h, sd, 0.25, dim=1, scaling="variance", generator=g)
    emp_var = out_var.transpose(0, 1).reshape(3, -1).var(1)
    np.testing.assert_allclose(emp_var.numpy(), [0.25, 1.0, 0.0], rtol=0.03, atol=1e-6)
