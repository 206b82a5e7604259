"""One training loop for the paper's classifiers: seeded, deterministic on CPU, one row per epoch.

Randomness: the batch order comes from a local ``torch.Generator`` seeded with ``seed``; the loop
itself (dropout masks) runs inside ``torch.random.fork_rng`` seeded with ``seed``, so results repeat
and the caller's global RNG state is the same afterwards as before.

Options: Adam or SGD with momentum 0.9; a per-epoch learning-rate schedule (``lr_at``); a fixed number
of epochs or training until the train accuracy reaches a target; checkpoints at chosen (even
fractional) epochs, to a directory or a callback; and the class-selectivity regulariser of Leavitt &
Morcos (2020), ``loss = CE - select_reg * mean SI`` per mini-batch (``batch_selectivity``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lesion.data import Dataset
from lesion.errors import DataError, LesionError
from lesion.training.regulariser import Regulariser
from lesion.util.modules import eval_mode, model_device
from lesion.util.progress import progress_bar

COLUMNS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "seconds"]
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")
DEFAULT_EPOCHS, DEFAULT_MAX_EPOCHS = 5, 1000
Callback = Callable[[float, nn.Module], Any]


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


def lr_at(
    epoch: int, lr: float, schedule: str, total: int, *, step_size: int | None = None, gamma: float = 0.1
) -> float:
    """The learning rate during ``epoch`` (1-based) of ``total`` planned epochs.

    "constant": ``lr``. "cosine": ``lr * (1 + cos(pi * (epoch - 1) / total)) / 2``, from ``lr`` down
    towards 0. "step": ``lr * gamma ** ((epoch - 1) // step_size)``, ``step_size`` defaulting to a
    third of ``total`` (at least 1). With ``until_train_acc`` the planned total is ``max_epochs``.

    >>> [lr_at(e, 1.0, "step", 6, gamma=0.5) for e in range(1, 7)]
    [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    >>> [round(lr_at(e, 1.0, "cosine", 4), 3) for e in range(1, 5)]
    [1.0, 0.854, 0.5, 0.146]
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * (1 + math.cos(math.pi * (epoch - 1) / max(total, 1))) / 2
    if schedule == "step":
        size = step_size if step_size is not None else max(1, total // 3)
        return lr * gamma ** ((epoch - 1) // size)
    raise LesionError(f"schedule={schedule!r}; expected one of {', '.join(SCHEDULES)}")


def train(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 128,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "constant",
    step_size: int | None = None,
    gamma: float = 0.1,
    until_train_acc: float | None = None,
    max_epochs: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    train_labels: torch.Tensor | None = None,
    select_reg: float = 0.0,
    select_sites: Sequence[str] | None = None,
    checkpoints: Sequence[float] | None = None,
    directory: str | Path | None = None,
    arch: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> pd.DataFrame:
    """Train ``model`` in place with cross-entropy on ``data``; returns one row per epoch.

    Columns: epoch (1-based), train_loss, train_accuracy (a full pass in eval mode after the epoch, on
    the labels trained on), test_loss, test_accuracy, lr (of the epoch), seconds (wall time of the
    epoch, evaluation included). ``train_labels`` replaces ``data.y_train`` (e.g. corrupted labels).
    ``optimizer`` is "adam" or "sgd" (momentum 0.9); ``schedule``, ``step_size``, ``gamma``: see
    ``lr_at``. Train ``epochs`` epochs (default 5), or with ``until_train_acc`` until the train accuracy
    after an epoch reaches it, at most ``max_epochs`` (default 1000). The model is moved to ``device``
    and left in eval mode.

    ``select_reg`` = alpha adds ``-alpha * batch_selectivity`` of the post-ReLU sites (``find_sites``,
    or the modules named in ``select_sites``) to each mini-batch's loss: alpha < 0 lowers selectivity,
    alpha > 0 raises it.

    ``checkpoints``: epochs (0 = before training; fractions such as 1.5 = mid-epoch) at which
    ``callback(epoch, model)`` is called (model in eval mode; without ``checkpoints``: after every
    epoch) and, with ``directory``, the model saved as ``epoch_0004.safetensors``. With ``directory``
    the final model is saved as ``model.safetensors`` and the table as ``history.csv`` (rewritten each
    epoch); each file holds ``arch`` (required then), the training options as metadata and the train
    labels as the extra tensor ``train_labels``.
    """
    if not isinstance(data, Dataset):
        raise DataError(
            f"train needs a lesion Dataset with a held-out split, got {type(data).__name__}; for arrays "
            "use lesion.data.from_arrays(x, y) (a seeded stratified split, normalised) or "
            "from_arrays(x, y, x_test=..., y_test=...)"
        )
    opts = _options(locals())
    device = torch.device(device)
    data = data if train_labels is None else data.with_train_labels(train_labels)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    model.to(device)
    opt = _optimizer(model.parameters(), optimizer, lr, weight_decay)
    generator = torch.Generator().manual_seed(seed)  # batch order, independent of the global RNG
    bounds = _batch_bounds(len(y_train), batch_size)
    saver = _Saver(opts, data, directory, arch, callback, checkpoints, len(bounds))
    reg = Regulariser(model, x_train[:2], select_reg, select_sites, data.n_classes)
    rows: list[tuple] = []
    total = opts["planned_epochs"]
    with _forked_rng(seed, device), progress_bar(None, "train", progress, total=total * len(bounds)) as bar:
        saver.at_step(0, model, rows)
        for epoch in range(1, total + 1):
            start = time.perf_counter()
            rate = _set_lr(opt, lr_at(epoch, lr, schedule, total, step_size=step_size, gamma=gamma))
            model.train()
            order = torch.randperm(len(y_train), generator=generator).to(device)
            with reg.capture(model):
                for step, (lo, hi) in enumerate(bounds, start=1):
                    idx = order[lo:hi]
                    loss = F.cross_entropy(model(x_train[idx]), y_train[idx])  # (batch, classes) logits
                    if reg:
                        loss = loss + reg.penalty(y_train[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    bar.update()
                    if progress:  # .item() waits for the device: only when someone watches
                        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                    if step < len(bounds):
                        saver.at_step((epoch - 1) * len(bounds) + step, model, rows)
            train_loss, train_acc = evaluate(model, x_train, y_train)
            test_loss, test_acc = evaluate(model, x_test, y_test)
            seconds = time.perf_counter() - start
            rows.append((epoch, train_loss, train_acc, test_loss, test_acc, rate, seconds))
            bar.set_postfix(train_acc=f"{train_acc:.3f}", test_acc=f"{test_acc:.3f}")
            saver.at_step(epoch * len(bounds), model, rows)
            if until_train_acc is not None and train_acc >= until_train_acc:
                break
    model.eval()
    saver.finish(model, rows)
    return history_frame(rows)


def history_frame(rows: list[tuple]) -> pd.DataFrame:
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


def _optimizer(params, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> float:
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


class _Saver:
    """Checkpoints (callback and/or files) at chosen steps, and the final model and history files."""

    def __init__(self, opts, data, directory, arch, callback, checkpoints, steps_per_epoch):
        self.opts, self.callback, self.arch = opts, callback, arch
        self.labels = data.y_train
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            if not isinstance(arch, dict):
                raise LesionError(
                    f"directory={str(directory)!r} needs arch=, the dict that rebuilds the model"
                )
            self.directory.mkdir(parents=True, exist_ok=True)
        if checkpoints is None:  # the callback alone: after every epoch
            n = opts["planned_epochs"]
            points = list(range(1, n + 1)) if callback is not None else []
        else:
            points = _check_checkpoints(checkpoints)
            if callback is None and directory is None:
                raise LesionError("checkpoints need directory= (to save models) or callback= (to be called)")
        self.at = {round(e * steps_per_epoch): e for e in sorted(points, reverse=True)}

    def wants(self, step: int) -> bool:
        return step in self.at

    def at_step(self, step: int, model: nn.Module, rows: list[tuple]) -> None:
        epoch = self.at.get(step)
        if epoch is None:
            return
        with eval_mode(model):
            if self.callback is not None:
                self.callback(epoch, model)
            if self.directory is not None:
                path = self.directory / f"{checkpoint_name(epoch)}.safetensors"
                self._save(model, path, rows, epoch=epoch)
                self._write_history(rows)

    def finish(self, model: nn.Module, rows: list[tuple]) -> None:
        if self.directory is not None:
            self._save(model, self.directory / "model.safetensors", rows, epoch=len(rows))
            self._write_history(rows)

    def _save(self, model, path, rows, *, epoch) -> None:
        from lesion.models import save_model  # models imports nothing from here; keep the edge one-way

        meta = dict(self.opts, epoch=epoch, epochs_run=len(rows))
        meta["history"] = history_frame(rows).to_dict(orient="records")
        save_model(model, path, arch=self.arch, metadata=meta, extra={"train_labels": self.labels})

    def _write_history(self, rows) -> None:
        path = self.directory / "history.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        history_frame(rows).to_csv(tmp, index=False)
        tmp.replace(path)


def checkpoint_name(epoch: float) -> str:
    """``epoch_0004`` for whole epochs, ``epoch_0001.5`` for fractions.

    >>> checkpoint_name(4), checkpoint_name(1.25)
    ('epoch_0004', 'epoch_0001.25')
    """
    return f"epoch_{int(epoch):04d}" if float(epoch).is_integer() else f"epoch_{epoch:09.4f}".rstrip("0")


def _check_checkpoints(checkpoints) -> list[float]:
    if isinstance(checkpoints, str) or not isinstance(checkpoints, Sequence):
        raise LesionError(f"checkpoints={checkpoints!r}; expected a list of epochs, e.g. [1, 2, 4, 8]")
    out = []
    for e in checkpoints:
        if isinstance(e, bool) or not isinstance(e, int | float) or not (math.isfinite(e) and e >= 0):
            raise LesionError(f"checkpoint epoch {e!r}; expected a non-negative number (0 = before training)")
        out.append(int(e) if float(e).is_integer() else float(e))
    return sorted(set(out))


def _options(args: dict[str, Any]) -> dict[str, Any]:
    """Check ``train``'s arguments; returns the JSON-able training options recorded with saved models."""
    epochs, until, max_epochs = args["epochs"], args["until_train_acc"], args["max_epochs"]
    _check_args(DEFAULT_EPOCHS if epochs is None else epochs, args["lr"], args["batch_size"],
                args["optimizer"], args["weight_decay"], args["seed"])  # fmt: skip
    if args["schedule"] not in SCHEDULES:
        raise LesionError(f"schedule={args['schedule']!r}; expected one of {', '.join(SCHEDULES)}")
    if args["step_size"] is not None and not (_is_int(args["step_size"]) and args["step_size"] > 0):
        raise LesionError(f"step_size={args['step_size']!r}; expected a positive int or None")
    if not _is_number(args["gamma"]) or not args["gamma"] > 0:
        raise LesionError(f"gamma={args['gamma']!r}; expected a positive number")
    if not _is_number(args["select_reg"]) or not math.isfinite(args["select_reg"]):
        raise LesionError(f"select_reg={args['select_reg']!r}; expected a finite number")
    if until is None:
        if max_epochs is not None:
            raise LesionError("max_epochs caps until_train_acc; without it give epochs=")
        planned = DEFAULT_EPOCHS if epochs is None else epochs
    else:
        if not _is_number(until) or not 0 < until <= 1:
            raise LesionError(f"until_train_acc={until!r}; expected an accuracy in (0, 1]")
        if epochs is not None:
            raise LesionError("give epochs= or until_train_acc= (capped by max_epochs=), not both")
        planned = DEFAULT_MAX_EPOCHS if max_epochs is None else max_epochs
        if not _is_int(planned) or planned < 1:
            raise LesionError(f"max_epochs={max_epochs!r}; expected a positive int")
    keys = ("lr", "batch_size", "optimizer", "weight_decay", "schedule", "step_size", "gamma",
            "until_train_acc", "seed", "select_reg")  # fmt: skip
    opts = {k: args[k] for k in keys} | {"planned_epochs": planned, "dataset": args["data"].name}
    return opts | {"device": str(args["device"]), "select_sites": _names(args["select_sites"])}


def _names(names) -> list[str] | None:
    return None if names is None else [names] if isinstance(names, str) else list(names)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_args(epochs, lr, batch_size, optimizer, weight_decay, seed) -> None:
    if not _is_int(epochs) or epochs < 0:
        raise LesionError(f"epochs={epochs!r}; expected a non-negative int")
    if not _is_int(batch_size) or batch_size < 1:
        raise LesionError(f"batch_size={batch_size!r}; expected a positive int")
    if not _is_number(lr) or not lr > 0:
        raise LesionError(f"lr={lr!r}; expected a positive number")
    if not _is_number(weight_decay) or weight_decay < 0:
        raise LesionError(f"weight_decay={weight_decay!r}; expected a non-negative number")
    if optimizer not in OPTIMIZERS:
        raise LesionError(f"optimizer={optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if not _is_int(seed) or seed < 0:
        raise LesionError(f"seed={seed!r}; expected a non-negative int")
