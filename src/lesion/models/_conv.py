"""The paper's 11-layer convnet and a small CIFAR-style ResNet, with flat, stable module names."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from lesion.errors import LesionError
from lesion.models._common import check_switches, image_shape, kaiming_init, positive_ints, seeded_init

CONVNET_CHANNELS = (64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512)
CONVNET_STRIDES = (1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1)
CONVNET_FC = 256


def convnet(
    input_shape: Sequence[int],
    n_classes: int,
    *,
    width_mult: float = 1.0,
    batchnorm: bool = True,
    dropout: float = 0.0,
    channels: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    seed: int | None = None,
) -> nn.Sequential:
    """The paper's CIFAR-10 convnet: 11 3x3 convs (channels 64,64,128,128,128,256,256,256,512,512,512
    times ``width_mult``, rounded, at least 1; strides 1,1,2,1,1,2,1,1,2,1,1; padding 1), each followed
    by batch norm (with ``batchnorm``) and a ReLU, then a fully connected layer of 256 and the output.

    Modules, flat: ``conv{i}``, ``bn{i}``, ``relu{i}`` for i = 1..11, ``pool``, ``flatten``, ``fc``,
    ``relu_fc``, ``drop_fc`` (with ``dropout > 0``), ``out``. The paper flattens the last feature maps
    straight into the fc layer; here ``pool`` first averages each map over space (adaptive average
    pool to 1x1), so the net takes any image size and fc has one input per map of ``conv11``. Convs
    have no bias when batch-normed; conv weights are He-normal. ``seed`` as in ``mlp``. ``channels`` and
    ``strides`` (same length) replace the paper's layer list, e.g. for a small, fast variant; sites are
    then ``relu1`` .. ``relu{len(channels)}``.

    >>> net = convnet((1, 28, 28), 10, width_mult=0.125, seed=0)
    >>> [n for n, _ in net.named_children()][:4], tuple(net(torch.zeros(2, 1, 28, 28)).shape)
    (['conv1', 'bn1', 'relu1', 'conv2'], (2, 10))
    """
    c_in = image_shape(input_shape)[0]
    positive_ints("n_classes", [n_classes], allow_empty=False, scalar=True)
    if isinstance(width_mult, bool) or not isinstance(width_mult, int | float) or not width_mult > 0:
        raise LesionError(f"width_mult={width_mult!r}; expected a positive number")
    check_switches(dropout, batchnorm)
    base, strides = _layer_list(channels, strides)
    channels = [max(1, round(c * width_mult)) for c in base]

    def build() -> nn.Sequential:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (c_out, stride) in enumerate(zip(channels, strides, strict=True), start=1):
            layers[f"conv{i}"] = nn.Conv2d(c_in if i == 1 else channels[i - 2], c_out, 3, stride, 1,
                                           bias=not batchnorm)  # fmt: skip
            if batchnorm:
                layers[f"bn{i}"] = nn.BatchNorm2d(c_out)
            layers[f"relu{i}"] = nn.ReLU()
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(channels[-1], CONVNET_FC)
        layers["relu_fc"] = nn.ReLU()
        if dropout > 0:
            layers["drop_fc"] = nn.Dropout(dropout)
        layers["out"] = nn.Linear(CONVNET_FC, n_classes)
        return kaiming_init(nn.Sequential(layers))

    return seeded_init(build, seed)


def _layer_list(channels, strides) -> tuple[list[int], list[int]]:
    if channels is None and strides is None:
        return list(CONVNET_CHANNELS), list(CONVNET_STRIDES)
    if channels is None or strides is None:
        raise LesionError("give both channels and strides (one entry per conv layer), or neither")
    positive_ints("channels", channels, allow_empty=False)
    positive_ints("strides", strides, allow_empty=False)
    if len(channels) != len(strides):
        raise LesionError(f"channels has {len(channels)} entries, strides {len(strides)}; expected equal")
    return list(channels), list(strides)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection. Modules: ``conv1``, ``bn1``, ``relu1``, ``conv2``,
    ``bn2``, ``shortcut`` (1x1 conv + BN where the shape changes, else identity), ``relu2`` (after the
    residual add). Every ReLU is its own module, so each is a site of its own.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, batchnorm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(c_out) if batchnorm else None
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(c_out) if batchnorm else None
        if stride != 1 or c_in != c_out:
            proj: OrderedDict[str, nn.Module] = OrderedDict(
                conv=nn.Conv2d(c_in, c_out, 1, stride, bias=False)
            )
            if batchnorm:
                proj["bn"] = nn.BatchNorm2d(c_out)
            self.shortcut: nn.Module = nn.Sequential(proj)
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, c_in, h, w) -> (batch, c_out, h', w')
        h = self.conv1(x)
        h = self.relu1(h if self.bn1 is None else self.bn1(h))
        h = self.conv2(h)
        h = h if self.bn2 is None else self.bn2(h)
        return self.relu2(h + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem, stages of basic blocks, global
    average pool, one linear layer. See ``resnet``.
    """

    def __init__(self, c_in: int, n_classes: int, width: int, blocks: Sequence[int], batchnorm: bool,
                 dropout: float):  # fmt: skip
        super().__init__()
        stem: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(c_in, width, 3, 1, 1, bias=not batchnorm)
        )
        if batchnorm:
            stem["bn"] = nn.BatchNorm2d(width)
        stem["relu"] = nn.ReLU()
        self.stem = nn.Sequential(stem)
        c = width
        for s, n in enumerate(blocks):
            c_out, stride = width * 2**s, 1 if s == 0 else 2
            stage = [
                BasicBlock(c if b == 0 else c_out, c_out, stride if b == 0 else 1, batchnorm)
                for b in range(n)
            ]
            self.add_module(f"layer{s + 1}", nn.Sequential(*stage))
            c = c_out
        self.n_stages = len(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, c, h, w) -> (batch, classes)
        h = self.stem(x)
        for s in range(1, self.n_stages + 1):
            h = getattr(self, f"layer{s}")(h)
        h = self.flatten(self.pool(h))  # (batch, channels)
        return self.fc(h if self.drop is None else self.drop(h))


