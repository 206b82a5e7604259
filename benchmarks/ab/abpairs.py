"""Pair lesions of the pairs MLP (benchmarks/pairs_mlp.py's model and data) with this tree's
``lesion.engine.pairs.pair_units`` and with the one at git revision REV, alternately in one process,
engine only (no checks, no table); CPU seconds and the largest difference of the two tables.

Usage: python benchmarks/ab/abpairs.py N LAYER REPEATS REV [THREADS]
  N: the pairs whose first unit is below N; LAYER: 1 (first hidden layer) or 3 (last); REV: e.g. dced826
  (the code before the hinge path). One thread by default: on a shared machine CPU seconds of one thread
  are what stays comparable (two threads wait on each other when the cores are busy).
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from pairs_mlp import trained

from lesion.core.runner import Runner
from lesion.core.sites import find_sites
from lesion.data._builtin import load_dataset
from lesion.engine.dispatch import engine_of
from lesion.util.alloc import tune_allocator


def old_module(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:src/lesion/engine/pairs.py"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    path = os.path.join(tempfile.mkdtemp(), "oldpairs.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("oldpairs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # its imports resolve against this tree
    return mod


def main() -> None:
    n, layer, reps, rev = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    tune_allocator()
    torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
    import lesion.engine.pairs as new

    d = load_dataset("fashion-mnist")
    net = trained(d)
    x, y = d.x_test.reshape(len(d.x_test), -1), d.y_test
    runner = Runner(net, (x, y), find_sites(net, x[:2]))
    eng = engine_of(runner)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, 512)]
    got = {}
    for r in range(reps):
        for name, mod in (("before", old_module(rev) if r == 0 else got["mod"]), ("now", new)):
            if name == "before":
                got["mod"] = mod
            m = runner.fresh(len(pairs))
            t, c = time.perf_counter(), time.process_time()
            with torch.no_grad():
                mod.pair_units(eng, layer, pairs, None, m)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            got[name] = m.compute()
            print(
                f"{name}: {len(pairs)} pairs, {wall:.1f} s wall, {cpu:.1f} s CPU, "
                f"load {os.getloadavg()[0]:.2f}"
            )
    for k in ("loss", "accuracy"):
        print(k, "largest difference", float(np.abs(got["before"][k] - got["now"][k]).max()))


if __name__ == "__main__":
    main()
