import torch
from lesion.bench.methods import lesion_single
from _mlp import FULL, model, sites, units, x, y

lesion_single(model, x, y, sites, units, FULL.mlp_batch, None, {}, sparsity={})
from torch.profiler import profile

with profile() as p:
    lesion_single(model, x, y, sites, units, FULL.mlp_batch, None, {}, sparsity={})
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
