"""Output paths (issue 12, items 2 and 6): checked before any work, never a device or other non-file,
replaced only with --force and atomically; `lesion analyze --out` is written complete or marked incomplete."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lesion.cli import app
from lesion.util import outputs as _outputs
from lesion.util.outputs import OutputError, read_manifest

runner = CliRunner()
TRAIN = ["train", "--widths", "8", "--epochs", "1", "--dataset", "digits"]
ANALYZE = ["--dataset", "digits", "--repeats", "1", "--fractions", "2", "--noise-repeats", "1"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert "error: " in result.output and fragment in result.output, result.output
    assert "Traceback" not in result.output and "epoch" not in result.output  # nothing was trained


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "m.safetensors"
    assert invoke(*TRAIN, "--out", path).exit_code == 0
    return path


def test_train_never_writes_over_a_device_fifo_or_directory(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(invoke(*TRAIN, "--out", fifo, "--force"), "is a FIFO, not a regular file")
    refused(invoke(*TRAIN, "--out", "/dev/null", "--force"), "is a character device")
    refused(invoke(*TRAIN, "--out", tmp_path, "--force"), "is a directory")
    link = tmp_path / "link.safetensors"
    link.symlink_to(tmp_path / "elsewhere.safetensors")  # dangling: the target does not exist
    refused(invoke(*TRAIN, "--out", link, "--force"), "is a symbolic link")
    assert not (tmp_path / "elsewhere.safetensors").exists()


def test_train_refuses_an_unwritable_place_before_training(tmp_path):
    refused(invoke(*TRAIN, "--out", "/proc/lesion-x/m.safetensors"), "cannot write into")
    (tmp_path / "file").write_text("x")
    refused(invoke(*TRAIN, "--out", tmp_path / "file" / "m.safetensors"), "cannot write into")


def test_train_replaces_an_existing_file_only_with_force(tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    refused(invoke(*TRAIN, "--out", out), "already exists; pass --force to replace it")
    assert out.read_bytes() == b"precious"
    assert invoke(*TRAIN, "--out", out, "--force").exit_code == 0
    assert out.read_bytes()[8:9] == b"{" and not list(tmp_path.glob(".*tmp*"))


def test_save_model_never_replaces_a_non_regular_file(tmp_path):
    from lesion.models import build_model, save_model

    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    arch = {"kind": "mlp", "input_shape": [2], "widths": [], "n_classes": 2}
    with pytest.raises(OutputError, match="is a FIFO"):
        save_model(build_model(arch), fifo, arch=arch)
    assert fifo.is_fifo() and not [p for p in tmp_path.iterdir() if p != fifo]


def test_analyze_checks_out_before_the_analysis(model_file, tmp_path):
    start = time.perf_counter()
    refused(invoke("analyze", model_file, "--out", model_file, *ANALYZE), "is not a directory")
    refused(invoke("analyze", model_file, "--out", "/proc/lesion-x", *ANALYZE), "cannot write into")
    (tmp_path / "units.parquet").mkdir()
    refused(invoke("analyze", model_file, "--out", tmp_path, *ANALYZE), "is a directory, not a regular")
    assert time.perf_counter() - start < 10


def test_layers_on_a_directory_says_so(tmp_path):
    refused(invoke("layers", tmp_path), "is a directory; expected a model file")


def test_analyze_writes_a_manifest_last_and_needs_force_to_replace(model_file, tmp_path):
    out = tmp_path / "a"
    assert invoke("analyze", model_file, "--out", out, *ANALYZE).exit_code == 0
    doc = read_manifest(out)
    assert {"units.parquet", "summary.json", "curves.png"} <= set(doc["files"])
    refused(invoke("analyze", model_file, "--out", out, *ANALYZE), "already exists; pass --force")
    assert invoke("analyze", model_file, "--out", out, *ANALYZE, "--force").exit_code == 0
    (out / "units.parquet").write_bytes(b"edited")
    with pytest.raises(OutputError, match="does not match"):
        read_manifest(out)


def test_an_interrupted_write_leaves_the_folder_old_or_marked_incomplete(model_file, tmp_path, monkeypatch):
    from lesion.analyses import plots

    out = tmp_path / "a"
    assert invoke("analyze", model_file, "--out", out, *ANALYZE).exit_code == 0
    before = json.loads((out / "manifest.json").read_text())

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # Ctrl-C while the new files are drawn: the old analysis stands
        m.setattr(plots, "plot_noise", ctrl_c)
        invoke("analyze", model_file, "--out", out, *ANALYZE, "--force", "--seed", "1")
    assert read_manifest(out) == before and not list(out.glob(".staging-*"))

    moved = []

    def replace_two(tmp, path):
        if len(moved) == 2:
            raise KeyboardInterrupt
        moved.append(path)
        os.replace(tmp, path)

    with monkeypatch.context() as m:  # Ctrl-C while files move in: new tables beside old figures
        m.setattr(_outputs, "replace_into", replace_two)
        invoke("analyze", model_file, "--out", out, *ANALYZE, "--force", "--seed", "1")
    assert len(moved) == 2 and not (out / "manifest.json").exists()
    with pytest.raises(OutputError, match="is incomplete"):
        read_manifest(out)


def test_reproduce_and_bench_check_out_before_work(tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke("reproduce", "--profile", "tiny", "--only", "F1", "--out", tmp_path / "file")
    assert result.exit_code == 2 and "cannot use" in result.output and "as a run directory" in result.output
    refused(invoke("bench", "--quick", "--only", "W1", "--out", "/dev/null"), "is a character device")
    refused(invoke("bench", "--quick", "--only", "W1", "--out", tmp_path / "file"), "pass --force")


def test_train_checks_its_checkpoint_folder_before_training(tmp_path):
    (tmp_path / "m.checkpoints").write_text("a file where the checkpoints go")
    refused(invoke(*TRAIN, "--checkpoints", "1", "--out", tmp_path / "m.safetensors"), "is not a directory")
