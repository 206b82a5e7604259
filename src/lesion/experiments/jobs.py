"""The job kinds experiments are made of: train a model, and measure it.

Every kind writes tables as Parquet into its output directory. Measuring jobs read the model from their
``model`` input (optionally one of its training checkpoints) and the dataset named in that training
job's parameters, so a measurement is fully determined by its own parameters and its inputs' keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesion.core.units import parse_units
from lesion.errors import LesionError
from lesion.experiments.job import kind


def write_table(df: pd.DataFrame, path: Path) -> None:
    df = df.copy()
    df.attrs = {}
    df.to_parquet(path, index=False)


@kind("train")
def train_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Train ``params["arch"]`` on ``params["dataset"]`` (labels corrupted as asked) and save it.

    With ``params["train"]["checkpoints"]`` the model is also saved at those epochs under
    ``out/checkpoints/``; ``history.parquet`` has one row per epoch.
    """
    from lesion.models import build_model, save_model
    from lesion.training.corruption import corrupt_labels
    from lesion.training.loop import train

    if params["arch"]["kind"] == "gpt":  # a decoder on a token corpus (beyond the paper, T3/T4)
        from lesion.experiments.gpt_train import decoder_job

        return decoder_job(params, out)
    data = _dataset(params)
    arch = {**params["arch"], "input_shape": list(data.input_shape), "n_classes": data.n_classes}
    seed = int(params.get("seed", 0))
    model = build_model(arch, seed=seed)
    labels = corrupt_labels(
        data.y_train, float(params.get("corrupt", 0.0)), mode=params.get("corrupt_mode", "shuffle"),
        n_classes=data.n_classes, seed=seed,
    )  # fmt: skip
    options = dict(params.get("train", {}))
    if options.get("checkpoints"):
        options |= {"directory": out / "checkpoints", "arch": arch}
    history = train(model, data, train_labels=labels, seed=seed, **options)
    meta: dict[str, Any] = {"job": dict(params)}
    if params.get("train_size") is None:  # the data it was trained on, as `lesion train` records it, so
        # that `lesion analyze` / `lesion serve` on the run's models/ need no --dataset (not for a subset:
        # its training labels would not match the whole set's)
        meta |= {"dataset": params["dataset"], "data_seed": int(params.get("data_seed", 0))}
        meta |= {"root": params["root"]} if params.get("root") else {}
    save_model(model, out / "model.safetensors", arch=arch, metadata=meta, extra={"train_labels": labels})
    (out / "checkpoints" / "model.safetensors").unlink(missing_ok=True)  # the final model is out/
    (out / "checkpoints" / "history.csv").unlink(missing_ok=True)
    write_table(history, out / "history.parquet")


def _dataset(train_params: Mapping[str, Any]):
    from lesion.data import load_dataset

    p = train_params
    data = load_dataset(p["dataset"], root=p.get("root"), seed=p.get("data_seed", 0))
    return data if p.get("train_size") is None else subset(data, int(p["train_size"]))


def subset(data, n: int):
    """The first ``n`` training examples of a seeded shuffle (seed 0): the training-set-size study."""
    import dataclasses

    import torch

    if not 0 < n <= len(data.y_train):
        raise LesionError(f"train_size={n}; expected 1..{len(data.y_train)} for {data.name}")
    keep = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))[:n]
    return dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


def model_and_data(params: Mapping[str, Any], inputs: Mapping[str, Path]):
    """The model of ``inputs["model"]`` (or its ``params["checkpoint"]``) and the (x, y) of
    ``params["split"]``: "train" pairs the training inputs with the labels the model was trained on."""
    from lesion.models import load_model

    folder = inputs["model"]
    trained = json.loads((folder / "job.json").read_text())["params"]
    ckpt = params.get("checkpoint")
    path = folder / "model.safetensors" if ckpt is None else folder / "checkpoints" / f"{ckpt}.safetensors"
    model, info = load_model(path)
    model.to(trained.get("train", {}).get("device", "cpu"))  # measured where it was trained
    data = _dataset(trained)
    n = params.get("examples")  # measure on the first n examples only (large training sets)
    if params.get("split", "train") == "train":
        return model, (data.x_train[:n], info["extra"]["train_labels"][:n])
    return model, (data.x_test[:n], data.y_test[:n])


