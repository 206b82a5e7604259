import time, sys, torch

torch.set_num_threads(2)
from lesion._alloc import tune_allocator

tune_allocator()
import lesion.engine.prefix as P
from lesion.bench.lm import gpt_model, token_batches, lesion_units, hook_units, _units
from lesion.bench._common import FULL

model = gpt_model(FULL)
batches = token_batches(FULL)
units = _units(model, "neuron", 1024)[::16]
lesion_units(model, batches, units[:2], None, {})
for mb in [int(a) for a in sys.argv[1:]]:
    P.MAX_PASS_BYTES = mb << 20
    t = time.perf_counter()
    r = lesion_units(model, batches, units, None, {})
    print(len(units), mb, "MB", time.perf_counter() - t, flush=True)
