"""Where jobs run: in this process, in local worker processes, or on a Ray cluster (``ray_backend``).

A backend opens a ``Session`` for one ``run``. The runner asks the session to ``submit`` a job whose
inputs are finished (with a fresh private output directory), ``wait``s for some to finish, and reads each
``result`` (the job's wall time; its outputs are then in that directory, or its exception is raised).
The runner alone publishes outputs into the store, so no backend ever writes a finished job directory,
and every backend runs a job the same way (``runner.execute``: same function, same torch threads), so a
table does not depend on the backend.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from lesion.errors import LesionError
from lesion.experiments.job import KINDS, Job, execute

BACKENDS = ("local", "ray")


class Session(Protocol):
    """One run's use of a backend (see the module docstring)."""

    capacity: int  # jobs in flight at most

    def submit(self, job: Job, inputs: Mapping[str, Path], out: Path, threads: int) -> Any: ...

    def wait(self, handles: list) -> list: ...

    def result(self, handle: Any, out: Path) -> float: ...

    def release(self, key: str) -> None: ...

    def stop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class Backend(Protocol):
    def session(self, jobs: int) -> AbstractContextManager[Session]: ...


def get_backend(
    backend: str | Backend,
    *,
    workers: int = 1,
    threads: int = 1,
    address: str | None = None,
    connect_timeout: float = 30.0,
) -> Backend:
    """The backend named ``backend`` ("local" or "ray"), or ``backend`` itself if it is one.

    A new local Ray instance (``"ray"`` without ``address``) gets ``workers * threads`` CPUs; a Ray
    ``address`` that accepts no connection within ``connect_timeout`` seconds is a LesionError.
    """
    if not isinstance(backend, str):
        if address is not None:
            raise LesionError("address= goes with backend='ray'; a backend object carries its own address")
        return backend
    if backend == "local":
        if address is not None:
            raise LesionError(f"address={address!r} needs backend='ray'; the local backend has no address")
        return LocalBackend(workers)
    if backend == "ray":
        from lesion.backends.ray import RayBackend

        cpus = None if address else workers * threads
        return RayBackend(address=address, cpus=cpus, connect_timeout=connect_timeout, kinds=KINDS,
                          execute=execute)  # fmt: skip
    raise LesionError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


class LocalBackend:
    """``workers`` jobs at a time in spawned worker processes, or in this process when ``workers == 1``."""

    def __init__(self, workers: int = 1):
        self.workers = workers

    @contextmanager
    def session(self, jobs: int) -> Iterator[Session]:
        if self.workers == 1 or jobs <= 1:
            yield _InProcess()
            return
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        with ProcessPoolExecutor(
            max_workers=self.workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),)
        ) as pool:
            yield _Pool(pool, self.workers)


class _Futures:
    """A session whose handles are ``concurrent.futures`` futures."""

    capacity = 1

    def wait(self, handles: list[Future]) -> list[Future]:
        finished, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [h for h in handles if h in finished]  # in submission order

    def result(self, handle: Future, out: Path) -> float:
        return handle.result()

    def release(self, key: str) -> None:
        pass


class _InProcess(_Futures):
    """Runs each job at submission, in this process."""

    def submit(self, job: Job, inputs: Mapping[str, Path], out: Path, threads: int) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(execute(KINDS[job.kind], job.params, inputs, out, threads))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def stop(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"name": "local", "workers": 1}


class _Pool(_Futures):
    def __init__(self, pool: ProcessPoolExecutor, workers: int):
        self.pool, self.capacity = pool, workers

    def submit(self, job: Job, inputs: Mapping[str, Path], out: Path, threads: int) -> Future:
        return self.pool.submit(execute, KINDS[job.kind], job.params, dict(inputs), out, threads)

    def stop(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        return {"name": "local", "workers": self.capacity}


def _worker_init(driver: int) -> None:
    from lesion.experiments._orphans import die_with
    from lesion.util.alloc import tune_allocator

    die_with(driver)  # a SIGKILLed driver takes its workers along
    tune_allocator()
