import time, sys, torch
from lesion.engine import curves
from lesion.bench.methods import lesion_curves
import numpy as np
from _mlp import FULL, model, sites, x, y
import _mlp

orders = _mlp.orders(2)


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
