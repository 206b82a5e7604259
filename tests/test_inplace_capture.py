"""The module-prefix engine replays recorded outputs; a model that changes one of them in place after it
was recorded (``hidden += residual`` in a ResNet bottleneck) must not have the change replayed twice. The
capture notices the moved version counter and records such outputs again as copies: the sites after them
stay on the engine, with the hooked model's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lesion


class Block(nn.Module):
    """``h = layer(x); h += x; relu(h)``: the in-place add changes ``layer``'s recorded output."""

    def __init__(self, d: int):
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.layer(x)
        h += x
        return self.act(h)


class Net(nn.Module):
    def __init__(self, d: int = 8, classes: int = 3):
        super().__init__()
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        if x.sum() > 1e9:  # control flow on a value: torch.fx cannot trace it, so the prefix engine serves
            return x
        return self.head(self.blocks(x))


def test_an_output_changed_in_place_after_recording_is_replayed_as_it_was():
    torch.manual_seed(0)
    net = Net().eval()
    x, y = torch.randn(40, 8), torch.randint(0, 3, (40,))
    units = [f"blocks.{b}.act:{j}" for b in range(2) for j in range(8)]
    fast = lesion.sweep(net, (x, y), units)
    slow = lesion.sweep(net, (x, y), units, engine=False)
    assert fast.attrs["served"]["prefix"] == len(units)
    assert not [k for k in fast.attrs["engine_fallbacks"] if k.startswith("prefix")], fast.attrs
    np.testing.assert_allclose(fast["loss"], slow["loss"], rtol=1e-6, atol=1e-7)


def test_the_last_bottleneck_of_a_hugging_face_resnet_stays_on_the_engine():
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = tf.ResNetConfig(layer_type="bottleneck", depths=[1, 1], hidden_sizes=[16, 32], embedding_size=8,
                             num_labels=3)  # fmt: skip
    model = tf.ResNetForImageClassification(config).eval()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 3, (6,))
    data = {"pixel_values": x, "labels": y}
    site = "resnet.encoder.stages.1.layers.0.activation"
    units = [f"{site}:{j}" for j in range(0, 32, 4)]
    fast = lesion.sweep(model, data, units)
    slow = lesion.sweep(model, data, units, engine=False)
    assert f"prefix:{site}" not in fast.attrs["engine_fallbacks"], fast.attrs["engine_fallbacks"]
    assert fast.attrs["served"]["prefix"] == len(units)
    np.testing.assert_allclose(fast["loss"], slow["loss"], rtol=1e-5, atol=1e-6)