@kind("curves")
def curves_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Cumulative ablation curves (on the labels the model was trained on, unless ``split="test"``)."""
    from lesion.pipeline import classifier as study

    model, xy = model_and_data(params, inputs)
    n = params.get("fractions")
    units = pd.read_parquet(inputs["units"] / "units.parquet") if "units" in inputs else None
    repeats = params.get("repeats", 10)  # a count, or the repeat numbers of one shard
    curves = study.curves(
        model, xy, orders=params.get("orders", ["random"]),
        repeats=[int(r) for r in repeats] if isinstance(repeats, list) else int(repeats),
        seed=int(params.get("seed", 0)), fractions=None if n is None else int(n), units=units,
        candidates=params.get("candidates"),
    )  # fmt: skip
    write_table(curves, out / "curves.parquet")


@kind("units")
def units_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """The unit table on held-out data (``importance=False``: selectivity and information only).

    ``params["shard"] = [i, n]`` measures only the i-th of n contiguous ranges of the model's units
    (``lesion.experiments.shards``); every row is the same as in the whole table.
    """
    from lesion.analyses.sweep import sites_for
    from lesion.experiments.shards import shard_slice
    from lesion.pipeline import classifier as study

    model, xy = model_and_data({"split": "test", **params}, inputs)
    importance = bool(params.get("importance", True))
    if "shard" not in params:
        write_table(study.units(model, xy, importance=importance), out / "units.parquet")
        return
    sites = sites_for(model, xy)
    every = parse_units([f"{s.name}:*" for s in sites], sites).units()
    mine = every[shard_slice(len(every), *map(int, params["shard"]))]
    # an empty shard (more shards than units) still writes the table's columns
    table = study.units(model, xy, sites=sites, units=mine or every[:1], importance=importance)
    write_table(table if mine else table.iloc[:0], out / "units.parquet")


@kind("merge")
def merge_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Concatenate each of ``params["files"]`` over the inputs in name order (the shards of a sweep)."""
    for file in params["files"]:
        frames = [pd.read_parquet(inputs[name] / file) for name in sorted(inputs)]
        rows = [f for f in frames if len(f)] or frames[:1]  # empty shards add nothing (nor dtype changes)
        write_table(pd.concat(rows, ignore_index=True), out / file)


@kind("noise")
def noise_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Noise curves on the training data the model was trained on."""
    from lesion.pipeline import classifier as study

    model, xy = model_and_data(params, inputs)
    noise = study.noise(model, xy, repeats=int(params.get("repeats", 5)), seed=int(params.get("seed", 0)),
                        candidates=params.get("candidates"), scales=params.get("scales"))  # fmt: skip
    write_table(noise, out / "noise.parquet")


@kind("rotation")
def rotation_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """The random-rotation control: deletion curves and class information, units vs random directions."""
    from lesion.analyses.controls import direction_curves, direction_information

    model, train_xy = model_and_data({"split": "train"}, inputs)
    _, test_xy = model_and_data({"split": "test"}, inputs)
    seed = int(params.get("seed", 0))
    curves = direction_curves(model, train_xy, fractions=np.linspace(0, 1, int(params["fractions"])),
                                     repeats=int(params.get("repeats", 5)), seed=seed)  # fmt: skip
    write_table(curves, out / "curves.parquet")
    write_table(direction_information(model, test_xy, seed=seed), out / "information.parquet")


@kind("evaluate")
def evaluate_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Loss and accuracy of the model (or checkpoint) on its train labels and on the test data."""
    from lesion.analyses.evaluation import evaluate

    rows = []
    for split in ("train", "test"):
        model, xy = model_and_data({**params, "split": split}, inputs)
        res = evaluate(model, xy)
        rows.append({"split": split, "loss": res.loss, "accuracy": res.accuracy, "n": res.n})
    write_table(pd.DataFrame(rows), out / "metrics.parquet")
