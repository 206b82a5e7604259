"""Pair lesions: the engine's rank-2 path equals both units hooked together; singles and interactions add."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lesion
from lesion.analyses.pairs import pair_effects
from lesion.core.runner import Runner
from lesion.errors import LesionError


def mlp(seed: int = 0, width: int = 24):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(10, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4)
    )
    x = torch.randn(300, 10)
    y = torch.arange(300) % 4
    return net.eval(), (x, y)


def hooked(net, data, df, replacement=0.0):
    """Both units of every pair deleted together with hooks: the slow path, one full pass per pair."""
    sites = lesion.find_sites(net, data[0][:2])
    runner = Runner(net, data, sites)
    lesions = runner.fit(
        [lesion.Lesion([a, b], replacement) for a, b in zip(df.unit_a, df.unit_b, strict=True)]
    )
    return runner.run(lesions)


@pytest.mark.parametrize("replacement", [None, "mean", 0.5])
def test_every_pair_of_a_layer_equals_the_hooked_model(replacement):
    net, data = mlp()
    df = pair_effects(net, data, layer="1", replacement=replacement)
    assert len(df) == 24 * 23 // 2 and list(df.columns[:2]) == ["unit_a", "unit_b"]
    assert df.attrs["engine_fallbacks"] == {} and df.attrs["served"]["graph"] >= len(df)
    assert len(df.attrs["checked"]) == 3
    ref = hooked(net, data, df, 0.0 if replacement is None else replacement)
    np.testing.assert_allclose(df["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(df["accuracy"], ref["accuracy"], atol=1 / 300 + 1e-9)


def test_singles_and_interaction_add_up():
    net, data = mlp(1)
    pairs = [("1:3", "1:7"), ("1:7", "1:0"), ("3:2", "1:5")]  # any order; one pair across two layers
    df = pair_effects(net, data, pairs)
    single = lesion.sweep(net, data, ["1:3", "1:7", "1:0", "3:2", "1:5"]).set_index("lesion")["delta_loss"]
    np.testing.assert_allclose(df["delta_loss_a"], single[["1:3", "1:7", "3:2"]], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(df["delta_loss_b"], single[["1:7", "1:0", "1:5"]], rtol=1e-5, atol=1e-7)
    inter = df["delta_loss"] - df["delta_loss_a"] - df["delta_loss_b"]
    np.testing.assert_allclose(df["interaction_loss"], inter, atol=1e-12)
    np.testing.assert_allclose(df["loss"], hooked(net, data, df)["loss"], rtol=1e-5, atol=1e-6)


def test_layers_without_the_relu_head_run_through_the_traced_graph():
    net, data = mlp(2, width=8)
    df = pair_effects(net, data, layer="3")  # read by the last Linear directly: no ReLU head after it
    assert df.attrs["engine_fallbacks"] == {} and df.attrs["served"]["graph"] >= len(df)
    np.testing.assert_allclose(df["loss"], hooked(net, data, df)["loss"], rtol=1e-5, atol=1e-6)
    torch.manual_seed(4)  # a GELU and a LayerNorm after the consumer: the graph's later layers
    net = nn.Sequential(
        nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 9), nn.GELU(), nn.LayerNorm(9), nn.Linear(9, 4)
    )
    df = pair_effects(net.eval(), data, layer="1")
    assert df.attrs["engine_fallbacks"] == {} and df.attrs["served"]["graph"] >= len(df) == 66
    np.testing.assert_allclose(df["loss"], hooked(net, data, df)["loss"], rtol=1e-5, atol=1e-6)


def test_a_layer_the_engine_cannot_serve_goes_through_the_hooked_model():
    torch.manual_seed(5)  # conv channels: read by a Conv2d, not a Linear
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(), nn.Linear(48, 4)
    ).eval()
    x, y = torch.randn(50, 1, 8, 8), torch.arange(50) % 4
    df = pair_effects(net, (x, y), layer="1")
    assert len(df) == 6 and "Linear consumer" in df.attrs["engine_fallbacks"]["pairs"]
    np.testing.assert_allclose(df["loss"], hooked(net, (x, y), df)["loss"], rtol=1e-5, atol=1e-6)


def test_a_disagreeing_engine_is_replaced_by_the_hooked_answer(monkeypatch):
    import lesion.engine.pairs as fast

    real = fast.pair_units

    def wrong(engine, layer, pairs, fill, metric, progress=None):
        wrong_fill = torch.full((engine.sites[layer].width,), 0.3)  # not the zero the lesions ask for
        real(engine, layer, pairs, wrong_fill, metric, progress)

    monkeypatch.setattr(fast, "pair_units", wrong)
    net, data = mlp(3, width=8)
    df = pair_effects(net, data, layer="1")
    assert "disagreed" in df.attrs["engine_fallbacks"]["pairs"]
    np.testing.assert_allclose(df["loss"], hooked(net, data, df)["loss"], rtol=1e-5, atol=1e-6)


def test_transformer_pairs_equal_the_hooked_model():
    from tests.text_support import pattern, tiny_gpt

    model = tiny_gpt()
    data = {"input_ids": pattern(8, seed=3)}
    metric = lesion.metrics.NextTokenLoss()
    pairs = [
        ("transformer.h.0.attn:1", "transformer.h.1.attn:2"),
        ("transformer.h.1.mlp.act:3", "transformer.h.1.mlp.act:9"),
    ]
    df = pair_effects(model, data, pairs, metric=metric)
    for (a, b), got in zip(pairs, df["delta_loss"], strict=True):
        runner = Runner(model, data, lesion.find_sites(model, data), metric=metric)
        want = runner.run([runner.fit([lesion.Lesion([a, b])])[0]])["loss"][0] - runner.intact["loss"][0]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_bad_pairs_are_refused():
    net, data = mlp(width=6)
    cases = [
        (dict(), "expected layer="),
        (dict(layer="fc9"), "unknown layer 'fc9'"),
        (dict(pairs=[("1:0", "1:0")]), "names one unit twice"),
        (dict(pairs=[("1:0", "1:99")]), "is not a unit of the model"),
        (dict(pairs=[]), "pairs is empty"),
        (dict(pairs=["1:0"]), "expected two unit addresses"),
        (dict(pairs="some", layer="1"), "expected None or 'all'"),
    ]
    for kwargs, words in cases:
        with pytest.raises(LesionError, match=words):
            pair_effects(net, data, **kwargs)
