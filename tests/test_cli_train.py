"""`lesion train` with the experiment flags: architectures, label corruption, checkpoints, regulariser."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from lesion.cli import app
from lesion.data import load_dataset
from lesion.models import load_model

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_convnet_with_corrupted_labels_and_checkpoints(tmp_path):
    out = tmp_path / "c.safetensors"
    result = invoke(
        "train", "--arch", "convnet", "--width-mult", "0.0625", "--batchnorm", "--dataset", "digits",
        "--epochs", "2", "--corrupt", "0.5", "--checkpoints", "1,2", "--select-reg", "0.5", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _, info = load_model(out)
    assert info["arch"]["kind"] == "convnet" and info["metadata"]["corrupt"] == 0.5
    labels = info["extra"]["train_labels"]
    clean = load_dataset("digits").y_train
    changed = (labels != clean).float().mean().item()
    assert 0.3 < changed <= 0.5  # half the labels were shuffled among themselves
    assert torch.equal(torch.bincount(labels), torch.bincount(clean))
    assert sorted(p.name for p in (tmp_path / "c.checkpoints").iterdir())[:2] == [
        "epoch_0001.safetensors", "epoch_0002.safetensors",
    ]  # fmt: skip
    assert len(info["metadata"]["history"]) == 2


def test_resnet_until_train_accuracy(tmp_path):
    out = tmp_path / "r.safetensors"
    result = invoke(
        "train", "--arch", "resnet", "--resnet-width", "4", "--dataset", "digits", "--until-train-acc",
        "0.3", "--max-epochs", "5", "--lr", "3e-3", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _, info = load_model(out)
    assert info["metadata"]["train_accuracy"] >= 0.3 or len(info["metadata"]["history"]) == 5


def test_bad_flags_are_user_errors(tmp_path):
    result = invoke("train", "--arch", "vgg", "--out", tmp_path / "x.safetensors")
    flat = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "'vgg' is not one of 'mlp', 'convnet', 'resnet'" in flat
    result = invoke(
        "train", "--checkpoints", "1,x", "--dataset", "digits", "--out", tmp_path / "x.safetensors"
    )
    assert result.exit_code == 2 and "--checkpoints" in result.output
    result = invoke("train", "--corrupt-mode", "flip", "--corrupt", "0.2", "--dataset", "digits",
                    "--out", tmp_path / "x.safetensors")  # fmt: skip
    assert result.exit_code == 2


def test_train_config_defaults_its_dataset_by_architecture():
    from lesion.pipeline.classifier import TrainConfig

    assert TrainConfig().dataset == "mnist5k" and TrainConfig(arch="vit").dataset == "mnist5k"
    assert TrainConfig(arch="gpt").dataset == "markov"  # a decoder trains on the built-in token corpus
    assert TrainConfig(arch="gpt", dataset="repeat").dataset == "repeat"
