import time, sys, torch
from lesion.engine import curves
from lesion.bench.methods import lesion_curves
from lesion.core.sites import find_sites
import numpy as np
from torch import nn
import _mlp

x, y = _mlp.x[:4096], _mlp.y[:4096]
torch.manual_seed(0)
model = nn.Sequential(
    nn.Flatten(),
    nn.Linear(784, 512),
    nn.ReLU(),
    nn.Linear(512, 512),
    nn.ReLU(),
    nn.Linear(512, 512),
    nn.ReLU(),
    nn.Linear(512, 512),
    nn.ReLU(),
    nn.Linear(512, 10),
).eval()
with torch.no_grad():
    for m in model:
        if isinstance(m, nn.Linear):
            m.bias.fill_(-0.05)
sites = find_sites(model, x[:2])
units = [(s.name, i) for s in sites[:1] for i in range(s.width)]
rng = np.random.default_rng(0)
orders = [[units[i] for i in rng.permutation(len(units))][:256]]


def run(g):
    curves._CurveState.gather = g
    sp = {}
    t = time.perf_counter()
    r = lesion_curves(model, x, y, sites, orders, 1024, None, {}, sparsity=sp)
    return time.perf_counter() - t, r, sp


_, ref, _ = run(0.0)
for g in [None if a == "None" else float(a) for a in sys.argv[1:]]:
    t, r, sp = run(g)
    print(
        g,
        round(t, 2),
        float(np.abs(r - ref).max()),
        sp["unchanged_fraction"],
        sp["skipped_fraction"],
        flush=True,
    )
