import time, sys, torch
torch.set_num_threads(2)
from lesion._alloc import tune_allocator; tune_allocator()
from lesion.engine import curves
from lesion.bench._common import FULL, _Context
from lesion.bench.methods import lesion_curves
from lesion.core.sites import find_sites
import numpy as np
ctx = _Context(FULL, 1, 2, False)
model, (x, y) = ctx.mlp, ctx.digits
sites = find_sites(model, x[:2])
units = [(s.name, i) for s in sites for i in range(s.width)]
rng = np.random.default_rng(0)
orders = [[units[i] for i in rng.permutation(len(units))] for _ in range(2)]
def run(g):
    curves._CurveState.gather = g
    sp = {}
    t = time.perf_counter()
    r = lesion_curves(model, x, y, sites, orders, FULL.mlp_batch, None, {}, sparsity=sp)
    return time.perf_counter() - t, r, sp
_, ref, _ = run(0.0)
for g in [None if a == "None" else float(a) for a in sys.argv[1:]]:
    t, r, sp = run(g)
    print(g, round(t, 2), float(np.abs(r - ref).max()), sp, flush=True)
