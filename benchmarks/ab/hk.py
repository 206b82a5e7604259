import time, torch
from lesion.bench.methods import hook_single, _split
from _mlp import FULL, model, units, x, y

b = _split(x, y, FULL.mlp_batch)
hook_single(model, b, units[:8], None)
t = time.perf_counter()
hook_single(model, b, units[::16], None)
print("hook W1 est", (time.perf_counter() - t) * 16)
