"""The job kinds experiments are made of: train a model, and measure it (units, curves, noise)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesion.experiments.runner import kind


def _write_table(df: pd.DataFrame, path: Path) -> None:
    df = df.copy()
    df.attrs = {}
    df.to_parquet(path, index=False)


@kind("train")
def train_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Train ``params["arch"]`` on ``params["dataset"]`` (labels corrupted as asked) and save it."""
    from lesion.corruption import corrupt_labels
    from lesion.data import load_dataset
    from lesion.models import build_model, save_model
    from lesion.training import train

    data = load_dataset(params["dataset"], root=params.get("root"), seed=params.get("data_seed", 0))
    arch = {**params["arch"], "input_shape": list(data.input_shape), "n_classes": data.n_classes}
    seed = int(params.get("seed", 0))
    model = build_model(arch, seed=seed)
    labels = corrupt_labels(
        data.y_train, float(params.get("corrupt", 0.0)), mode=params.get("corrupt_mode", "shuffle"),
        n_classes=data.n_classes, seed=seed,
    )  # fmt: skip
    history = train(model, data, train_labels=labels, seed=seed, **params.get("train", {}))
    save_model(model, out / "model.safetensors", arch=arch, metadata={"job": dict(params)},
               extra={"train_labels": labels})  # fmt: skip
    _write_table(history, out / "history.parquet")


def _model_and_data(params, inputs):
    from lesion.data import load_dataset
    from lesion.models import load_model

    model, info = load_model(inputs["model"] / "model.safetensors")
    job = info["metadata"]["job"]
    data = load_dataset(job["dataset"], root=job.get("root"), seed=job.get("data_seed", 0))
    labels = info["extra"]["train_labels"]
    split = params.get("split", "train")
    xy = (data.x_train, labels) if split == "train" else (data.x_test, data.y_test)
    return model, xy


@kind("curves")
def curves_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Cumulative ablation curves of the model in ``inputs["model"]`` (train labels it was trained on)."""
    import lesion

    model, xy = _model_and_data(params, inputs)
    n = params.get("fractions")
    fractions = None if n is None else np.linspace(0, 1, int(n))
    units = pd.read_parquet(inputs["units"] / "units.parquet") if "units" in inputs else None
    curves = lesion.ablation_curves(
        model, xy, orders=params.get("orders", ["random"]), repeats=int(params.get("repeats", 10)),
        seed=int(params.get("seed", 0)), fractions=fractions, units=units,
        candidates=params.get("candidates"),
    )  # fmt: skip
    _write_table(curves, out / "curves.parquet")


@kind("units")
def units_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """The unit table of the model in ``inputs["model"]`` on held-out data."""
    import lesion

    model, xy = _model_and_data({"split": params.get("split", "test")}, inputs)
    _write_table(lesion.unit_table(model, xy), out / "units.parquet")


@kind("noise")
def noise_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Noise curves of the model in ``inputs["model"]`` on the training data it was trained on."""
    import lesion

    model, xy = _model_and_data(params, inputs)
    scales = params.get("scales")
    kwargs = {"scales": [float(s) for s in scales]} if scales else {}
    noise = lesion.noise_curves(model, xy, repeats=int(params.get("repeats", 5)),
                                seed=int(params.get("seed", 0)), **kwargs)  # fmt: skip
    _write_table(noise, out / "noise.parquet")
