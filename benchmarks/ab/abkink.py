"""W1 with the ReLU-head kink shortcut on and off, alternating in one process: times, the largest
difference between the two tables, and the kinks corrected. ``python abkink.py [REPEATS]``."""

import sys
import time

import numpy as np
from _mlp import FULL, model, sites, units, x, y

import lesion.engine.batched as S
from lesion.bench.methods import lesion_single
from lesion.core.lesions import Lesion
from lesion.core.runner import Runner
from lesion.core.sweep import evaluate_lesions
from lesion.core.units import Unit

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
times, values = {True: [], False: []}, {}
lesion_single(model, x, y, sites, units, FULL.mlp_batch, None, {}, sparsity={})  # warm-up
for _ in range(repeats):
    for on in (True, False):
        S.Engine.kinks_on = on
        t = time.perf_counter()
        values[on] = lesion_single(model, x, y, sites, units, FULL.mlp_batch, None, {}, sparsity={})
        times[on].append(time.perf_counter() - t)
print({("on" if k else "off"): [round(t, 2) for t in v] for k, v in times.items()})
print("max |diff| accuracy, loss:", np.abs(values[True] - values[False]).max(1))
S.Engine.kinks_on = True
runner = Runner(model, (x, y), sites, batch_size=FULL.mlp_batch)
evaluate_lesions(runner, runner.fit([Lesion([Unit(n, i)]) for n, i in units]))
eng = runner.engine()
print(f"kinks corrected {eng.kinks:,}, blocks declined {eng.declined}")
