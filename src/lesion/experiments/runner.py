"""Jobs and the runner: train models and measure them, each job once, resumable, on any backend.

A ``Job`` is a kind (a registered function), JSON-able parameters and the jobs it reads. ``run`` executes
jobs in dependency order and skips every job whose content address is already finished in the store, so
re-running an interrupted run finishes it without redoing work. Independent jobs run at once on a
backend (``lesion.experiments.backends``: local worker processes, or a Ray cluster); the driver alone
publishes their outputs into the store.

Every job runs with a fixed number of torch threads (``threads``, default 1), in the driver, a worker
process or a Ray task alike, so a table does not depend on how many workers, or which machines,
computed it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesion.errors import LesionError
from lesion.experiments.backends import Backend, Session, get_backend
from lesion.experiments.job import KINDS, Job, JobFn, execute, kind
from lesion.experiments.store import Store
from lesion.util.progress import progress_bar

__all__ = ["KINDS", "Job", "JobFn", "RunReport", "execute", "kind", "plan", "run"]


@dataclass
class RunReport:
    """What ``run`` did: ``{key: finished directory}`` for every job, which keys it computed now, where."""

    paths: dict[str, Path]
    computed: list[str]
    reused: list[str]
    backend: dict[str, Any] = field(default_factory=dict)  # where the jobs ran (``Session.describe``)


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
    jobs: Iterable[Job],
    store: Store,
    *,
    progress: bool = False,
    workers: int = 1,
    threads: int = 1,
    backend: str | Backend = "local",
    address: str | None = None,
) -> RunReport:
    """Run what is not finished yet, each job with ``threads`` torch threads.

    ``backend="local"`` runs ``workers`` jobs at a time in worker processes (in this process when 1);
    ``backend="ray"`` sends jobs to the Ray cluster at ``address`` (default: a new local Ray instance
    with ``workers * threads`` CPUs) as tasks that request ``threads`` CPUs each. Either way the driver
    alone writes the run directory, publishing each job atomically as it returns.
    """

    _check_count("workers", workers)
    _check_count("threads", threads)
    order = plan(jobs)
    for job in order:
        if job.kind not in KINDS:
            raise LesionError(f"unknown job kind {job.kind!r}; known: {', '.join(sorted(KINDS))}")
    todo = [j for j in order if not store.reuse(j.key)]  # reuse hashes a finished job's files first
    chosen = get_backend(backend, workers=workers, threads=threads, address=address)
    with progress_bar(None, "jobs", progress, total=len(todo)) as bar, chosen.session(len(todo)) as session:
        _drive(store, todo, session, threads, bar)
        described = session.describe()
    done = {j.key for j in todo}
    return RunReport(
        paths={j.key: store.path(j.key) for j in order},
        computed=[j.key for j in todo],
        reused=[j.key for j in order if j.key not in done],
        backend=described,
    )


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LesionError(f"{name}={value!r}; expected a positive int")


def _drive(store: Store, todo: list[Job], session: Session, threads: int, bar) -> None:
    """Submit every job whose inputs are finished; publish each as it returns, in the driver."""
    waiting = list(todo)
    readers = Counter(d.key for j in todo for d in j.deps.values())  # pending jobs reading each output
    running: dict[Any, tuple[Job, Path]] = {}
    try:
        while waiting or running:
            for job in [j for j in waiting if all(store.done(d.key) for d in j.deps.values())]:
                if len(running) >= session.capacity:
                    break
                waiting.remove(job)
                tmp = store.begin(job.key)
                try:
                    running[session.submit(job, _inputs(store, job), tmp, threads)] = (job, tmp)
                except BaseException:
                    store.abort(tmp)
                    raise
                for dep in job.deps.values():
                    readers[dep.key] -= 1
                    if not readers[dep.key]:
                        session.release(dep.key)
            if not running:
                raise LesionError("jobs wait on inputs that no job produces")  # unreachable after plan
            for handle in session.wait(list(running)):
                job, tmp = running[handle]
                seconds = session.result(handle, tmp)  # a job's exception is raised here, tmp in `running`
                del running[handle]
                store.publish(job.key, job.spec() | {"seconds": round(seconds, 3)}, tmp)
                if not readers[job.key]:
                    session.release(job.key)
                bar.update()
    except BaseException:
        session.stop()  # running jobs stop writing before their temporary directories go
        for _, tmp in running.values():
            store.abort(tmp)
        raise


def _inputs(store: Store, job: Job) -> dict[str, Path]:
    return {n: store.path(d.key) for n, d in job.deps.items()}
