import time, sys, torch
import lesion.engine.batched as S
from lesion.bench.methods import lesion_single, lesion_curves
from _mlp import FULL, model, sites, units, x, y
import _mlp

orders = _mlp.orders(2)
orig = S.Engine.__init__


def run(kind, chunk, budget):
    def init(self, *a, **k):
        k["chunk_size"] = chunk
        k["budget_bytes"] = budget << 20
        orig(self, *a, **k)

    S.Engine.__init__ = init
    t = time.perf_counter()
    if kind == "w1":
        lesion_single(model, x, y, sites, units, FULL.mlp_batch, None, {}, sparsity={})
    else:
        lesion_curves(model, x, y, sites, orders, FULL.mlp_batch, None, {}, sparsity={})
    return time.perf_counter() - t


kind = sys.argv[1]
import lesion.engine.graph as G

sk = [a for a in sys.argv if a.startswith("skinny=")]
if sk:
    sys.argv.remove(sk[0])
    G.Plan.skinny = sk[0] == "skinny=1"
fixed = [a for a in sys.argv if a.startswith("share=")]
if fixed:
    sys.argv.remove(fixed[0])
    v = float(fixed[0][6:])
    G.Plan.gather_share = lambda *a, **k: v
run(kind, 1024, 8)  # warm-up
for spec in sys.argv[2:]:
    c, b = map(int, spec.split("/"))
    print(kind, c, b, round(run(kind, c, b), 2), flush=True)
