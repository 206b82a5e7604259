"""Hand-weighted toy models whose selectivity and importance are computed on paper.

Two classes; an example of class 0 is x = (1, 0, 1), of class 1 x = (0, 1, 1) (the last input is a
constant 1). The hidden layer (site ``act``) has five post-ReLU units:

  u0 = relu(x0)      fires for class 0 only      -> selectivity 1, outgoing weight 0 -> importance 0
  u1 = relu(x2) = 1  same for both classes       -> selectivity 0, carries class 0's logit
  u2 = relu(x1)      fires for class 1 only      -> duplicate of u3
  u3 = relu(x1)      fires for class 1 only      -> duplicate of u2
  u4 = relu(-x2) = 0 never fires                 -> dead

Logits: z0 = 2 u1, z1 = 1 + 3 u2 + 3 u3. Intact: class 0 -> (2, 1), class 1 -> (2, 7): both right.
Delete u1: class 0 -> (0, 1), wrong: accuracy 1/2. Delete u2 alone: class 1 -> (2, 4), still right.
Delete u2 and u3: class 1 -> (2, 1), wrong: accuracy 1/2.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HIDDEN = torch.tensor(
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]]
)  # (units, inputs): the pre-activation of each hidden unit
OUT_W = torch.tensor([[0.0, 2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 3.0, 0.0]])
OUT_B = torch.tensor([0.0, 1.0])


def toy_data(per_class: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([[1.0, 0.0, 1.0]] * per_class + [[0.0, 1.0, 1.0]] * per_class)
    y = torch.tensor([0] * per_class + [1] * per_class)
    return x, y


def ce(z0: float, z1: float, label: int) -> float:
    """Cross-entropy of logits (z0, z1) for ``label``, written out."""
    mine, other = (z0, z1) if label == 0 else (z1, z0)
    return math.log(1 + math.exp(other - mine))


def mean_loss(class0_logits, class1_logits) -> float:
    return (ce(*class0_logits, 0) + ce(*class1_logits, 1)) / 2


class ToyMLP(nn.Module):
    """The toy as a plain module with named sites ``fc``, ``act``, ``out``."""

    def __init__(self):
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)
        with torch.no_grad():
            self.fc.weight.copy_(HIDDEN)
            self.fc.bias.zero_()
            self.out.weight.copy_(OUT_W)
            self.out.bias.copy_(OUT_B)

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


class ToyConv(nn.Module):
    """The same toy as a convnet: inputs are constant 2x2 planes, units are channels of ``act``.

    With ``batchnorm`` the 1x1 conv feeds a BatchNorm2d in eval mode (running mean 0, running var 4,
    weight 1, bias 1, eps 0: bn(p) = p / 2 + 1), and the conv weights are set so that bn(conv(x)) equals
    the MLP's pre-activations: p = 2 (target - 1).
    """

    def __init__(self, batchnorm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, kernel_size=1)
        self.bn = nn.BatchNorm2d(5, eps=0.0) if batchnorm else nn.Identity()
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.out = nn.Linear(5, 2)
        with torch.no_grad():
            w, b = HIDDEN.clone(), torch.zeros(5)
            if batchnorm:
                w, b = 2 * w, -2 * torch.ones(5)
                self.bn.running_mean.zero_()
                self.bn.running_var.fill_(4.0)
                self.bn.weight.fill_(1.0)
                self.bn.bias.fill_(1.0)
            self.conv.weight.copy_(w[:, :, None, None])
            self.conv.bias.copy_(b)
            self.out.weight.copy_(OUT_W)
            self.out.bias.copy_(OUT_B)
        self.eval()

    def forward(self, x):
        return self.out(self.flat(self.pool(self.act(self.bn(self.conv(x))))))


def toy_images(per_class: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = toy_data(per_class)
    return x[:, :, None, None].expand(-1, -1, 2, 2).contiguous(), y


class ToyResidual(nn.Module):
    """The toy with a residual block: h = act(fc(x)); g = branch_act(branch(h)); z = out((h + g) / 2).

    ``branch`` is the identity on the five units, so intact g = h and the logits equal the MLP's.
    """

    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(3, 5), nn.ReLU()
        self.branch, self.branch_act = nn.Linear(5, 5), nn.ReLU()
        self.out = nn.Linear(5, 2)
        with torch.no_grad():
            self.fc.weight.copy_(HIDDEN)
            self.fc.bias.zero_()
            self.branch.weight.copy_(torch.eye(5))
            self.branch.bias.zero_()
            self.out.weight.copy_(OUT_W)
            self.out.bias.copy_(OUT_B)

    def forward(self, x):
        h = self.act(self.fc(x))
        g = self.branch_act(self.branch(h))
        return self.out((h + g) / 2)


class Planted(nn.Module):
    """Roles planted by hand (lesion.roles' tests). Three classes; an input is (x0, x1, x2, m): x_c = 1
    for class c, and m = 1 marks a training example whose label was changed (class-2 input, label 0).

    act1: h0 = relu(x0), h1 = h2 = relu(x1) (duplicates), h3 = relu(-x0 - 1) (dead), h4 = relu(m)
    (carries the mislabeled examples only), h5 = relu(x2).
    act2: g0 = relu(h0), g1 = relu(h1 + h2), g2 = relu(h1 + h2 - 1), g3 = relu(h5), g4 = relu(h4).
    Logits: z0 = 4 g0 + 8 g4, z1 = 4 g1 - 4 g2 + 0.5 = 4 min(1, h1 + h2) + 0.5, z2 = 4 g3.
    Intact: class 0 -> (4, .5, 0), class 1 -> (0, 4.5, 0), class 2 -> (0, .5, 4), mislabeled -> (8, .5, 4).
    Deleting h1 or h2 alone changes nothing; both: class 1 -> (0, .5, 0), wrong. Deleting h0 (or g0):
    class 0 -> (0, .5, 0), wrong. Deleting h4: mislabeled -> (0, .5, 4), the label they were trained on
    lost, every other example unchanged.
    """

    W1 = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
    B1 = torch.tensor([0.0, 0, 0, -1, 0, 0])
    W2 = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1],
                       [0, 0, 0, 0, 1, 0]])  # fmt: skip
    B2 = torch.tensor([0.0, 0, -1, 0, 0])
    W3 = torch.tensor([[4.0, 0, 0, 0, 8], [0, 4, -4, 0, 0], [0, 0, 0, 4, 0]])
    B3 = torch.tensor([0.0, 0.5, 0])

    def __init__(self):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(4, 6), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(6, 5), nn.ReLU()
        self.out = nn.Linear(5, 3)
        with torch.no_grad():
            layers = (
                (self.fc1, self.W1, self.B1),
                (self.fc2, self.W2, self.B2),
                (self.out, self.W3, self.B3),
            )
            for lin, w, b in layers:
                lin.weight.copy_(w)
                lin.bias.copy_(b)

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.act1(self.fc1(x)))))


def planted_data(per_class: int = 10, mislabeled: int = 0):
    """(x, y) held-out-style data of ``Planted``; with ``mislabeled`` > 0 training data too:
    ``(x, trained labels, true labels)``."""
    rows, ys = [], []
    for c in range(3):
        rows += [[float(c == 0), float(c == 1), float(c == 2), 0.0]] * per_class
        ys += [c] * per_class
    x, y = torch.tensor(rows), torch.tensor(ys)
    if not mislabeled:
        return x, y
    x = torch.cat([x, torch.tensor([[0.0, 0, 1, 1]] * mislabeled)])
    true = torch.cat([y, torch.full((mislabeled,), 2)])
    return x, torch.cat([y, torch.zeros(mislabeled, dtype=torch.long)]), true
