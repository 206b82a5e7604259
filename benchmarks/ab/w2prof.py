import torch, time
from lesion.bench.methods import lesion_curves
from _mlp import FULL, model, sites, x, y
import _mlp

orders = _mlp.orders(1)
lesion_curves(model, x, y, sites, orders, FULL.mlp_batch, None, {}, sparsity={})
from torch.profiler import profile

t = time.perf_counter()
with profile() as p:
    lesion_curves(model, x, y, sites, orders, FULL.mlp_batch, None, {}, sparsity={})
print("wall", time.perf_counter() - t)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=22))
