import time, sys, torch

torch.set_num_threads(2)
from lesion._alloc import tune_allocator

print(tune_allocator())
from lesion.bench.lm import gpt_model, token_batches, lesion_units, hook_units, _units
from lesion.bench._common import FULL

model = gpt_model(FULL)
batches = token_batches(FULL)
units = _units(model, "head", 0)
info = {}
lesion_units(model, batches, units[:2], None, {})  # warm
t = time.perf_counter()
r = lesion_units(model, batches, units, None, info)
tl = time.perf_counter() - t
print("lesion", tl, info)
if "hook" in sys.argv:
    t = time.perf_counter()
    h = hook_units(model, batches, units[:8])
    th = (time.perf_counter() - t) * 4
    print("hook est", th, abs(h - r[:, :8]).max())
if "prof" in sys.argv:
    import cProfile, pstats

    cProfile.run("lesion_units(model, batches, units, None, {})", "/tmp/s/w6.prof")
    pstats.Stats("/tmp/s/w6.prof").sort_stats("cumulative").print_stats(40)
