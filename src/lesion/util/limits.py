"""Limits tied to this machine's memory, checked before anything large is allocated.

A model file or a Hugging Face ``config.json`` of a few kilobytes can describe gigabytes of weights or
activations; lesion computes the sizes from the description and compares them with these limits first.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_LAYERS = 1024  # blocks / hidden layers of one model: real models have at most a few hundred
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def machine_memory() -> int:
    """Bytes of memory this process may use: physical memory, or a smaller cgroup limit."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        total = 8 << 30
    for name in _CGROUP_LIMITS:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def parameter_limit() -> int:
    """Most parameters a model may have: half of ``machine_memory()`` in float32."""
    return machine_memory() // 2 // 4


def activation_limit() -> int:
    """Most values one example may produce at one layer: 1/16 of ``machine_memory()`` in float32, so
    that a batch of a few examples with its lesioned copies still fits."""
    return machine_memory() // 16 // 4


def gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def brief(value, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about untrusted input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
