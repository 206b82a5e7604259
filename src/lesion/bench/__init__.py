"""Side-by-side timings of lesion against its peers (``lesion bench``), following shared/PEERS.md.

Workloads (full sizes; ``quick=True`` shrinks each one):
- W1: each of the 1,024 hidden units of a 784-512-512-10 MLP deleted alone, accuracy and loss on
  10,000 examples: lesion (``a single-unit sweep``, the engine) vs Captum's LayerFeatureAblation
  (perturbations_per_eval 1, 4, 16) vs one forward pass per unit with a zeroing hook.
- W2: cumulative curves, 10 random orders over all 1,024 units, every count (1,025 points per order):
  lesion (``cumulative curves``) vs the hook loop (one forward pass per count).
- W3: each channel of the last three conv layers of the paper's convnet (width 0.5, batch norm) deleted
  alone on 2,000 28x28 images: lesion vs Captum (a feature mask per channel).
- W4: peak resident memory of W1 at 60,000 examples with lesion, in a child process.
- W5, W6: each MLP neuron / attention head of a 4-block GPT-2-architecture model (d_model 256, 1,024
  neurons, 8 heads) deleted alone, next-token loss on 64 sequences of 128 tokens: lesion vs a hook loop,
  Captum, TransformerLens and nnsight (``lesion.bench.lm``); W7: the attribution estimate of every W5
  neuron against the exact sweep.
- W8-W11 (real sizes from configs, random weights; not in the default run, ``--only W8`` etc.): every
  head of GPT-2 small (W8), every neuron of its last block (W9), every unit of it by triage (W10), and
  every head of a ~1 B Llama-style GQA model (W11), each beside a hook loop, with units/s and peak memory
  (``lesion.bench._real``); ``device="cuda", precision="bf16"`` runs them on a GPU, and until one has,
  their GPU rows are listed as not measured.
- S1: W1's time with lesion alone against the number of examples (1,000-60,000) and the layer width
  (128-2,048), with fitted power-law exponents (``lesion.bench.scaling``; ``plot_scaling`` draws it).

Every method runs in this process on the same model, data and thread count. Its numbers are checked
against lesion's on a few units first (that run is also its warm-up), then it is timed (median of
``repeats`` runs), and its last timed run is checked against lesion's on everything. A method's floor is
the arithmetic it must do (``_SiteCost``) divided by the GFLOP/s of a large GEMM timed in the same run.

Data: mnist5k's 5,000 real digits (its seed-0 train split, then its test split) tiled to the size
needed, so every run sees the same examples. The MLP is trained on the 4,000 training digits for 2
epochs (1 in quick mode; seed 0); the convnet keeps its seed-0 random weights, with batch-norm
statistics estimated on the W3 images (training it would cost minutes and does not change the work).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lesion.bench._common import (
    FULL,
    QUICK,
    Mismatch,
    Sizes,
    _captum_version,
    _Context,
)
from lesion.bench._common import (
    _agree as _agree,  # for the tests
)
from lesion.bench._common import (
    _captum_missing as _captum_missing,
)
from lesion.bench.floor import _SiteCost, single_flops, site_costs  # noqa: F401
from lesion.bench.lm import w5, w6, w7
from lesion.bench.scaling import plot_scaling, s1
from lesion.bench.table import table
from lesion.bench.w1 import w1
from lesion.bench.w2 import w2
from lesion.bench.w3 import w3
from lesion.bench.w4 import memory_child, w4
from lesion.bench.w8 import w8
from lesion.bench.w9 import w9
from lesion.bench.w10 import w10
from lesion.bench.w11 import w11
from lesion.errors import LesionError
from lesion.util.alloc import tune_allocator

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "S1", "W8", "W9", "W10", "W11")
DEFAULT = WORKLOADS[:8]  # the real-size workloads W8-W11 run when named (--only): hours at full size on a CPU
REAL = WORKLOADS[8:]  # the ones that also run on another device or in bf16 (``device=``, ``precision=``)


def run(
    *,
    quick: bool = False,
    repeats: int = 3,
    threads: int = 2,
    only: Sequence[str] | None = None,
    progress: bool = False,
    device: str = "cpu",
    precision: str = "fp32",
) -> dict:
    """Run the chosen workloads (default: all) and return the results as a JSON-able dict.

    ``device`` (cpu, cuda, cuda:1, ...) and ``precision`` (fp32, bf16) apply to the real-size workloads
    W8-W11, which run alone when either is not the default and ``only`` is None. Sets torch's thread
    count to ``threads`` for the run (restored afterwards) and tunes glibc malloc. Raises LesionError for
    unknown workload names, a device or precision the chosen workloads do not take or this machine does
    not have (before any timing), Mismatch where a method disagrees with lesion.
    """
    chosen = _choose(only, default=REAL if (device, precision) != ("cpu", "fp32") else DEFAULT)
    if repeats < 1 or threads < 1:
        raise LesionError(f"repeats={repeats}, threads={threads}; expected positive ints")
    check_device(device, precision, chosen)
    tuned = tune_allocator()
    load_start = os.getloadavg()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ctx = _Context(
            QUICK if quick else FULL, repeats, threads, progress, device=device, precision=precision
        )
        workloads = {}
        for name in chosen:
            start = time.perf_counter()
            workloads[name] = _WORKLOADS[name](ctx) | {"wall_seconds": time.perf_counter() - start}
    finally:
        torch.set_num_threads(previous)
    return {
        "machine": machine(threads, tuned, load_start),
        "settings": {"quick": quick, "repeats": repeats, "threads": threads, "workloads": list(chosen)}
        | {"device": device, "precision": precision, "sizes": asdict(ctx.sizes)},
        "gemm": ctx.gemm,
        "setup_seconds": ctx.setup_seconds,
        "quiet_machine": {
            "quietest_other_cores_busy": None if ctx.quietest == float("inf") else ctx.quietest,
            "retimed": ctx.retimed,
        },
        "workloads": workloads,
    }


def save(results: dict, path: str | Path) -> None:
    """Write ``results`` as indented JSON, through a temporary file beside ``path``."""
    from lesion.util.outputs import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n"))


def machine(threads: int, tuned: bool, load_start: tuple[float, ...]) -> dict:
    """CPU, core count, library versions, date and load averages (a loaded machine times slowly)."""
    cpu = platform.processor() or "unknown"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from lesion.util import VERSION as __version__

    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "numpy": np.__version__, "captum": _captum_version(),
        "lesion": __version__, "python": platform.python_version(), "threads": threads,
        "malloc_tuned": tuned, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_start": [round(v, 2) for v in load_start],
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip


def check_device(device: str, precision: str, chosen: Sequence[str]) -> None:
    """LesionError unless ``precision`` is fp32 or bf16, ``device`` is cpu or cuda[:N] and present here,
    and every chosen workload takes them (W1-W7 and S1 run on the CPU in fp32; W1 has its own bf16 row)."""
    if precision not in ("fp32", "bf16"):
        raise LesionError(f"precision {precision!r}; expected fp32 or bf16")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not (kind == "cuda" and index.isdigit())):
        raise LesionError(f"device {device!r}; expected cpu, cuda or cuda:N")
    other = [n for n in chosen if n not in REAL]
    if (device, precision) != ("cpu", "fp32") and other:
        raise LesionError(
            f"--device {device} --precision {precision} apply to the real-size workloads {', '.join(REAL)}; "
            f"{', '.join(other)} run on the CPU in fp32 (W1 times bf16 itself): expected --only among "
            f"{', '.join(REAL)}"
        )
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise LesionError(
                f"--device {device}: no CUDA device here (torch.cuda.is_available() is False); the GPU "
                "rows of W8-W11 stay 'not measured' until the bench runs on a machine with one"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise LesionError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")


def _choose(only: Sequence[str] | None, default: tuple[str, ...] = DEFAULT) -> tuple[str, ...]:
    if only is None:
        return default
    names = tuple(dict.fromkeys(n.strip().upper() for n in only if n.strip()))
    bad = [n for n in names if n not in WORKLOADS]
    if bad or not names:
        raise LesionError(f"workloads {list(only)!r}; expected some of {', '.join(WORKLOADS)}")
    return tuple(n for n in WORKLOADS if n in names)


_WORKLOADS: dict[str, Callable[[_Context], dict]] = {
    "W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "W7": w7, "S1": s1, "W8": w8, "W9": w9,
    "W10": w10, "W11": w11,
}  # fmt: skip

__all__ = [
    "FULL",
    "QUICK",
    "REAL",
    "WORKLOADS",
    "Mismatch",
    "Sizes",
    "check_device",
    "memory_child",
    "plot_scaling",
    "run",
    "save",
    "single_flops",
    "site_costs",
    "table",
]  # fmt: skip
