"""A job: a registered kind, JSON-able parameters and the jobs it reads; and how one job is executed.

The runner (``lesion.experiments.runner``) plans and drives jobs; the backends (local processes, Ray
tasks) execute them. Both import this module, and it imports neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesion.experiments.store import job_key

JobFn = Callable[[Mapping[str, Any], Mapping[str, Path], Path], None]
KINDS: dict[str, JobFn] = {}


def kind(name: str) -> Callable[[JobFn], JobFn]:
    """Register a job function ``fn(params, inputs: {dep name: finished dir}, out: dir)``."""

    def register(fn: JobFn) -> JobFn:
        KINDS[name] = fn
        return fn

    return register


@dataclass(frozen=True, eq=False)
class Job:
    """One unit of work: ``kind`` applied to ``params`` and the outputs of ``deps``."""

    kind: str
    params: Mapping[str, Any]
    deps: Mapping[str, Job] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return job_key(self.kind, dict(self.params), {n: d.key for n, d in self.deps.items()})

    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "params": dict(self.params),
            "deps": {n: d.key for n, d in self.deps.items()},
        }


def execute(
    fn: JobFn, params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path, threads: int
) -> float:
    """Run one job function into ``out`` with ``threads`` torch threads; return its wall time."""
    start = time.perf_counter()
    with _torch_threads(threads):
        fn(params, inputs, out)
    return time.perf_counter() - start


@contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
