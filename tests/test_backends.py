"""Backend selection: names and addresses are checked before any work; the report says where jobs ran."""

from __future__ import annotations

import pytest

from lesion.errors import LesionError
from lesion.experiments import Job, Store, run
from lesion.experiments.backends import LocalBackend, get_backend
from lesion.experiments.ray_backend import RayBackend, read_bundle, write_bundle


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
