"""The bench's W1/W2 MLP, data, sites, units and random orders, set up as ``lesion bench`` does (2
threads, tuned allocator), for the A/B scripts beside this file."""

import numpy as np
import torch

from lesion._alloc import tune_allocator
from lesion.bench._common import FULL, _Context
from lesion.core.sites import find_sites

torch.set_num_threads(2)
tune_allocator()
ctx = _Context(FULL, 1, 2, False)
model, (x, y) = ctx.mlp, ctx.digits
sites = find_sites(model, x[:2])
units = [(s.name, i) for s in sites for i in range(s.width)]


def orders(n: int) -> list:
    """``n`` random orders over every hidden unit (numpy default_rng(0), as W2)."""
    rng = np.random.default_rng(0)
    return [[units[i] for i in rng.permutation(len(units))] for _ in range(n)]
