"""Jobs and the local runner: train models and measure them, each job once, resumable.

A ``Job`` is a kind (a registered function), JSON-able parameters and the jobs it reads. ``run`` executes
jobs in dependency order and skips every job whose content address is already finished in the store, so
re-running an interrupted run finishes it without redoing work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesion._progress import progress_bar
from lesion.errors import LesionError
from lesion.experiments.store import Store, job_key

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


def plan(jobs: Iterable[Job]) -> list[Job]:
    """Every job and its dependencies once, dependencies first."""
    order: list[Job] = []
    seen: set[str] = set()

    def visit(job: Job, stack: tuple[str, ...]) -> None:
        key = job.key
        if key in stack:
            raise LesionError(f"jobs depend on each other in a cycle through {job.kind} {key}")
        if key in seen:
            return
        for dep in job.deps.values():
            visit(dep, (*stack, key))
        seen.add(key)
        order.append(job)

    for j in jobs:
        visit(j, ())
    return order


def run(jobs: Iterable[Job], store: Store, *, progress: bool = False) -> dict[str, Path]:
    """Run what is not finished yet; return ``{key: finished directory}`` for every job."""
    order = plan(jobs)
    for job in order:
        if job.kind not in KINDS:
            raise LesionError(f"unknown job kind {job.kind!r}; known: {', '.join(sorted(KINDS))}")
    todo = [j for j in order if not store.done(j.key)]
    with progress_bar(todo, "jobs", progress) as bar:
        for job in bar:
            inputs = {n: store.path(d.key) for n, d in job.deps.items()}
            store.commit(
                job.key,
                job.spec(),
                lambda out, job=job, inputs=inputs: KINDS[job.kind](job.params, inputs, out),
            )
    return {j.key: store.path(j.key) for j in order}
