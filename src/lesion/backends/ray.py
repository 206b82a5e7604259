"""The Ray backend: the cluster connection, and every job a Ray task whose output files travel back to
the driver as bytes.

Built for a cluster whose machines share no filesystem with the driver: a task receives its inputs (the
finished directories of the jobs it reads) as file bytes through Ray's object store, materialises them in
a private temporary directory on its worker (one that a killed worker leaves behind is removed by the
next task on that node), runs the job there with ``runner.execute`` (the same function and torch threads
as the local backend), and returns the bytes of its outputs. The driver writes
them into the job's private directory and publishes it atomically, so the run directory lives on the
driver's machine alone. An output a later job reads stays in the object store (Ray moves it to the node
that needs it) until no pending job reads it. Datasets are loaded by name on the worker.

Each task requests ``threads`` CPUs (and ``gpus`` GPUs, for job kinds that use one). A task whose worker
process or node dies is retried up to ``retries`` times (Ray's ``max_retries``); an exception raised by
the job itself is a result, not a fault, and is raised in the driver without a retry. Ray is imported
only here, and only when a session opens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from lesion.errors import LesionError

Bundle = dict[str, bytes]  # a directory: relative POSIX path -> file contents
CONNECT_TIMEOUT = 30.0  # seconds to reach a Ray cluster's address before giving up


REFUSED_GRACE = 2.0  # seconds a refused port is retried (a head that is starting): not the whole timeout
HANDSHAKE_TIMEOUT = 5.0  # seconds a Ray head (a gRPC server) has to answer the HTTP/2 preface
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + SETTINGS


def wait_reachable(address: str, timeout: float) -> None:
    """Return once ``address`` (``host:port`` or ``ray://host:port``) accepts a TCP connection and answers
    as a Ray head does (gRPC: an HTTP/2 SETTINGS frame); a LesionError if nothing listens within
    ``timeout`` seconds (a refused port gets ``REFUSED_GRACE``), or if what listens is not Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise LesionError(f"--address {address!r}; expected HOST:PORT of a Ray head, e.g. 127.0.0.1:6379")
    start = time.monotonic()
    deadline = start + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            conn = socket.create_connection((host, int(port)), timeout=max(0.1, min(left, 5.0)))
            break
        except OSError as e:
            reason = e.strerror or str(e) or type(e).__name__
            refused = isinstance(e, ConnectionRefusedError)
        limit = min(timeout, REFUSED_GRACE) if refused else timeout  # nothing listens: no point waiting
        if time.monotonic() + 0.25 >= start + limit:
            raise LesionError(
                f"cannot reach the Ray cluster at {address} within {limit:g} s ({reason}); expected a "
                "running Ray head there (start one with `ray start --head`), or raise --connect-timeout "
                "for a head that is still starting"
            )
        time.sleep(0.25)
    with conn:
        _handshake(conn, address, min(HANDSHAKE_TIMEOUT, max(0.5, deadline - time.monotonic())))


def _handshake(conn: socket.socket, address: str, timeout: float) -> None:
    """A Ray head speaks gRPC: to the HTTP/2 client preface it answers with a SETTINGS frame (type 4 on
    stream 0). Anything else, or silence for ``timeout`` seconds, is not Ray."""
    conn.settimeout(timeout)
    got, failure = b"", ""
    try:
        conn.sendall(_H2_PREFACE)
        end = time.monotonic() + timeout
        while len(got) < 9 and time.monotonic() < end:
            part = conn.recv(9 - len(got))
            if not part:
                break
            got += part
    except OSError as e:  # a timeout, a reset
        failure = f" ({type(e).__name__})"
    if len(got) < 9 or got[3] != 0x04 or got[5:9] != bytes(4):
        shown = f"nothing{failure}" if not got else repr(got[:40])
        raise LesionError(
            f"{address} accepts connections but is not a Ray head: to the gRPC (HTTP/2) greeting it "
            f"answered {shown} within {timeout:g} s; expected the address of a Ray head (its GCS port, "
            "6379 by default, or ray://HOST:10001 for Ray Client)"
        )


class RayBackend:
    """Jobs as Ray tasks on the cluster at ``address`` (``"host:port"``, or ``"auto"``).

    Without an address: the Ray instance this process has already started or joined, else a new local
    instance with ``cpus`` CPUs, shut down when the run ends. Each task asks for ``threads`` CPUs and
    ``gpus`` GPUs and is retried ``retries`` times if its worker dies.
    """

    def __init__(self, address: str | None = None, *, cpus: int | None = None, gpus: float = 0.0,
                 retries: int = 3, connect_timeout: float = CONNECT_TIMEOUT,
                 kinds: Mapping[str, Callable] | None = None, execute: Callable | None = None):  # fmt: skip
        if retries < 0 or gpus < 0 or not connect_timeout > 0:
            raise LesionError(
                f"retries={retries}, gpus={gpus}, connect_timeout={connect_timeout}; expected retries and "
                "gpus >= 0 and connect_timeout > 0"
            )
        self.address, self.cpus, self.gpus, self.retries = address, cpus, float(gpus), int(retries)
        self.connect_timeout = float(connect_timeout)
        # the job kinds and the function that runs one: given by lesion.experiments, which this module
        # never imports (a sweep sharded over Ray needs neither)
        self.kinds, self.execute = kinds, execute

    @contextmanager
    def session(self, jobs: int) -> Iterator[_RaySession]:
        if self.address not in (None, "auto"):  # ray.init waits forever on an address nobody answers
            wait_reachable(self.address, self.connect_timeout)
        ray = _import_ray()
        owned = not ray.is_initialized()
        private = owned and self.address is None
        with _loopback_only(private):
            if owned:
                options: dict[str, Any] = {"address": self.address, "logging_level": logging.WARNING}
                if self.address is None:
                    options |= {"num_cpus": self.cpus, "include_dashboard": False}
                ray.init(**options)
            try:
                yield _RaySession(ray, self)
            finally:
                if owned:
                    ray.shutdown()


@contextmanager
def _loopback_only(private: bool) -> Iterator[None]:
    """Keep a private local Ray instance on 127.0.0.1.

    On Linux Ray otherwise listens on every interface (checked with ``ss -ltn``: ``*`` without this,
    ``127.0.0.1`` with it). Its own switch is an environment variable that the processes ``ray.init``
    starts read, and that the driver reads once, at ``import ray``, into ``ray_constants``; both are set
    only while an instance lesion starts itself lives, then restored.
    """
    if not private:
        yield
        return
    from ray._private import ray_constants

    name = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    before_env, before_const = os.environ.get(name), getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[name] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        if before_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before_env


class _RaySession:
    capacity = sys.maxsize  # submit every ready job; the cluster's resources bound what runs at once

    def __init__(self, ray, backend: RayBackend):
        self.ray, self.backend = ray, backend
        self.task = ray.remote(_task)
        self.outputs: dict[str, Any] = {}  # job key -> ref to its files, while a pending job reads them
        self.seconds: dict[Any, Any] = {}  # files ref -> ref to the job's wall time
        self.threads = 0

    def submit(self, job, inputs: Mapping[str, Path], out: Path, threads: int):
        if self.backend.kinds is None or self.backend.execute is None:
            raise LesionError("this RayBackend runs no jobs; expected RayBackend(kinds=..., execute=...)")
        self.threads = threads
        refs = [self._bundle(dep.key, inputs[name]) for name, dep in job.deps.items()]
        # a task's result lacks the job.json the driver wrote when publishing it: send that along (small)
        deps = [(name, (inputs[name] / "job.json").read_bytes()) for name in job.deps]
        files, seconds = self.task.options(
            num_cpus=threads, num_gpus=self.backend.gpus, max_retries=self.backend.retries,
            retry_exceptions=False, num_returns=2, name=f"lesion.{job.kind}.{job.key[:8]}",
        ).remote(self.backend.execute, self.backend.kinds[job.kind], dict(job.params), deps, threads,
                 *refs)  # fmt: skip
        self.outputs[job.key] = files
        self.seconds[files] = seconds
        return files

    def _bundle(self, key: str, folder: Path):
        """The ref to a finished job's files: its task's result, or (finished before) put once."""
        if key not in self.outputs:
            self.outputs[key] = self.ray.put(read_bundle(folder))
        return self.outputs[key]

    def wait(self, handles: list) -> list:
        self.ray.wait(handles, num_returns=1)
        ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=0)
        done = set(ready)
        return [h for h in handles if h in done]

    def result(self, handle, out: Path) -> float:
        seconds = self.seconds.pop(handle)  # finished, whatever its outcome: never to be cancelled
        files = self.ray.get(handle)  # a job's exception (or a worker that died every retry) raises here
        write_bundle(files, out)
        return float(self.ray.get(seconds))

    def release(self, key: str) -> None:
        self.outputs.pop(key, None)

    def stop(self) -> None:
        cancel_unfinished(self.ray, list(self.seconds))

    def describe(self) -> dict[str, Any]:
        resources = self.ray.cluster_resources()
        return {
            "name": "ray",
            "address": self.backend.address or "local",
            "nodes": sum(1 for n in self.ray.nodes() if n.get("Alive")),
            "cluster_cpus": resources.get("CPU", 0.0),
            "cluster_gpus": resources.get("GPU", 0.0),
            "task": {
                "num_cpus": self.threads,
                "num_gpus": self.backend.gpus,
                "max_retries": self.backend.retries,
            },
        }


