"""W4: peak resident memory of W1 at 60,000 examples, measured in a child process."""

from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lesion.bench._common import (
    _Context,
    mnist_examples,
)
from lesion.bench.methods import (
    lesion_single,
)
from lesion.bench.notes import _NOTES
from lesion.core.sites import find_sites
from lesion.util.alloc import tune_allocator


def w4(ctx: _Context) -> dict:
    """Peak memory of W1 at ``memory_examples`` examples with lesion, in a fresh child process."""
    s = ctx.sizes
    with tempfile.TemporaryDirectory() as tmp:
        weights, digits = Path(tmp) / "mlp.pt", Path(tmp) / "digits.pt"
        torch.save(ctx.mlp.state_dict(), weights)
        torch.save(mnist_examples(5_000), digits)  # reading mnist5k's CSV again would cost seconds
        spec = {"weights": str(weights), "digits": str(digits), "examples": s.memory_examples,
                "units": s.units, "batch": s.mlp_batch, "threads": ctx.threads}  # fmt: skip
        code = "import sys; from lesion.bench import memory_child; memory_child(sys.argv[1])"
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"W4: the measuring process failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "description": "peak resident memory of W1 (every hidden unit deleted alone) with lesion",
        "n_examples": s.memory_examples, "n_lesions": child.pop("n_lesions"), **child,
        "notes": _NOTES["W4"],
    }  # fmt: skip


def memory_child(spec_text: str) -> None:
    """W4's child process: load the model and data, reset the peak RSS, run W1 with lesion, print JSON."""
    spec = json.loads(spec_text)
    tune_allocator()
    torch.set_num_threads(spec["threads"])
    from lesion.models import mlp

    model = mlp((1, 28, 28), [512, 512], 10)
    model.load_state_dict(torch.load(spec["weights"], weights_only=True))
    model.eval()
    x, y = mnist_examples(spec["examples"], torch.load(spec["digits"], weights_only=True))
    sites = find_sites(model, x[:2])
    lesions = [(site.name, i) for site in sites for i in range(min(spec["units"], site.width))]
    lesion_single(model, x[:100], y[:100], sites, lesions[:2], spec["batch"])  # load lazy code paths
    gc.collect()
    _malloc_trim()  # hand freed heap pages back, so reused ones count towards the peak
    reset = _reset_peak()
    base = _status_kb("VmRSS")
    start = time.perf_counter()
    lesion_single(model, x, y, sites, lesions, spec["batch"])
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    print(json.dumps({
        "peak_mb": (peak - base) / 1024, "baseline_mb": base / 1024, "peak_rss_mb": peak / 1024,
        "data_mb": (x.nbytes + y.nbytes) / 2**20, "peak_reset": reset, "seconds": seconds,
        "n_lesions": len(lesions),
    }))  # fmt: skip


def _malloc_trim() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")
