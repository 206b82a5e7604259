import time, sys, torch
torch.set_num_threads(2)
from lesion._alloc import tune_allocator; tune_allocator()
import lesion.engine.sweeps as S
from lesion.bench._common import FULL, _Context
from lesion.bench.methods import lesion_single, lesion_curves
from lesion.core.sites import find_sites
import numpy as np
ctx = _Context(FULL, 1, 2, False)
model, (x, y) = ctx.mlp, ctx.digits
sites = find_sites(model, x[:2])
units = [(s.name, i) for s in sites for i in range(s.width)]
rng = np.random.default_rng(0)
orders = [[units[i] for i in rng.permutation(len(units))] for _ in range(2)]
orig = S.Engine.__init__
def run(kind, chunk, budget):
    def init(self, *a, **k):
        k["chunk_size"] = chunk; k["budget_bytes"] = budget << 20
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
if sk: sys.argv.remove(sk[0]); G.Plan.skinny = sk[0] == "skinny=1"
fixed = [a for a in sys.argv if a.startswith("share=")]
if fixed: sys.argv.remove(fixed[0]); v = float(fixed[0][6:]); G.Plan.gather_share = lambda *a, **k: v
run(kind, 1024, 8)  # warm-up
for spec in sys.argv[2:]:
    c, b = map(int, spec.split("/"))
    print(kind, c, b, round(run(kind, c, b), 2), flush=True)
