"""Job kinds of two studies beyond the paper: every unit's loss change under four replacement methods
(T3: zero, mean, resample, optimal constant; Li & Janson 2024, Pochinkov et al. 2024), and the
attribution estimate against the exact effect (T4; Kramar et al. 2024), on a trained MLP, a convnet and
lesion's small GPT-style decoder. The decoder is trained by the ``train`` job (``arch["kind"] ==
"gpt"``: ``lesion.experiments.gpt_train.decoder_job``), so it is saved in the run's models like every
trained network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesion.experiments.gpt_train import corpus as _corpus
from lesion.experiments.job import kind
from lesion.experiments.jobs import model_and_data, write_table

METHODS = ("zero", "mean", "resample", "optimal")


def held_out(params: Mapping[str, Any], inputs: Mapping[str, Path]):
    """(model, held-out data, metric, is a language model) of ``inputs["model"]``: the first
    ``params["test_examples"]`` test examples of a classifier with ``Classification``, or the first
    ``params["test_sequences"]`` test sequences of a decoder with ``NextTokenLoss`` (None: all)."""
    import torch

    from lesion.core.metric import Classification
    from lesion.core.metric_lm import NextTokenLoss
    from lesion.models import load_model

    trained = json.loads((inputs["model"] / "job.json").read_text())["params"]
    if trained["arch"]["kind"] != "gpt":
        model, xy = model_and_data({"split": "test", "examples": params.get("test_examples")}, inputs)
        return model, xy, Classification(), False
    model, _ = load_model(inputs["model"] / "model.safetensors")
    seqs, _ = _corpus(trained)
    ids = torch.from_numpy(seqs[len(seqs) * 3 // 4 :][: params.get("test_sequences")])
    return model, {"input_ids": ids}, NextTokenLoss(), True


def replacement(method: str, params: Mapping[str, Any]):
    """The Replacement of ``method``: Zero, Mean, Resample(seed, repeats) or Optimal."""
    from lesion.core.replacements import Mean, Resample, Zero
    from lesion.engine.optimal import Optimal

    if method == "resample":
        return Resample(int(params.get("seed", 0)), int(params.get("resample_repeats", 1)))
    if method == "optimal":  # fitted on every measured example (up to 10,000): optimal where it is measured
        return Optimal(steps=int(params.get("optimal_steps", 60)), examples=10_000)
    return {"zero": Zero, "mean": Mean}[method]()


@kind("replacements")
def replacements_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Every unit deleted alone under each of ``params["methods"]``, on held-out data: one row per
    (method, unit) with ``loss``/``delta_loss`` (and, for classifiers, ``selectivity`` and
    ``delta_accuracy`` from the unit table)."""
    from lesion.analyses.paper import unit_table
    from lesion.analyses.sweep import sites_for, sweep
    from lesion.core.lesions import Lesion

    model, data, metric, lm = held_out(params, inputs)
    sites = sites_for(model, data)
    frames = []
    for method in params.get("methods", METHODS):
        r = replacement(method, params)
        if lm:
            units = [f"{s.name}:{j}" for s in sites for j in range(s.width)]
            df = sweep(model, data, [Lesion(u, r) for u in units], metric, sites=sites)
            df = pd.DataFrame(
                {
                    "layer": [s.name for s in sites for _ in range(s.width)],
                    "unit": [j for s in sites for j in range(s.width)],
                    "selectivity": np.nan,
                    "loss": df["loss"].to_numpy(),
                    "delta_loss": df["delta_loss"].to_numpy(),
                    "delta_accuracy": df["delta_accuracy"].to_numpy(),
                }
            )
        else:
            t = unit_table(model, data, sites=sites, replacement=r)
            df = t[["layer", "unit", "selectivity", "loss", "delta_loss", "delta_accuracy"]].copy()
        heads = {s.name for s in sites if s.heads}
        df.insert(2, "kind", np.where(df["layer"].isin(heads), "head", "neuron"))
        df.insert(0, "method", method)
        frames.append(df)
    write_table(pd.concat(frames, ignore_index=True), out / "replacements.parquet")


@kind("attribution")
def attribution_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """``lesion.attribution_table(exact=True)`` on held-out data (zero replacement): every unit's
    first-order estimate beside its exact loss change."""
    from lesion.analyses.attribution import attribution_table

    model, data, metric, _ = held_out(params, inputs)
    t = attribution_table(model, data, metric=metric, exact=True)
    write_table(
        t[["unit", "layer", "index", "kind", "estimate", "exact", "missed"]], out / "attribution.parquet"
    )
