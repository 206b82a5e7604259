import torch
torch.set_num_threads(2)
from lesion._alloc import tune_allocator; tune_allocator()
from lesion.bench._common import FULL, _Context
from lesion.bench.methods import lesion_single
from lesion.core.sites import find_sites
ctx = _Context(FULL, 1, 2, False)
model, (x, y) = ctx.mlp, ctx.digits
sites = find_sites(model, x[:2])
units = [(s.name, i) for s in sites for i in range(s.width)]
lesion_single(model, x, y, sites, units, FULL.mlp_batch, None, {}, sparsity={})
from torch.profiler import profile
with profile() as p:
    lesion_single(model, x, y, sites, units, FULL.mlp_batch, None, {}, sparsity={})
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
