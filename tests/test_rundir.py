"""A run directory trusts nothing it finds (issue 12, items 3 and 4): job.json records every file's
SHA-256, reuse verifies it, damaged or unfinished jobs are recomputed with a warning, and one process at a
time works in a run directory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lesion.errors import LesionError
from lesion.experiments import KINDS, Job, Store, kind, run
from lesion.experiments.store import RunDirWarning

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def value_kind():
    @kind("value")
    def value(params, inputs, out):
        total = params["i"] + sum(int((p / "value.txt").read_text()) for p in inputs.values())
        (out / "value.txt").write_text(str(total))
        (out / "sub").mkdir()
        (out / "sub" / "note.txt").write_text("x" * 10)

    yield
    KINDS.pop("value")


def chain() -> tuple[Job, Job]:
    a = Job("value", {"i": 3})
    return a, Job("value", {"i": 4}, {"a": a})


def test_job_json_records_size_and_sha256_of_every_file(tmp_path, value_kind):
    a, b = chain()
    store = Store(tmp_path)
    run([b], store)
    files = json.loads((store.path(a.key) / "job.json").read_text())["files"]
    assert set(files) == {"value.txt", "sub/note.txt"}
    assert files["value.txt"]["size"] == 1 and len(files["value.txt"]["sha256"]) == 64


def test_edited_output_of_the_same_size_is_recomputed_with_a_warning(tmp_path, value_kind):
    a, b = chain()
    run([b], Store(tmp_path))
    (tmp_path / "jobs" / a.key / "value.txt").write_text("9")  # still one valid byte
    with pytest.warns(RunDirWarning, match="does not match its recorded SHA-256"):
        report = run([b], Store(tmp_path))
    assert report.computed == [a.key] and report.reused == [b.key]
    assert (tmp_path / "jobs" / a.key / "value.txt").read_text() == "3"


def test_garbage_bytes_or_a_missing_file_are_recomputed(tmp_path, value_kind):
    a, b = chain()
    run([b], Store(tmp_path))
    (tmp_path / "jobs" / b.key / "value.txt").write_bytes(b"\x00garbage\xff")
    (tmp_path / "jobs" / a.key / "sub" / "note.txt").unlink()
    with pytest.warns(RunDirWarning, match="missing or has changed size"):
        report = run([b], Store(tmp_path))
    assert sorted(report.computed) == sorted([a.key, b.key])
    assert (tmp_path / "jobs" / b.key / "value.txt").read_text() == "7"


def test_a_folder_without_valid_job_json_is_unfinished_and_replaced(tmp_path, value_kind):
    a, b = chain()
    (tmp_path / "jobs" / a.key).mkdir(parents=True)
    (tmp_path / "jobs" / a.key / "value.txt").write_text("half")  # a job folder left without job.json
    with pytest.warns(RunDirWarning, match="job.json is missing, unreadable"):
        report = run([b], Store(tmp_path))
    assert report.computed == [a.key, b.key]
    assert (tmp_path / "jobs" / a.key / "value.txt").read_text() == "3"
    (tmp_path / "jobs" / b.key / "job.json").write_text("[" * 100_000)  # garbage, deeply nested
    with pytest.warns(RunDirWarning):
        assert run([b], Store(tmp_path)).computed == [b.key]


@pytest.mark.parametrize("files", ["none", "some"])
def test_a_job_json_recording_no_or_too_few_files_is_not_trusted(tmp_path, value_kind, files):
    """Issue 30, item 5: a job.json with an empty (or partial) file record was trusted forever, and every
    run then failed with a raw FileNotFoundError; now the job is computed again, with a warning."""
    a, b = chain()
    run([b], Store(tmp_path))
    doc_path = tmp_path / "jobs" / a.key / "job.json"
    doc = json.loads(doc_path.read_text())
    doc["files"] = {} if files == "none" else {"sub/note.txt": doc["files"]["sub/note.txt"]}
    if files == "none":
        for f in ("value.txt", "sub/note.txt"):
            (tmp_path / "jobs" / a.key / f).unlink()
    doc_path.write_text(json.dumps(doc))
    import shutil

    shutil.rmtree(tmp_path / "jobs" / b.key)  # b must be computed again, from a's outputs
    match = "records no output files" if files == "none" else "does not record value.txt"
    with pytest.warns(RunDirWarning, match=match):
        report = run([b], Store(tmp_path))
    assert report.computed == [a.key, b.key]
    assert (tmp_path / "jobs" / a.key / "value.txt").read_text() == "3"
    with pytest.warns(RunDirWarning, match=match):  # --verify says so too, and does not crash
        doc_path.write_text(json.dumps(doc))
        assert Store(tmp_path).verify_all() == [a.key]


def test_verify_all_hashes_jobs_outside_the_plan(tmp_path, value_kind):
    a, b = chain()
    store = Store(tmp_path)
    run([b], store)
    (tmp_path / "jobs" / b.key / "value.txt").write_text("8")
    fresh = Store(tmp_path)
    assert run([a], fresh).reused == [a.key]  # b is not in this plan: not hashed
    with pytest.warns(RunDirWarning):
        assert Store(tmp_path).verify_all() == [b.key]
    assert not (tmp_path / "jobs" / b.key).exists()


def hold_lock(path: Path) -> subprocess.Popen:
    code = (
        "import sys, time; from lesion.experiments import Store; s = Store(sys.argv[1]); "
        "print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    first = hold_lock(tmp_path)
    try:
        theirs = tmp_path / "jobs" / ".tmp-theirs-1234"
        theirs.mkdir()
        with pytest.raises(LesionError, match=rf"in use by another lesion process \(PID {first.pid}\)"):
            Store(tmp_path)
        from lesion.report.reproduce import reproduce

        with pytest.raises(LesionError, match="pass another --out"):
            reproduce("tiny", only="F1", out=tmp_path)
        assert theirs.is_dir()  # the first run's temporary folder was left alone
    finally:
        first.kill()
        first.wait()
        first.stdout.close()
    start = time.perf_counter()
    Store(tmp_path)  # a killed holder leaves no stale lock
    assert time.perf_counter() - start < 1 and not theirs.exists()


def test_reproduce_recomputes_an_edited_model_and_verify_checks_the_rest(tmp_path):
    from lesion.report.reproduce import reproduce

    first = reproduce("tiny", only="F1", out=tmp_path)
    claims = json.loads((tmp_path / "claims.json").read_text())
    model = sorted((tmp_path / "models").glob("*.safetensors"))[0]
    data = bytearray(model.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # a weight becomes +inf; the file stays valid safetensors
    model.write_bytes(bytes(data))  # models/ are hard links into jobs/: the job is damaged too
    with pytest.warns(RunDirWarning, match="model.safetensors does not match"):
        again = reproduce("tiny", only="F1", out=tmp_path)
    assert again["jobs"]["computed"] >= 1 and again["jobs"]["total"] == first["jobs"]["total"]
    assert json.loads((tmp_path / "claims.json").read_text()) == claims
    assert sorted((tmp_path / "models").glob("*.safetensors"))[0].read_bytes() != bytes(data)


def test_reproduce_verify_hashes_jobs_outside_its_figures(tmp_path):
    from lesion.report.reproduce import reproduce

    reproduce("tiny", only="F1", out=tmp_path)
    stray = tmp_path / "jobs" / "0123456789abcdef0123"  # a finished job of some other figure
    stray.mkdir()
    (stray / "x.txt").write_text("y")
    record = {"x.txt": {"size": 1, "sha256": "0" * 64}}
    (stray / "job.json").write_text(json.dumps({"key": stray.name, "kind": "value", "files": record}))
    reproduce("tiny", only="F1", out=tmp_path)  # not in the plan: left alone
    assert stray.is_dir()
    with pytest.warns(RunDirWarning, match="x.txt does not match its recorded SHA-256"):
        manifest = reproduce("tiny", only="F1", out=tmp_path, verify=True)
    assert not stray.exists() and manifest["jobs"]["computed"] == 0