def resnet(
    input_shape: Sequence[int],
    n_classes: int,
    *,
    width: int = 16,
    blocks: Sequence[int] = (2, 2, 2),
    batchnorm: bool = True,
    dropout: float = 0.0,
    seed: int | None = None,
) -> ResNet:
    """A small CIFAR-style ResNet: stem conv (``width`` channels), then one stage per entry of
    ``blocks`` with that many basic blocks, channels ``width * 2**s`` and stride 1 for the first
    stage, 2 for the others (default: 3 stages of 2 blocks, channels 16, 32, 64: ResNet-14).

    Post-ReLU sites: ``stem.relu``, ``layer{s}.{b}.relu1`` (inside a block) and ``layer{s}.{b}.relu2``
    (after the residual add); then ``pool``, ``flatten``, ``drop`` (with ``dropout > 0``), ``fc``.
    Convs have no bias when batch-normed; conv weights are He-normal. ``seed`` as in ``mlp``.

    >>> net = resnet((1, 8, 8), 10, width=4, blocks=[1, 1], seed=0)
    >>> [n for n, m in net.named_modules() if isinstance(m, nn.ReLU)]
    ['stem.relu', 'layer1.0.relu1', 'layer1.0.relu2', 'layer2.0.relu1', 'layer2.0.relu2']
    """
    c_in = image_shape(input_shape)[0]
    positive_ints("n_classes", [n_classes], allow_empty=False, scalar=True)
    positive_ints("width", [width], allow_empty=False, scalar=True)
    blocks = list(blocks) if isinstance(blocks, list | tuple) else blocks
    positive_ints("blocks", blocks, allow_empty=False)
    check_switches(dropout, batchnorm)
    return seeded_init(lambda: kaiming_init(ResNet(c_in, n_classes, width, blocks, batchnorm, dropout)), seed)
