import torch, time
torch.set_num_threads(2)
from lesion._alloc import tune_allocator; tune_allocator()
from lesion.bench._common import FULL, _Context
from lesion.bench.methods import lesion_curves
from lesion.core.sites import find_sites
import numpy as np
ctx = _Context(FULL, 1, 2, False)
model, (x, y) = ctx.mlp, ctx.digits
sites = find_sites(model, x[:2])
units = [(s.name, i) for s in sites for i in range(s.width)]
rng = np.random.default_rng(0)
orders = [[units[i] for i in rng.permutation(len(units))] for _ in range(1)]
lesion_curves(model, x, y, sites, orders, FULL.mlp_batch, None, {}, sparsity={})
from torch.profiler import profile
t = time.perf_counter()
with profile() as p:
    lesion_curves(model, x, y, sites, orders, FULL.mlp_batch, None, {}, sparsity={})
print("wall", time.perf_counter() - t)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=22))