def cancel_unfinished(ray, refs: list) -> None:
    """Force-cancel the tasks behind ``refs`` (one ref per task) whose results are not in yet.

    A task whose results are in is left alone, not handed to ``ray.cancel``: Ray 2.60 makes a task's
    results visible to the driver a moment before it marks the task finished, and a force-cancel in that
    moment aborts the driver process (``task_manager.cc: Tried to complete task that was not pending``,
    exit status 1, written only to Ray's ``python-core-driver-*.log``). It killed a CI run in
    ``test_job_error_is_raised_not_retried`` and about one failed run in 11 of a loop (6 of 16 drivers
    died within 5 failed runs; 0 of 12 with this check, 60 runs): the failed job's result had raised and
    the clean-up cancelled that same task. A task that finishes at the very instant it is cancelled can
    still meet the race, which only Ray can close.
    """
    if not refs:
        return
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    done = set(ready)
    for ref in refs:
        if ref not in done:
            with contextlib.suppress(Exception):  # finished meanwhile or already gone: nothing to stop
                ray.cancel(ref, force=True)


def _task(
    execute: Callable,
    fn,
    params: Mapping[str, Any],
    deps: list[tuple[str, bytes]],
    threads: int,
    *bundles: Bundle,
):
    """On a worker: materialise the inputs (``deps``: each one's name and job.json, then its files), run
    the job, return (its output files, its wall time)."""
    from lesion.util.alloc import tune_allocator

    tune_allocator()
    _sweep_orphans()
    with tempfile.TemporaryDirectory(prefix=f"lesion-task-{os.getpid()}-") as tmp:
        root = Path(tmp)
        inputs = {}
        for (name, spec), files in zip(deps, bundles, strict=True):
            inputs[name] = write_bundle({**files, "job.json": spec}, root / "inputs" / name)
        out = root / "out"
        out.mkdir()
        seconds = execute(fn, params, inputs, out, threads)
        return read_bundle(out), seconds


def _sweep_orphans() -> None:
    """Remove task directories left by killed workers on this node (their PID no longer runs)."""
    for d in Path(tempfile.gettempdir()).glob("lesion-task-*-*"):
        pid = d.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def read_bundle(folder: Path) -> Bundle:
    """Every file under ``folder`` as ``{relative path: bytes}``."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def write_bundle(files: Bundle, folder: Path) -> Path:
    """Write a bundle under ``folder``; paths that would leave it are refused."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
            raise LesionError(f"refusing to write {rel!r} outside {folder}")
        path = folder.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LesionError("backend='ray' needs Ray: pip install 'lesion[ray]' (or 'ray>=2.9')") from None
    return ray
