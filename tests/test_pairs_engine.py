"""The pair engine's fast paths against the dense computation: every pair of a layer, with kinks and flips.

``lesion.engine.pairs`` evaluates pairs through a ReLU head as single-unit outputs plus sparse hinges
(``lesion.engine.pairhead``) and through a last Linear in closed form; here each is compared with the
dense double deletion ``head(relu(z - a_i w_i - a_j w_j))`` on a model built so that the kink bound is
selective (the shortcut, not its dense fallback, runs) and deletions do cross zero.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from lesion.core.metric import Classification
from lesion.core.runner import Runner
from lesion.core.sites import find_sites
from lesion.engine.dispatch import engine_of
from lesion.engine.pairhead import candidates, dense, hinges, reach
from lesion.engine.pairs import pair_units


def model(seed: int = 0, width: int = 40, dtype=torch.float32):
    """A 12-40-32-5 ReLU MLP whose second layer has large biases: most pre-activations sit far from
    zero, so the kink bound flags few (example, unit) pairs, while some deletions still cross zero."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(12, width), nn.ReLU(), nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 5))
    with torch.no_grad():
        net[2].weight.mul_(0.6)
        net[2].bias.copy_(torch.randn(32, generator=g) * 1.5)
    x = torch.randn(700, 12, generator=g)
    y = torch.randint(0, 5, (700,), generator=g)
    return net.to(dtype).eval(), (x.to(dtype), y)


def brute(net, x, layer: int, pairs, fill):
    """(pairs, examples, classes): the model's output with both units of each pair set to ``fill``."""
    with torch.no_grad():
        h = net[: layer + 1](x)
        out = []
        for i, j in pairs:
            hl = h.clone()
            hl[:, i], hl[:, j] = fill[i], fill[j]
            out.append(net[layer + 1 :](hl))
        return torch.stack(out)


def on_engine(net, data, layer: str, pairs, fill):
    runner = Runner(net, data, find_sites(net, data[0][:2]), batch_size=300)
    eng = engine_of(runner)
    metric = Classification()
    metric.reset(len(pairs))
    with torch.no_grad():
        pair_units(eng, layer, pairs, fill if bool(fill.any()) else None, metric)
    return metric.compute(), eng


def reference(net, data, layer: int, pairs, fill):
    out = brute(net, data[0], layer, pairs, fill)
    loss = torch.nn.functional.cross_entropy(
        out.flatten(0, 1).double(), data[1].repeat(len(pairs)), reduction="none"
    )
    acc = (out.argmax(-1) == data[1]).double().mean(1)
    return loss.view(len(pairs), -1).mean(1).numpy(), acc.numpy()


@pytest.mark.parametrize("fill", ["zero", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_pair_through_the_relu_head_equals_the_dense_deletion(fill, dtype):
    net, data = model(dtype=dtype)
    with torch.no_grad():
        h = net[:2](data[0])
    f = torch.zeros(40, dtype=dtype) if fill == "zero" else h.mean(0)  # mean: activities of both signs
    pairs = list(itertools.combinations(range(40), 2))
    got, eng = on_engine(net, data, "1", pairs, f)
    assert eng.declined == 0  # the hinge shortcut ran, not its dense fallback
    loss, acc = reference(net, data, 1, pairs, f)
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-6, atol=1e-6)  # the metric scores in float32
    assert np.abs(got["accuracy"] - acc).max() <= 1 / 700 + 1e-12


def test_hinges_see_kinks_and_flips_and_equal_the_dense_step():
    """The pieces on their own: a base with a unit deleted, where that unit flips some pre-activations
    and partners push others across zero; the single-unit kinks subtracted as the pair path does."""
    net, data = model(1)
    head_in, head_out, v = net[2], net[4], net[4].weight
    with torch.no_grad():
        a = net[:2](data[0])
        z = head_in(a)
        w = head_in.weight
        bounds = reach(a, w)
        i, part = 3, torch.arange(4, 40)
        rows = (a[:, i] != 0).nonzero().squeeze(1)
        zr = z[rows]
        zi = zr - a[rows, i : i + 1] * w[:, i]
        flip = (zi > 0) != (zr > 0)
        near = candidates(bounds, zi, rows)
        assert near is not None and 0 < near.float().mean() < 0.25 and flip.any()
        ar, wk = a[rows][:, part], w[:, part]

        class Head:
            inner, head = head_in, head_out

        want = dense(Head, zi, ar, wk, 1 << 16) - dense(Head, zr, ar, wk, 1 << 16)  # pair minus partner
        out = torch.nn.functional.linear(torch.relu(zr), v, head_out.bias)
        out_i = torch.nn.functional.linear(torch.relu(zi), v, head_out.bias)
        got = torch.zeros_like(want)  # (rows, k, c): the pair's hinges minus the partner's own
        const = hinges(got, zi, ar, wk, v, near, flip)
        single = torch.zeros_like(want)
        hinges(single, zr, ar, wk, v, candidates(bounds, zr, rows))
        got += (out_i - out - const).unsqueeze(1) - single
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        crossed = ((zi.unsqueeze(1) - ar.unsqueeze(2) * wk.T.unsqueeze(0)) > 0) != (zi > 0).unsqueeze(1)
        assert crossed.any()  # partners did cross zero on this base


def test_a_bound_that_flags_too_much_takes_the_dense_step():
    torch.manual_seed(0)  # small random weights, no bias offset: most pre-activations are near zero
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x, y = torch.randn(200, 6), torch.arange(200) % 3
    pairs = list(itertools.combinations(range(10), 2))
    got, eng = on_engine(net, (x, y), "1", pairs, torch.zeros(10))
    assert eng.declined > 0
    loss, _ = reference(net, (x, y), 1, pairs, torch.zeros(10))
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-5, atol=1e-6)


def test_the_last_hidden_layer_is_closed_form_on_the_logits():
    net, data = model(2)
    pairs = [(i, j) for i in range(0, 32, 5) for j in range(i + 1, 32)]
    got, eng = on_engine(net, data, "3", pairs, torch.zeros(32))
    loss, acc = reference(net, data, 3, pairs, torch.zeros(32))
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-5, atol=1e-6)
    assert np.abs(got["accuracy"] - acc).max() <= 1 / 700 + 1e-12
    assert eng.examples == len(pairs) * 700
