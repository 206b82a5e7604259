"""Backend selection: names and addresses are checked before any work; the report says where jobs ran."""

from __future__ import annotations

import pytest

from lesion.backends.ray import RayBackend, read_bundle, write_bundle
from lesion.errors import LesionError
from lesion.experiments import Job, Store, run
from lesion.experiments.backends import LocalBackend, get_backend


def test_backends_are_named_and_checked(tmp_path):
    assert isinstance(get_backend("local", workers=2), LocalBackend)
    ray = get_backend("ray", workers=2, threads=3)
    assert isinstance(ray, RayBackend) and ray.cpus == 6 and ray.address is None
    assert get_backend("ray", address="10.0.0.1:6379").cpus is None  # the cluster's CPUs, not ours
    with pytest.raises(LesionError, match="unknown backend 'dask'; expected one of local, ray"):
        run([], Store(tmp_path), backend="dask")
    with pytest.raises(LesionError, match="needs backend='ray'"):
        run([], Store(tmp_path), address="127.0.0.1:6379")
    with pytest.raises(LesionError, match="retries=-1"):
        RayBackend(retries=-1)


def test_report_names_the_backend(tmp_path):
    job = Job("merge", {"files": []}, {})
    assert run([job], Store(tmp_path), backend=LocalBackend(1)).backend == {"name": "local", "workers": 1}


def test_bundles_round_trip_and_stay_inside(tmp_path):
    (tmp_path / "a" / "checkpoints").mkdir(parents=True)
    (tmp_path / "a" / "checkpoints" / "1.bin").write_bytes(b"\x00\x01")
    (tmp_path / "a" / "x.txt").write_text("x")
    files = read_bundle(tmp_path / "a")
    assert files == {"checkpoints/1.bin": b"\x00\x01", "x.txt": b"x"}
    assert read_bundle(write_bundle(files, tmp_path / "b")) == files
    for bad in ("../escape", "/etc/passwd"):
        with pytest.raises(LesionError, match="refusing to write"):
            write_bundle({bad: b""}, tmp_path / "c")


class _FakeRay:
    """Just enough of Ray to watch what a driver cancels: refs are strings, ``finished`` ones are in, and
    ``get`` of a ``failed`` one raises the job's error."""

    def __init__(self, finished=(), failed=()):
        self.finished, self.failed = set(finished), set(failed)
        self.cancelled: list[str] = []
        self.submitted: list[str] = []

    def wait(self, refs, num_returns=1, timeout=None):
        ready = [r for r in refs if r in self.finished][: num_returns if timeout is None else len(refs)]
        return ready, [r for r in refs if r not in ready]

    def get(self, ref):
        if ref in self.failed:
            raise ValueError(f"job behind {ref} failed")
        return {"out.txt": b"x"} if ref.startswith("files") else 1.0

    def cancel(self, ref, force=False):
        assert force
        self.cancelled.append(ref)

    def put(self, value):
        return "shared"

    def remote(self, fn):
        return self

    def options(self, **kw):
        return self


def test_a_finished_ray_task_is_never_cancelled():
    """Ray 2.60 aborts the driver (exit 1) when it force-cancels a task whose results just came in; the
    clean-up after a failed job cancels only the tasks still running, never the one that failed."""
    from lesion.backends.ray import _RaySession, cancel_unfinished

    fake = _FakeRay(finished={"a", "c"})
    cancel_unfinished(fake, ["a", "b", "c", "d"])
    assert fake.cancelled == ["b", "d"]
    cancel_unfinished(fake, [])  # nothing to wait on: no call into Ray at all
    assert fake.cancelled == ["b", "d"]

    fake = _FakeRay(finished={"files-1"}, failed={"files-1"})
    session = _RaySession(fake, RayBackend())
    session.seconds = {"files-1": "seconds-1", "files-2": "seconds-2"}  # two jobs submitted
    with pytest.raises(ValueError, match="files-1 failed"):
        session.result("files-1", None)
    session.stop()
    assert fake.cancelled == ["files-2"]  # the running one, not the one whose error was just raised


def test_a_failed_ray_shard_stops_the_others_but_not_itself(monkeypatch):
    """A user's sweep sharded over Ray: when one shard fails, the shards still computing are cancelled
    (they would otherwise keep a remote cluster busy), and the failed one, already finished, is not."""
    import itertools
    from types import SimpleNamespace

    import torch

    from lesion.backends import ray_sweep as distributed

    fake = _FakeRay(finished={"shard-1"}, failed={"shard-1"})
    names = (f"shard-{i}" for i in itertools.count())
    task = SimpleNamespace(remote=lambda *args: next(names))
    fake.remote = lambda fn: SimpleNamespace(options=lambda **kw: task)
    runner = SimpleNamespace(sites={}, model=None, data=None, metric=None, device=torch.device("cpu"),
                             batch_size=8, use_engine=True, precision="fp32")  # fmt: skip
    ranges = [(0, 2), (2, 4), (4, 6)]
    with pytest.raises(ValueError, match="shard-1 failed"):
        distributed._compute(fake, runner, [], ranges, [0, 1, 2], 1, {}, None, None)
    assert fake.cancelled == ["shard-0", "shard-2"]
