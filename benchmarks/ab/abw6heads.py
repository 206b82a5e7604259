"""W6 (every head of the bench GPT-2) with the heads' closed form on and off (``prefix.HEAD_STUB``) and the
hook loop, alternately in one process: CPU seconds, the hook loop's time over lesion's, and that as a
share of the exact method's possible speed-up (1.87 on W6's shape, from ``lesion bench``'s floors).

Usage: python benchmarks/ab/abw6heads.py [SEQUENCES=64] [REPEATS=3] [THREADS=1]
"""

import dataclasses
import os
import sys
import time

import numpy as np
import torch

import lesion.engine.prefix as prefix
from lesion.bench._common import FULL
from lesion.bench.lm import _units, gpt_model, hook_units, lesion_units, token_batches
from lesion.util.alloc import tune_allocator

POSSIBLE = 1.87  # W6: (hook-loop floor) / (lesion floor), as lesion bench computes them


def main() -> None:
    seqs = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    tune_allocator()
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    sizes = dataclasses.replace(FULL, lm_sequences=seqs, lm_batch=seqs)
    model, batches = gpt_model(sizes), token_batches(sizes)
    units = _units(model, "head", sizes.lm_units)

    def closed(on: bool):
        def run():
            prefix.HEAD_STUB = on
            try:
                return lesion_units(model, batches, units)
            finally:
                prefix.HEAD_STUB = True

        return run

    arms = {"hook": lambda: hook_units(model, batches, units), "lesion, heads re-run": closed(False),
            "lesion, heads closed form": closed(True)}  # fmt: skip
    out = {name: f() for name, f in arms.items()}  # warm-up
    times = {name: [] for name in arms}
    for _ in range(reps):
        for name, f in arms.items():
            c = time.process_time()
            f()
            times[name].append(time.process_time() - c)
    hook = float(np.median(times["hook"]))
    for name in arms:
        med = float(np.median(times[name]))
        diff = float(np.abs(out[name][1] - out["hook"][1]).max())
        share = (
            ""
            if name == "hook"
            else f", hook/lesion {hook / med:.3f} = {hook / med / POSSIBLE:.0%} of possible"
        )
        print(
            f"{name}: CPU s {[round(t, 2) for t in times[name]]}, median {med:.2f}{share}; "
            f"|loss - hook| {diff:.2g}"
        )
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
