"""Job kinds of two follow-ups: recovery retraining (Meyes et al. 2019) and per-class necessity and
sufficiency of units (Bau et al. 2020). Both read a trained model (``inputs["model"]``) like every
measuring job, and use only the public lesioning API (``lesion.ablate``, ``lesion.evaluate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesion.experiments.job import kind
from lesion.experiments.jobs import _dataset, model_and_data, write_table


def _layer_units(model, xy) -> dict[str, int]:
    from lesion.analyses.sweep import sites_for

    return {s.name: s.width for s in sites_for(model, xy)}


@kind("recovery")
def recovery_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Meyes et al.: delete a random group of hidden units, then retrain the rest for a few epochs with
    the group held at its replacement (0, through the same hooks, so it gets no gradient); test accuracy
    intact, right after the deletion, and after retraining, per (fraction, repeat)."""
    from lesion.analyses.evaluation import evaluate
    from lesion.core.lesions import ablate
    from lesion.training.loop import train

    model, (_, labels) = model_and_data({"split": "train"}, inputs)
    trained = _trained(inputs)
    data = _dataset(trained).with_train_labels(labels)
    test = (data.x_test, data.y_test)
    widths = _layer_units(model, test)
    pool = [f"{layer}:{i}" for layer, w in widths.items() for i in range(w)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    intact = evaluate(model, test).accuracy
    rows = []
    for fi, fraction in enumerate(params["fractions"]):
        for r in range(int(params["repeats"])):
            rng = np.random.default_rng([int(params.get("seed", 0)), fi, r])
            group = [pool[i] for i in rng.choice(len(pool), round(fraction * len(pool)), replace=False)]
            model.load_state_dict(state)
            with ablate(model, group or []):
                before = evaluate(model, test).accuracy
                train(
                    model,
                    data,
                    epochs=int(params["epochs"]),
                    lr=float(params["lr"]),
                    batch_size=int(params["batch_size"]),
                    seed=1000 * fi + r,
                    device=trained.get("train", {}).get("device", "cpu"),
                )
                after = evaluate(model, test).accuracy
            rows.append((fraction, r, len(group), intact, before, after))
    model.load_state_dict(state)
    cols = ["fraction", "repeat", "n_ablated", "intact", "before", "after"]  # no times: tables are exact
    write_table(pd.DataFrame(rows, columns=cols), out / "recovery.parquet")


def _trained(inputs: Mapping[str, Path]) -> dict:
    import json

    return json.loads((inputs["model"] / "job.json").read_text())["params"]


@kind("class_units")
def class_units_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Bau et al. 2020: per class, rank ``params["layer"]``'s units by how much deleting each alone raises
    that class's loss (on up to ``params["rank_examples"]`` training examples), then on the test set
    delete the top k (necessity) or keep only the top k (sufficiency), against k random units."""
    from lesion.analyses.evaluation import evaluate
    from lesion.core.lesions import ablate

    model, (x_tr, y_tr) = model_and_data({"split": "train"}, inputs)
    _, (x_te, y_te) = model_and_data({"split": "test"}, inputs)
    layer = params["layer"]
    width = _layer_units(model, (x_te, y_te))[layer]
    m = int(params.get("rank_examples", 5000))
    damage = _class_damage(model, x_tr[:m], y_tr[:m], layer, width)  # (units, classes)
    classes = damage.shape[1]
    rng = np.random.default_rng(int(params.get("seed", 0)))
    intact = evaluate(model, (x_te, y_te)).per_class_accuracy
    rows = []
    for c in range(classes):
        top = np.argsort(-damage[:, c], kind="stable")
        for k in params["ks"]:
            sets = [("top", 0, top[:k])] + [
                ("random", r, rng.choice(width, k, replace=False)) for r in range(int(params["repeats"]))
            ]
            for order, r, chosen in sets:
                rest = np.setdiff1d(np.arange(width), chosen)
                for test, deleted in (("necessity", chosen), ("sufficiency", rest)):
                    with ablate(model, [f"{layer}:{int(i)}" for i in deleted]):
                        acc = evaluate(model, (x_te, y_te)).per_class_accuracy
                    others = np.delete(acc, c)
                    rows.append((c, int(k), test, order, r, acc[c], float(np.nanmean(others)), intact[c]))
    cols = ["class", "k", "test", "order", "repeat", "class_accuracy", "other_accuracy", "intact_accuracy"]
    write_table(pd.DataFrame(rows, columns=cols), out / "class_units.parquet")


def _class_damage(model, x, y, layer: str, width: int) -> np.ndarray:
    """Per unit and class: mean loss increase on that class's examples when the unit alone is deleted."""
    import torch
    import torch.nn.functional as F

    from lesion.core.lesions import ablate

    def class_loss() -> np.ndarray:
        with torch.no_grad():
            dev = next(model.parameters()).device
            loss = F.cross_entropy(model(x.to(dev)), y.to(dev), reduction="none").cpu().numpy()
        return np.bincount(y.numpy(), weights=loss, minlength=classes) / np.maximum(counts, 1)

    model.eval()
    with torch.no_grad():
        classes = int(model(x[:1].to(next(model.parameters()).device)).shape[1])
    counts = np.bincount(y.numpy(), minlength=classes)
    base = class_loss()
    out = np.empty((width, classes))
    for j in range(width):
        with ablate(model, f"{layer}:{j}"):
            out[j] = class_loss() - base
    return out
