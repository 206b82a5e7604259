"""Jobs and the local runner: train models and measure them, each job once, resumable.

A ``Job`` is a kind (a registered function), JSON-able parameters and the jobs it reads. ``run`` executes
jobs in dependency order and skips every job whose content address is already finished in the store, so
re-running an interrupted run finishes it without redoing work. With ``workers > 1`` independent jobs
run at once in worker processes; the driver alone publishes their outputs into the store.

Every job runs with a fixed number of torch threads (``threads``, default 1), in the driver or in a
worker alike, so a table does not depend on how many workers computed it.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
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


@dataclass
class RunReport:
    """What ``run`` did: ``{key: finished directory}`` for every job, and which keys it computed now."""

    paths: dict[str, Path]
    computed: list[str]
    reused: list[str]


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


def run(
    jobs: Iterable[Job], store: Store, *, progress: bool = False, workers: int = 1, threads: int = 1
) -> RunReport:
    """Run what is not finished yet, ``workers`` jobs at a time, each with ``threads`` torch threads."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise LesionError(f"workers={workers!r}; expected a positive int")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise LesionError(f"threads={threads!r}; expected a positive int")
    order = plan(jobs)
    for job in order:
        if job.kind not in KINDS:
            raise LesionError(f"unknown job kind {job.kind!r}; known: {', '.join(sorted(KINDS))}")
    todo = [j for j in order if not store.done(j.key)]
    with progress_bar(None, "jobs", progress, total=len(todo)) as bar:
        if workers == 1 or len(todo) <= 1:
            for job in todo:
                _publish(store, job, *_in_process(store, job, threads))
                bar.update()
        else:
            _in_pool(store, todo, workers, threads, bar)
    done = {j.key for j in todo}
    return RunReport(
        paths={j.key: store.path(j.key) for j in order},
        computed=[j.key for j in todo],
        reused=[j.key for j in order if j.key not in done],
    )


def _in_process(store: Store, job: Job, threads: int) -> tuple[Path, float]:
    tmp = store.begin(job.key)
    try:
        seconds = execute(KINDS[job.kind], job.params, _inputs(store, job), tmp, threads)
    except BaseException:
        store.abort(tmp)
        raise
    return tmp, seconds


def _in_pool(store: Store, todo: list[Job], workers: int, threads: int, bar) -> None:
    """Submit every job whose inputs are finished; publish each as it returns, in the driver."""
    waiting = list(todo)
    running: dict[Future, tuple[Job, Path]] = {}
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        try:
            while waiting or running:
                for job in [j for j in waiting if all(store.done(d.key) for d in j.deps.values())]:
                    if len(running) >= workers:
                        break
                    waiting.remove(job)
                    tmp = store.begin(job.key)
                    fut = pool.submit(execute, KINDS[job.kind], job.params, _inputs(store, job), tmp, threads)
                    running[fut] = (job, tmp)
                if not running:
                    raise LesionError("jobs wait on inputs that no job produces")  # unreachable after plan
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job, tmp = running[fut]
                    seconds = fut.result()  # a job's exception is raised here, its tmp still in `running`
                    del running[fut]
                    _publish(store, job, tmp, seconds)
                    bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # let running jobs stop writing first
            for _, tmp in running.values():
                store.abort(tmp)
            raise


def _worker_init() -> None:
    from lesion._alloc import tune_allocator

    tune_allocator()


def _publish(store: Store, job: Job, tmp: Path, seconds: float) -> None:
    store.publish(job.key, job.spec() | {"seconds": round(seconds, 3)}, tmp)


def _inputs(store: Store, job: Job) -> dict[str, Path]:
    return {n: store.path(d.key) for n, d in job.deps.items()}


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
