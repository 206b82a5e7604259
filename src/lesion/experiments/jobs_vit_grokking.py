"""Job kinds of two "beyond the paper" studies: T1 (a ViT's deletion curves, MLP neurons and heads
separately: the existing ``train`` and ``curves`` kinds serve it) and T2 (single directions through
grokking): ``grok`` trains a one-layer GPT-style decoder on a + b mod p with full-batch AdamW and saves
model files at fixed steps; ``grok_curves`` reads every checkpoint back and measures cumulative deletion
curves of its MLP neurons and, separately, of its heads, on the training pairs (accuracy and loss at the
answer position).

The task: the input is the three tokens ``a b =`` (``=`` is token p), the answer (a + b) mod p is read
from the logits at the last position. Which pairs are trained on is a seeded split (``data_seed``), the
same for every seed of the model, stored in each model file (``extra["train_pairs"]``).

>>> x, y, train, test = pairs(5, 0.4, data_seed=0)
>>> x.shape, y.shape, len(train), len(test), x[7].tolist(), int(y[7])
(torch.Size([25, 3]), torch.Size([25]), 10, 15, [1, 2, 5], 3)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesion.core.metric import Metric
from lesion.errors import LesionError
from lesion.experiments.job import kind
from lesion.experiments.jobs import write_table


def pairs(p: int, frac: float, *, data_seed: int = 0):
    """Every pair (a, b) of 0..p-1 as ``a b =`` token ids (p*p, 3), the answers (a + b) mod p, and the
    indices of the training pairs (a seeded ``frac`` of them) and of the rest (the test pairs)."""
    import torch

    if not (isinstance(p, int) and p >= 2):
        raise LesionError(f"p={p!r}; expected a modulus of at least 2")
    if not 0.0 < frac < 1.0:
        raise LesionError(f"frac={frac!r}; expected the share of pairs trained on, in (0, 1)")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    x = torch.stack([a, b, torch.full_like(a, p)], 1)
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(int(data_seed)))
    n = max(1, min(p * p - 1, round(frac * p * p)))
    return x, (a + b) % p, perm[:n].sort().values, perm[n:].sort().values


class Answer(Metric):
    """``accuracy`` and mean cross-entropy ``loss`` of the logits at the last position against the
    answers (the batch's targets), for models that return (batch, positions, vocab)."""

    main, curve, discrete = "loss", "accuracy", ("accuracy",)

    def update(self, outputs, batch, lesions, intact=None):
        import torch
        import torch.nn.functional as F

        last = outputs[:, :, -1].float()  # (lesions, batch, vocab)
        y = batch.target.long()
        k, m, _ = last.shape
        ce = F.cross_entropy(last.flatten(0, 1), y.repeat(k), reduction="none").double().reshape(k, m)
        hits = (last.argmax(-1) == y[None]).to(torch.float64)
        self._add("loss", lesions, ce.sum(1).cpu().numpy())
        self._add("accuracy", lesions, hits.sum(1).cpu().numpy())
        self._add("count", lesions, np.full(k, float(m)))

    def compute(self):
        n = self.sums["count"]
        return {"accuracy": self.sums["accuracy"] / n, "loss": self.sums["loss"] / n}


def _arch(params: Mapping[str, Any]) -> dict[str, Any]:
    p, d = int(params["p"]), int(params["d_model"])
    return {
        "kind": "gpt",
        "vocab_size": p + 1,
        "context": 3,
        "d_model": d,
        "n_layer": 1,
        "n_head": int(params["n_head"]),
        "d_mlp": int(params.get("d_mlp") or 4 * d),
    }


def _step_file(step: int) -> str:
    return f"step{int(step):06d}.safetensors"


@kind("grok")
def grok_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """Train a one-layer decoder on a + b mod ``p`` (full batch, AdamW, ``weight_decay``) for ``steps``
    steps; every ``every`` steps record train/test loss and accuracy (``history.parquet``) and save the
    model as ``checkpoints/step<NNNNNN>.safetensors`` (step 0 is the initialisation); the final model is
    ``model.safetensors``. Trained on ``params["device"]`` (default CPU). The files are lesion ``gpt``
    model files (``lesion serve FILE --tokens PAIRS`` explores one on a token file of ``a b =`` triples)."""
    import torch
    import torch.nn.functional as F

    from lesion.models import build_model, save_model
    from lesion.util.progress import progress_bar

    p, seed = int(params["p"]), int(params.get("seed", 0))
    x, y, train, test = pairs(p, float(params["frac"]), data_seed=int(params.get("data_seed", 0)))
    arch = _arch(params)
    model = build_model(arch, seed=seed)
    device = params.get("device", "cpu")  # a GPU run is another job (its key has the device)
    model.to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=float(params["lr"]),
        weight_decay=float(params["weight_decay"]),
        betas=(0.9, 0.98),
    )
    steps, every = int(params["steps"]), int(params["every"])
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    extra = {"train_pairs": train, "test_pairs": test}
    train, test = train.to(device), test.to(device)
    meta = {"job": dict(params), "task": f"a b = -> (a + b) mod {p}; '=' is token {p}"}

    def evaluate(idx) -> tuple[float, float]:
        with torch.no_grad():
            logits = model(x[idx])[:, -1]
            return float(F.cross_entropy(logits, y[idx])), float((logits.argmax(-1) == y[idx]).float().mean())

    rows = []
    bar = progress_bar(None, f"grokking a+b mod {p}", False, total=steps)
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            model.eval()
            (trl, tra), (tel, tea) = evaluate(train), evaluate(test)
            rows.append((step, trl, tra, tel, tea))
            save_model(model, out / "checkpoints" / _step_file(step), arch=arch,
                       metadata=meta | {"step": step}, extra=extra)  # fmt: skip
        if step == steps:
            break
        model.train()
        loss = F.cross_entropy(model(x[train])[:, -1], y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()
    save_model(model, out / "model.safetensors", arch=arch, metadata=meta | {"step": steps}, extra=extra)
    cols = ["step", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
    write_table(pd.DataFrame(rows, columns=cols), out / "history.parquet")


def unit_kinds(model) -> dict[str, list[str]]:
    """{"neurons": the MLP activation sites, "heads": the attention head views} of a lesion transformer."""
    names = [n for n, _ in model.named_modules()]
    return {
        "neurons": [n for n in names if n.endswith(".mlp.act")],
        "heads": [n for n in names if n.endswith(".attn")],
    }


@kind("grok_curves")
def grok_curves_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """At every checkpoint of a ``grok`` job: cumulative deletion curves (random orders, ``repeats``
    each, zero replacement) of the MLP neurons and, separately, of the heads, on the training pairs;
    neurons at ``fractions`` evenly spaced points, heads at every head count. Columns: ``step, units,
    repeat, n_ablated, fraction, accuracy, loss`` (``curves.parquet``)."""
    from lesion.analyses.paper import ablation_curves
    from lesion.models import load_model

    folder = inputs["model"]
    history = pd.read_parquet(folder / "history.parquet")
    grid = np.linspace(0.0, 1.0, int(params["fractions"]))
    frames = []
    for step in history["step"]:
        model, info = load_model(folder / "checkpoints" / _step_file(int(step)))
        job = info["metadata"]["job"]
        x, y, train, _ = pairs(int(job["p"]), float(job["frac"]), data_seed=int(job.get("data_seed", 0)))
        data = (x[train], y[train])
        for name, layers in unit_kinds(model).items():
            t = ablation_curves(
                model, data, candidates=layers, repeats=int(params["repeats"]), seed=int(params["seed"]),
                fractions=grid if name == "neurons" else None, metric=Answer(), batch_size=4096,
            )  # fmt: skip
            t.insert(0, "units", name)
            t.insert(0, "step", int(step))
            frames.append(t.drop(columns=["order"]))
    write_table(pd.concat(frames, ignore_index=True), out / "curves.parquet")


def grok_model_files(params: Mapping[str, Any], key: str, folder: Path) -> dict[str, Path]:
    """{file name in the run's models/: path} for a finished ``grok`` job: the final model and each
    checkpoint, e.g. ``gpt1x64_add59_seed0_<key>_step000500.safetensors``."""
    stem = f"gpt1x{int(params['d_model'])}_add{int(params['p'])}_seed{int(params.get('seed', 0))}_{key[:8]}"
    files = {f"{stem}.safetensors": folder / "model.safetensors"}
    for ckpt in sorted((folder / "checkpoints").glob("step*.safetensors")):
        files[f"{stem}_{ckpt.name}"] = ckpt
    return files
