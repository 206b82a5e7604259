"""Memory-aware batching: examples per batch chosen from a memory budget, and retries on out-of-memory.

``max_memory`` bounds the resident memory of the whole process: the batches get what the budget leaves
beyond what the process already holds (the libraries, the model, the data), so the peak stays under it.
The cost of one example is measured, not guessed: one forward pass of one example with autograd on
(what an attribution pass keeps for its backward) sums every module's output, and a batch is sized so
that ``FACTOR`` times that (the saved outputs, their gradients, temporaries) fits what is left. The
engines' own passes are bounded separately (32 MB of outputs per lesioned pass); the module-prefix
engine's cache of recorded outputs is capped at a quarter of what is left. ``plan`` without
``max_memory`` budgets what the process holds plus 80% of the machine's available memory; ``sweep``
without one keeps its batch size and measures nothing (no pass of its own), relying on the retries.

Running out of memory anyway (``MemoryError``, or torch's ``RuntimeError`` "out of memory" / "can't
allocate memory", however wrapped) retries the same work with half the batch, down to one example;
``df.attrs["memory"]`` records the budget, the batch and the retries.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from lesion.core.batch import Data, first_batch, output_tensor
from lesion.core.sites import Site
from lesion.errors import LesionError
from lesion.util.modules import eval_mode, model_device

FACTOR = 3.0  # bytes a batch holds per byte of one example's module outputs (saved, gradients, temporaries)
RESERVE = 64 << 20  # left free beyond the batches: allocator slack, the metric's sums, the bar
DEFAULT_SHARE = 0.8  # of the machine's available memory, when no budget is given
_SUFFIX = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12,
           "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
T = TypeVar("T")


def parse_bytes(value: Any) -> int:
    """Bytes from an int or a size like ``"4GB"``, ``"512MB"``, ``"1.5GiB"``."""
    if isinstance(value, bool):
        raise LesionError(f"max_memory={value!r}; expected bytes (an int) or a size like '4GB'")
    if isinstance(value, int | float):
        got = int(value)
    else:
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(value).lower())
        if not found or found.group(2) not in _SUFFIX:
            raise LesionError(f"max_memory={value!r}; expected bytes (an int) or a size like '4GB', '512MB'")
        got = int(float(found.group(1)) * _SUFFIX[found.group(2)])
    if got <= 0:
        raise LesionError(f"max_memory={value!r}; expected a positive size")
    return got


def resident() -> int:
    """Bytes this process holds now (resident set size)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak: an upper bound


def available() -> int | None:
    """Bytes the machine can still give (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def example_bytes(model: nn.Module, data: Data) -> int:
    """Bytes of every module's output for one example, with autograd on (what a backward pass keeps)."""
    sizes: list[int] = []

    def hook(_m, _inputs, out) -> None:
        stack = [out]
        while stack:
            x = stack.pop()
            if isinstance(x, torch.Tensor):
                sizes.append(x.numel() * x.element_size())
            elif isinstance(x, list | tuple):
                stack.extend(x)
            elif isinstance(x, dict):
                stack.extend(x.values())

    b = first_batch(data, 1).to(model_device(model))
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.enable_grad(), eval_mode(model):
            out = output_tensor(b.run(model))
            sizes.append(out.numel() * out.element_size())
    finally:
        for h in handles:
            h.remove()
    return max(1, sum(sizes))


def plan(model: nn.Module, data: Data, max_memory: Any, batch_size: int) -> dict:
    """``{"batch_size", "cache_bytes", "budget", "held", "per_example"}``: the largest batch (at most
    ``batch_size``) whose examples fit the budget beyond what the process holds now."""
    held = resident()
    if max_memory is None:
        free = available()
        if free is None:
            return {"batch_size": batch_size, "cache_bytes": None, "budget": None, "held": held}
        budget = held + int(DEFAULT_SHARE * free)
    else:
        budget = parse_bytes(max_memory)
    per = example_bytes(model, data)
    left = budget - resident() - RESERVE
    need = int(FACTOR * per)
    if left < need:
        raise LesionError(
            f"max_memory={_mb(budget)} is below one example: this process holds {_mb(resident())} "
            f"(libraries, model, data) and one example needs about {_mb(need)} more (activations, "
            "gradients); "
            f"expected at least {_mb(resident() + RESERVE + need)}"
        )
    cache = min(512 << 20, left // 4)
    fit = max(1, (left - cache) // need)
    return {"batch_size": int(min(batch_size, fit)), "cache_bytes": int(cache), "budget": int(budget),
            "held": int(held), "per_example": int(per)}  # fmt: skip


def plan_batch(model: nn.Module, data: Data, sites: Sequence[Site], max_memory: Any, batch_size: int) -> int:
    """The batch size ``plan`` chooses (``sites`` unused: every module's output counts)."""
    return plan(model, data, max_memory, batch_size)["batch_size"]


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is an allocation failure."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
            return True
        text = str(exc).lower()
        if isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retrying(call: Callable[[int], T], batch_size: int, record: dict) -> T:
    """``call(batch_size)``, and on out-of-memory again with half the batch (down to 1); ``record`` gets
    ``batch_size`` (the one that finished) and ``retries``."""
    while True:
        try:
            got = call(batch_size)
            record["batch_size"] = batch_size
            return got
        except Exception as exc:  # torch's errors may come wrapped (the runner's DataError names the batch)
            if not out_of_memory(exc) or batch_size <= 1:
                raise
            record["retries"] = record.get("retries", 0) + 1
            record.setdefault("errors", []).append(f"{type(exc).__name__} at batch {batch_size}")
            batch_size = max(1, batch_size // 2)
            del exc
            gc.collect()


__all__ = ["out_of_memory", "parse_bytes", "plan", "plan_batch", "resident", "retrying"]
