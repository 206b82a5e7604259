"""The command line end to end on a tiny model: train, layers, analyze, and how user errors end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from lesion.cli import app

runner = CliRunner()

UNIT_COLUMNS = ["layer", "unit", "selectivity", "preferred_class", "mutual_info", "delta_loss"]
UNIT_COLUMNS += ["delta_accuracy", "dead"]
CURVE_COLUMNS = ["order", "repeat", "n_ablated", "fraction", "accuracy", "loss"]
SUMMARY_KEYS = [
    "model", "dataset", "n_units", "n_dead", "train_accuracy", "train_loss", "test_accuracy",
    "test_loss", "all_deleted_train_accuracy", "auc", "selectivity_vs_importance", "seconds", "version",
]  # fmt: skip


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tiny.safetensors"
    result = invoke("train", "--widths", "16", "--epochs", "1", "--dataset", "digits", "--out", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def analysis(model_file) -> Path:
    out = model_file.parent / "analysis"
    result = invoke(
        "analyze", model_file, "--dataset", "digits", "--out", out,
        "--repeats", "2", "--fractions", "5", "--noise-repeats", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("layers", "train", "analyze", "demo"):
        assert command in result.stdout


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, lesion.cli; print(sorted({'torch', 'pandas', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_train_writes_model_and_history(model_file):
    from lesion.models import load_model

    _, info = load_model(model_file)
    assert info["arch"] == {
        "kind": "mlp", "input_shape": [1, 8, 8], "widths": [16], "n_classes": 10, "dropout": 0.0,
        "batchnorm": False,
    }  # fmt: skip
    meta = info["metadata"]
    assert meta["dataset"] == "digits" and meta["epochs"] == 1 and meta["seed"] == 0
    assert len(meta["history"]) == 1 and 0.0 <= meta["test_accuracy"] <= 1.0
    history = pd.read_csv(model_file.with_name("tiny.history.csv"))
    assert list(history.columns[:5]) == [
        "epoch",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
    ]


def test_layers_lists_sites(model_file):
    result = invoke("layers", model_file)
    assert result.exit_code == 0, result.output
    assert "relu1" in result.stdout and "16" in result.stdout and "fc1" not in result.stdout
    result = invoke("layers", model_file, "--all")
    assert result.exit_code == 0 and "fc1" in result.stdout and "Linear" in result.stdout


def test_analyze_writes_tables_figures_and_summary(analysis):
    units = pd.read_parquet(analysis / "units.parquet")
    assert set(UNIT_COLUMNS) <= set(units.columns) and len(units) == 16
    curves = pd.read_parquet(analysis / "curves.parquet")
    assert list(curves.columns) == CURVE_COLUMNS
    assert set(curves["order"]) == {"random", "selectivity_high", "selectivity_low", "importance_high"}
    assert sorted(curves.loc[curves["order"] == "random", "repeat"].unique()) == [0, 1]
    noise = pd.read_parquet(analysis / "noise.parquet")
    assert {"scale", "repeat", "accuracy", "loss"} <= set(noise.columns)
    summary = json.loads((analysis / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["n_units"] == 16 and summary["auc"]["random_repeats"] == 2
    assert summary["selectivity_vs_importance"][0]["layer"] == "all"
    for name in ("curves", "noise", "selectivity_importance"):
        for ext in ("png", "svg"):
            assert (analysis / f"{name}.{ext}").stat().st_size > 1000
    assert not list(analysis.glob(".*tmp"))  # atomic writes leave no temporary files


def user_error(result, *fragments: str) -> None:
    """A user error: exit code 2, ``error: ...`` naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.output


def test_unknown_layer_is_a_clear_error(model_file, tmp_path):
    result = invoke("analyze", model_file, "--out", tmp_path, "--layers", "relu9", "--repeats", "1")
    user_error(result, "unknown layer 'relu9'", "relu1 (16)")


def test_missing_and_pickled_model_files_are_clear_errors(tmp_path):
    user_error(invoke("layers", tmp_path / "absent.safetensors"), "does not exist")
    pickled = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, pickled)
    user_error(invoke("layers", pickled), "pickle")


def test_bad_flags_are_clear_errors(model_file, tmp_path):
    result = invoke("train", "--arch", "vgg")  # an Enum choice: Typer's own usage error, exit code 2
    flat = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "Invalid value for '--arch'" in flat and "'vgg' is not one of" in flat
    user_error(invoke("train", "--widths", "16,x"), "--widths")
    user_error(invoke("analyze", model_file, "--out", tmp_path, "--fractions", "one"), "--fractions")
    wrong_data = invoke("analyze", model_file, "--out", tmp_path, "--dataset", "mnist5k")
    user_error(wrong_data, "(1, 28, 28)", "expects (1, 8, 8)")


def test_entry_point_exits_2_without_traceback(tmp_path):
    cmd = [sys.executable, "-m", "lesion.cli", "layers", str(tmp_path / "absent.safetensors")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_every_public_name_resolves_lazily():
    """A small surface: about 20 names, the metrics and replacements namespaces, no submodule shim."""
    import lesion

    assert set(lesion._LOCATION) | set(lesion._NAMESPACES) == set(lesion.__all__)
    assert len(lesion.__all__) <= 25
    for name in lesion.__all__:
        assert getattr(lesion, name) is not None
    assert set(lesion.__all__) <= set(dir(lesion))
    assert lesion.metrics.NextTokenLoss().main == "loss" and lesion.replacements.Zero().repeats == 1
    for gone in ("Classification", "Zero", "auc", "hooks", "Batch"):  # namespaced, or internal
        with pytest.raises(AttributeError, match="the public names are"):
            getattr(lesion, gone)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = lesion.nope


def test_analyze_measures_curves_on_the_labels_the_model_was_trained_on(model_file, tmp_path):
    from lesion.analyses.evaluation import evaluate
    from lesion.data import load_dataset
    from lesion.models import load_model, save_model

    net, info = load_model(model_file)
    data = load_dataset("digits")
    shuffled = data.y_train.roll(1)  # stands in for corrupted training labels
    path = tmp_path / "corrupted.safetensors"
    save_model(net, path, arch=info["arch"], metadata=info["metadata"], extra={"train_labels": shuffled})
    out = tmp_path / "analysis"
    result = invoke(
        "analyze", path, "--out", out, "--repeats", "1", "--fractions", "2", "--noise-repeats", "1"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_accuracy"] == pytest.approx(evaluate(net, (data.x_train, shuffled)).accuracy)
    assert summary["test_accuracy"] == pytest.approx(evaluate(net, (data.x_test, data.y_test)).accuracy)
