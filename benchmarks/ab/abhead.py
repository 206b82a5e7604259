"""W2 orders with the lean head loop (``lesion.engine.headcurve``) on and off, alternating in one process:
times (wall and process CPU), the largest difference between the two curves, and the gathering share.
``python abhead.py [ORDERS] [REPEATS] [GATHER ...]``: GATHER values are timed with the loop on."""

import sys
import time

import numpy as np
from _mlp import FULL, model, orders, sites, x, y

import lesion.engine.headcurve as H
import lesion.engine.batched as S
from lesion.bench.methods import lesion_curves

n_orders = int(sys.argv[1]) if len(sys.argv) > 1 else 1
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
shares = [float(v) for v in sys.argv[3:]] or [H.GATHER]
os_ = orders(n_orders)
configs = [("graph", None)] + [(f"head gather={s}", s) for s in shares]
times, values = {c: [] for c, _ in configs}, {}
lesion_curves(model, x[:2000], y[:2000], sites, os_, FULL.mlp_batch, None, {}, sparsity={})  # warm-up
for _ in range(repeats):
    for name, share in configs:
        S.Engine.head_curves = share is not None
        if share is not None:
            H.GATHER = share
        t, c = time.perf_counter(), time.process_time()
        values[name] = lesion_curves(model, x, y, sites, os_, FULL.mlp_batch, None, {}, sparsity={})
        times[name].append((time.perf_counter() - t, time.process_time() - c))
for name, ts in times.items():
    wall, cpu = [w for w, _ in ts], [c for _, c in ts]
    print(
        f"{name}: wall {[round(w, 2) for w in wall]} (median {np.median(wall):.2f}), cpu median {np.median(cpu):.2f}"
    )
for name, _ in configs[1:]:
    print(f"max |diff| accuracy, loss ({name} vs graph):", np.abs(values[name] - values["graph"]).max((1, 2)))
