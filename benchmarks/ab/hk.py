import time, torch
torch.set_num_threads(2)
from lesion._alloc import tune_allocator; tune_allocator()
from lesion.bench._common import FULL, _Context
from lesion.bench.methods import hook_single, _split
from lesion.core.sites import find_sites
ctx = _Context(FULL, 1, 2, False)
model, (x, y) = ctx.mlp, ctx.digits
sites = find_sites(model, x[:2])
units = [(s.name, i) for s in sites for i in range(s.width)]
b = _split(x, y, FULL.mlp_batch)
hook_single(model, b, units[:8], None)
t = time.perf_counter(); hook_single(model, b, units[::16], None); print("hook W1 est", (time.perf_counter()-t)*16)
