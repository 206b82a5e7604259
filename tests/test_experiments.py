"""The content-addressed runner: same spec same key, nothing redone, a SIGKILLed run resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lesion.errors import LesionError
from lesion.experiments import KINDS, Job, Store, job_key, kind, run

ROOT = Path(__file__).resolve().parents[1]


def tiny_jobs() -> list[Job]:
    """Four small trainings (clean and shuffled labels, two seeds) and their measurements."""
    out = []
    for corrupt in (0.0, 1.0):
        for seed in (0, 1):
            model = Job("train", {
                "arch": {"kind": "mlp", "widths": [16]}, "dataset": "digits", "corrupt": corrupt,
                "seed": seed, "train": {"epochs": 3, "lr": 3e-3},
            })  # fmt: skip
            units = Job("units", {}, {"model": model})
            out.append(Job("curves", {"repeats": 2, "fractions": 5, "orders": ["random", "selectivity_high"]},
                           {"model": model, "units": units}))  # fmt: skip
            out.append(Job("noise", {"repeats": 1, "scales": [0.5, 2.0]}, {"model": model}))
    return out


def tables(root: Path) -> dict[str, pd.DataFrame]:
    return {
        p.parent.name + "/" + p.name: pd.read_parquet(p) for p in sorted((root / "jobs").glob("*/*.parquet"))
    }


def test_keys_are_content_addresses():
    a = job_key("train", {"seed": 0, "lr": 1e-3})
    assert a == job_key("train", {"lr": 1e-3, "seed": 0})  # order of keys does not matter
    assert a != job_key("train", {"seed": 1, "lr": 1e-3})
    assert a != job_key("curves", {"seed": 0, "lr": 1e-3})
    assert job_key("curves", {}, {"model": a}) != job_key("curves", {}, {"model": "x"})


def test_finished_jobs_are_not_redone(tmp_path):
    calls = []

    @kind("count")
    def count(params, inputs, out):
        calls.append(params["i"])
        (out / "value.txt").write_text(
            str(params["i"] + sum(int((p / "value.txt").read_text()) for p in inputs.values()))
        )

    try:
        first = Job("count", {"i": 1})
        second = Job("count", {"i": 2}, {"a": first})
        store = Store(tmp_path)
        done = run([second, first], store).paths
        assert calls == [1, 2] and (done[second.key] / "value.txt").read_text() == "3"
        run([second], Store(tmp_path))
        assert calls == [1, 2]
        assert store.spec(second.key)["deps"] == {"a": first.key}
    finally:
        KINDS.pop("count")


def test_failed_job_leaves_nothing_behind(tmp_path):
    @kind("boom")
    def boom(params, inputs, out):
        (out / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    try:
        store = Store(tmp_path)
        job = Job("boom", {})
        with pytest.raises(RuntimeError, match="boom"):
            run([job], store)
        assert not store.done(job.key) and list((tmp_path / "jobs").iterdir()) == []
    finally:
        KINDS.pop("boom")
    with pytest.raises(LesionError, match="unknown job kind 'nope'"):
        run([Job("nope", {})], store)


def test_sigkill_midway_then_resume_equals_uninterrupted(tmp_path):
    whole = tmp_path / "whole"
    run(tiny_jobs(), Store(whole))
    expected = tables(whole)
    assert len(expected) == 4 * 4  # per model: history, units, curves, noise

    killed = tmp_path / "killed"
    code = (
        "from lesion.experiments import Store, run; from tests.test_experiments import tiny_jobs; "
        f"run(tiny_jobs(), Store({str(killed)!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "jobs").glob("[!.]*"))) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (killed / "jobs").glob("[!.]*")}
    assert 3 <= len(finished) < 16, "the kill must land midway"

    run(tiny_jobs(), Store(killed))
    for name, mtime in finished.items():  # work finished before the kill was not redone
        assert (killed / "jobs" / name).stat().st_mtime_ns == mtime
    assert not list((killed / "jobs").glob(".tmp-*"))
    got = tables(killed)
    assert got.keys() == expected.keys()
    for name, df in expected.items():
        pd.testing.assert_frame_equal(got[name].drop(columns="seconds", errors="ignore"),
                                      df.drop(columns="seconds", errors="ignore"))  # fmt: skip


def _fails_in_worker(params, inputs, out):
    (out / "half.txt").write_text("partial")
    if params["fail"]:
        raise ValueError("bad params in a worker")
    (out / "ok.txt").write_text("done")


def test_worker_failure_is_raised_and_leaves_nothing_half_written(tmp_path):
    KINDS["fails_in_worker"] = _fails_in_worker
    try:
        store = Store(tmp_path)
        good, bad = Job("fails_in_worker", {"fail": False}), Job("fails_in_worker", {"fail": True})
        with pytest.raises(ValueError, match="bad params in a worker"):
            run([good, bad], store, workers=2)
        assert not store.done(bad.key)
        assert not list((tmp_path / "jobs").glob(".tmp-*"))
        assert [p.name for p in (tmp_path / "jobs").iterdir()] in ([], [good.key])
    finally:
        KINDS.pop("fails_in_worker")


def test_workers_and_threads_are_checked(tmp_path):
    with pytest.raises(LesionError, match="workers=0; expected a positive int"):
        run([], Store(tmp_path), workers=0)
    with pytest.raises(LesionError, match=r"threads=1\.5; expected a positive int"):
        run([], Store(tmp_path), threads=1.5)


def test_trained_models_record_their_dataset_for_analyze_and_serve(tmp_path):
    """A run's model files name the data they were trained on (as `lesion train`'s do), so `lesion
    analyze runs/.../models/FILE` needs no --dataset; a training subset records none (its labels would
    not match the whole set)."""
    import torch

    from lesion.models import load_model
    from lesion.pipeline.classifier import dataset_for

    spec = {"arch": {"kind": "mlp", "widths": [8]}, "dataset": "digits", "corrupt": 0.5, "seed": 3,
            "train": {"epochs": 1}}  # fmt: skip
    whole, part = Job("train", spec), Job("train", spec | {"train_size": 200})
    done = run([whole, part], Store(tmp_path)).paths
    _, info = load_model(done[whole.key] / "model.safetensors")
    data = dataset_for(info, None, done[whole.key] / "model.safetensors")
    assert data.name == "digits" and info["metadata"]["data_seed"] == 0
    assert torch.equal(data.y_train, info["extra"]["train_labels"])  # the corrupted labels it learnt
    from lesion.data import load_dataset

    assert not torch.equal(data.y_train, load_dataset("digits").y_train)  # half of them shuffled
    _, info = load_model(done[part.key] / "model.safetensors")
    assert "dataset" not in info["metadata"]
    with pytest.raises(LesionError, match="records no dataset"):
        dataset_for(info, None)
