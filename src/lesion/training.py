"""One training loop for the paper's classifiers: seeded, deterministic on CPU, one row per epoch.

Randomness: the batch order comes from a local ``torch.Generator`` seeded with ``seed``; the loop
itself (dropout masks) runs inside ``torch.random.fork_rng`` seeded with ``seed``, so results repeat
and the caller's global RNG state is the same afterwards as before.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lesion._progress import progress_bar
from lesion._util import eval_mode, model_device
from lesion.data import Dataset
from lesion.errors import DataError, LesionError

COLUMNS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"]
OPTIMIZERS = ("adam", "sgd")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs, for scripts; the library itself never needs it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def _forked_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (CPU and ``device``) for the duration, then restore the caller's state."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def train(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 128,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    train_labels: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Train ``model`` in place with cross-entropy on ``data``; returns one row per epoch.

    Columns: epoch (1-based), train_loss, train_accuracy (a full pass in eval mode after the epoch, on
    the labels trained on), test_loss, test_accuracy, seconds (wall time of the epoch, evaluation
    included). ``train_labels`` replaces ``data.y_train`` (e.g. corrupted labels). ``optimizer`` is
    "adam" or "sgd" (momentum 0.9). The model is moved to ``device`` and left in eval mode.
    """
    _check_args(epochs, lr, batch_size, optimizer, weight_decay, seed)
    device = torch.device(device)
    y_train = data.y_train if train_labels is None else data.with_train_labels(train_labels).y_train
    x_train, y_train = data.x_train.to(device), y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    model.to(device)
    opt = _optimizer(model, optimizer, lr, weight_decay)
    generator = torch.Generator().manual_seed(seed)  # batch order, independent of the global RNG
    bounds = _batch_bounds(len(y_train), batch_size)
    rows = []
    with _forked_rng(seed, device), progress_bar(None, "train", progress, total=epochs * len(bounds)) as bar:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            order = torch.randperm(len(y_train), generator=generator).to(device)
            for lo, hi in bounds:
                idx = order[lo:hi]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])  # (batch, classes) logits
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            train_loss, train_acc = evaluate(model, x_train, y_train)
            test_loss, test_acc = evaluate(model, x_test, y_test)
            rows.append((epoch, train_loss, train_acc, test_loss, test_acc, time.perf_counter() - start))
            bar.set_postfix(train_acc=f"{train_acc:.3f}", test_acc=f"{test_acc:.3f}")
    model.eval()
    return pd.DataFrame(rows, columns=COLUMNS).astype({"epoch": "int64"})


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``(x, y)``, in eval mode without gradients;
    every module's training flag is restored afterwards.
    """
    if x.ndim == 0 or y.ndim != 1 or x.shape[0] != y.shape[0] or len(y) == 0:
        raise DataError(
            f"inputs of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)}; "
            "expected inputs (n, ...) and labels (n,) of the same non-zero length"
        )
    device = model_device(model)
    loss, correct = 0.0, 0
    with torch.no_grad(), eval_mode(model):
        for lo in range(0, len(y), batch_size):
            xb, yb = x[lo : lo + batch_size].to(device), y[lo : lo + batch_size].to(device)
            logits = model(xb)  # (batch, classes)
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return loss / len(y), correct / len(y)


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch; a last batch of one example joins the one before (BatchNorm needs 2)."""
    starts = list(range(0, n, batch_size))
    if n > 1 and n % batch_size == 1 and len(starts) > 1:
        starts.pop()
    return [(lo, starts[i + 1] if i + 1 < len(starts) else n) for i, lo in enumerate(starts)]


def _optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)


def _check_args(epochs, lr, batch_size, optimizer, weight_decay, seed) -> None:
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(epochs) or epochs < 0:
        raise LesionError(f"epochs={epochs!r}; expected a non-negative int")
    if not is_int(batch_size) or batch_size < 1:
        raise LesionError(f"batch_size={batch_size!r}; expected a positive int")
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not lr > 0:
        raise LesionError(f"lr={lr!r}; expected a positive number")
    if not isinstance(weight_decay, int | float) or isinstance(weight_decay, bool) or weight_decay < 0:
        raise LesionError(f"weight_decay={weight_decay!r}; expected a non-negative number")
    if optimizer not in OPTIMIZERS:
        raise LesionError(f"optimizer={optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if not is_int(seed) or seed < 0:
        raise LesionError(f"seed={seed!r}; expected a non-negative int")
