"""Train K models of one architecture, one per seed: stacked into one vectorised model, or one by one.

``method="vmap"`` stacks the K models' parameters and buffers (``torch.func.stack_module_state``) and
runs them as one with ``torch.func.vmap`` over ``functional_call``. Each model keeps its own batch
order (a generator seeded with its seed, exactly as ``train(seed=seed)`` draws it), so batches are
stacked (K, batch, ...). The optimiser (torch's Adam or SGD) runs on the stacked tensors; both are
elementwise, so each model's update is exactly its own. Batch norm works under vmap: each model
normalises over its own batch and updates its own slice of the stacked running statistics.
Hence vmap training equals one-by-one training up to float rounding, except for dropout, whose masks
vmap draws differently (equally distributed, not the same numbers).

``method="loop"`` calls ``lesion.training.train`` once per seed. ``method="auto"`` picks vmap only
where it measured faster on a 2-core CPU: small fully connected models (see ``choose_method``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lesion._progress import progress_bar
from lesion.data import Dataset
from lesion.errors import DataError, LesionError
from lesion.models import build_model
from lesion.training import (
    Regulariser,
    _batch_bounds,
    _forked_rng,
    _optimizer,
    _options,
    _Saver,
    _set_lr,
    history_frame,
    lr_at,
    train,
)

METHODS = ("auto", "vmap", "loop")
VMAP_MAX_PARAMS = 200_000  # per model; see choose_method


def choose_method(model: nn.Module, n_models: int) -> str:
    """What ``method="auto"`` picks: "vmap" for at least 2 models without conv layers and of at most
    ``VMAP_MAX_PARAMS`` parameters each, else "loop".

    Why, measured on the 2-core CPU this was written on (1 thread, K=8 models, batch 128, Adam,
    3 epochs, evaluation included; loop / vmap wall time): MLP 64-32-10 on digits 0.40 s / 0.16 s
    (2.4x); 784-128-128-10 on mnist5k 2.7 s / 2.3 s (1.14x); 784-256-256-10 4.9 s / 4.7 s (1.02x);
    784-512-512-10 9.4 s / 10.8 s (0.87x), with batch norm 12.1 s / 14.5 s (0.84x); convnet
    (width_mult 0.125, BN, 1 epoch) 38 s / 56 s (0.67x). vmap saves per-step Python and optimiser
    overhead, but its batched matmuls (bmm) cost as much as the K separate ones, and its batched
    convolutions more, so it wins only where the overhead dominates: small models. Not measured on a
    GPU, where vmap's fewer, larger kernels may well win more often: pass ``method="vmap"`` there.
    """
    if n_models < 2:
        return "loop"
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    n_params = sum(p.numel() for p in model.parameters())
    return "vmap" if not has_conv and n_params <= VMAP_MAX_PARAMS else "loop"


def train_ensemble(
    arch: dict[str, Any],
    data: Dataset,
    *,
    seeds: Sequence[int],
    method: str = "auto",
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
    device: str | torch.device = "cpu",
    progress: bool = False,
    train_labels: torch.Tensor | Sequence[torch.Tensor] | None = None,
    select_reg: float = 0.0,
    select_sites: Sequence[str] | None = None,
    checkpoints: Sequence[float] | None = None,
    directory: str | Path | None = None,
    callback: Callable[[int, float, nn.Module], Any] | None = None,
) -> tuple[list[nn.Module], pd.DataFrame]:
    """Build ``build_model(arch, seed=s)`` for each of ``seeds`` and train each as
    ``train(model, data, seed=s, ...)`` would; returns the models (eval mode, in ``seeds`` order) and
    one table: column ``seed``, then ``train``'s columns.

    ``train_labels``: None (``data.y_train``), one tensor (n,) for all, or one per seed ((K, n) or a
    list). With ``directory`` each model's files go to ``directory/seed_{s}/`` as ``train`` writes
    them; ``callback(seed, epoch, model)`` is called at the ``checkpoints``. Other options as in
    ``train``. Under vmap, ``seconds`` is the epoch time of the whole ensemble, and a model that
    reaches ``until_train_acc`` is restored to its state at that epoch when the others finish.
    """
    seeds = _check_seeds(seeds)
    if method not in METHODS:
        raise LesionError(f"method={method!r}; expected one of {', '.join(METHODS)}")
    labels = _per_model_labels(data, train_labels, len(seeds))
    args = dict(locals())
    if method == "auto":
        with torch.device("meta"):
            method = choose_method(build_model(arch), len(seeds))
    runs = []
    for k, s in enumerate(seeds):
        d = data.with_train_labels(labels[k])
        opts = _options(args | {"seed": s, "data": d})
        folder = None if directory is None else Path(directory) / f"seed_{s}"
        call = None if callback is None else _bind(callback, s)
        runs.append((s, d, opts, folder, call))
    if method == "loop":
        return _loop(arch, runs, args)
    return _vmapped(arch, runs, args)


def _loop(arch, runs, args) -> tuple[list[nn.Module], pd.DataFrame]:
    keys = ("epochs", "lr", "batch_size", "optimizer", "weight_decay", "schedule", "step_size", "gamma",
            "until_train_acc", "max_epochs", "device", "progress", "select_reg", "select_sites",
            "checkpoints")  # fmt: skip
    models, tables = [], []
    for s, d, _, folder, call in runs:
        model = build_model(arch, seed=s)
        history = train(model, d, seed=s, directory=folder, arch=arch, callback=call,
                        **{k: args[k] for k in keys})  # fmt: skip
        models.append(model)
        tables.append(history.assign(seed=s))
    return models, _table(tables)


def _vmapped(arch, runs, args) -> tuple[list[nn.Module], pd.DataFrame]:
    """All models as one: stacked parameters, vmapped forward, one optimiser step for all."""
    device = torch.device(args["device"])
    seeds = [r[0] for r in runs]
    models = [build_model(arch, seed=s).to(device) for s in seeds]
    params, buffers = stack_module_state(models)  # name -> (K, ...), params are leaves with grad
    base = copy.deepcopy(models[0]).to("meta")  # the stateless skeleton functional_call runs
    x_train, x_test = args["data"].x_train.to(device), args["data"].x_test.to(device)
    y_train = torch.stack([r[1].y_train for r in runs]).to(device)  # (K, n)
    y_test = args["data"].y_test.to(device)
    n_classes = args["data"].n_classes
    opts = runs[0][2]
    total, bounds = opts["planned_epochs"], _batch_bounds(y_train.shape[1], args["batch_size"])
    savers = [_Saver(o, d, f, arch, c, args["checkpoints"], len(bounds)) for _, d, o, f, c in runs]
    reg = Regulariser(models[0], x_train[:2], args["select_reg"], args["select_sites"], n_classes)

    def loss_fn(p, b, x, y):  # one model: x (batch, ...), y (batch,)
        loss = F.cross_entropy(functional_call(base, (p, b), (x,)), y)
        return loss + reg.penalty(y) if reg else loss  # the hooks fire inside, on this model's slice

    losses_of = vmap(loss_fn, randomness="different")
    opt = _optimizer(params.values(), args["optimizer"], args["lr"], args["weight_decay"])
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    rows: list[list[tuple]] = [[] for _ in seeds]
    frozen: dict[int, dict[str, torch.Tensor]] = {}  # model -> its state when it reached the target
    until = args["until_train_acc"]

    def checkpoint(step: int) -> None:
        for k, saver in enumerate(savers):
            if k not in frozen and saver.wants(step):
                _unstack(models[k], params, buffers, k)
                saver.at_step(step, models[k], rows[k])

    bar_total = total * len(bounds)
    with (
        _forked_rng(seeds[0], device),
        reg.capture(base),
        progress_bar(None, "train", args["progress"], total=bar_total) as bar,
    ):
        checkpoint(0)
        for epoch in range(1, total + 1):
            start = time.perf_counter()
            rate = _set_lr(opt, lr_at(epoch, args["lr"], args["schedule"], total, step_size=args["step_size"],
                                      gamma=args["gamma"]))  # fmt: skip
            base.train()
            order = torch.stack([torch.randperm(y_train.shape[1], generator=g) for g in gens]).to(device)
            for step, (lo, hi) in enumerate(bounds, start=1):
                idx = order[:, lo:hi]  # (K, batch)
                losses = losses_of(params, buffers, x_train[idx], y_train.gather(1, idx))  # (K,)
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()  # model k's loss reaches only model k's slice
                opt.step()
                bar.update()
                if step < len(bounds):
                    checkpoint((epoch - 1) * len(bounds) + step)
            train_m = _evaluate_stacked(base, params, buffers, x_train, y_train)
            test_m = _evaluate_stacked(base, params, buffers, x_test, y_test.expand(len(seeds), -1))
            reg.captured.clear()  # evaluation ran through the hooks too
            seconds = time.perf_counter() - start
            for k in range(len(seeds)):
                if k not in frozen:
                    rows[k].append((epoch, *train_m[k], *test_m[k], rate, seconds))
            checkpoint(epoch * len(bounds))
            for k in range(len(seeds)):
                if until is not None and k not in frozen and train_m[k][1] >= until:
                    frozen[k] = _slice(params, buffers, k)
            if len(frozen) == len(seeds):
                break
    for k, model in enumerate(models):
        _unstack(model, params, buffers, k, frozen.get(k))
        model.eval()
        savers[k].finish(model, rows[k])
    return models, _table([history_frame(r).assign(seed=s) for s, r in zip(seeds, rows, strict=True)])


def _evaluate_stacked(base, params, buffers, x, y, batch_size: int = 1000) -> list[tuple[float, float]]:
    """(mean loss, accuracy) per model on ``x`` (n, ...) shared by all and labels ``y`` (K, n)."""
    n_models, n = y.shape
    loss = torch.zeros(n_models, dtype=torch.float64, device=y.device)
    correct = torch.zeros(n_models, dtype=torch.int64, device=y.device)
    run = vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)), in_dims=(0, 0, None))
    base.eval()
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            logits = run(params, buffers, x[lo : lo + batch_size])  # (K, batch, classes)
            yb = y[:, lo : lo + batch_size]  # (K, batch)
            ce = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
            loss += ce.view(n_models, -1).sum(1).double()
            correct += (logits.argmax(2) == yb).sum(1)
    return [(float(loss[k]) / n, int(correct[k]) / n) for k in range(n_models)]


def _slice(params, buffers, k: int) -> dict[str, torch.Tensor]:
    return {name: t[k].detach().clone() for name, t in (params | buffers).items()}


def _unstack(model: nn.Module, params, buffers, k: int, state: dict | None = None) -> None:
    """Load model ``k``'s slice of the stacked tensors (or a saved ``state``) into ``model``."""
    state = state if state is not None else {n: t[k].detach() for n, t in (params | buffers).items()}
    model.load_state_dict(state, strict=True)


def _table(tables: list[pd.DataFrame]) -> pd.DataFrame:
    out = pd.concat(tables, ignore_index=True)
    return out[["seed", *[c for c in out.columns if c != "seed"]]]


def _bind(callback, seed):
    return lambda epoch, model: callback(seed, epoch, model)


def _check_seeds(seeds) -> list[int]:
    ok = isinstance(seeds, Sequence) and not isinstance(seeds, str) and len(seeds) > 0
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    if not ok:
        raise LesionError(f"seeds={seeds!r}; expected a non-empty list of non-negative ints")
    if len(set(seeds)) != len(seeds):
        raise LesionError(f"seeds={list(seeds)!r} repeat; expected distinct seeds (one model each)")
    return list(seeds)


def _per_model_labels(data: Dataset, train_labels, n_models: int) -> list[torch.Tensor]:
    """One label tensor (n,) per model."""
    if train_labels is None:
        return [data.y_train] * n_models
    if isinstance(train_labels, torch.Tensor) and train_labels.ndim == 1:
        return [train_labels] * n_models
    stacked = list(train_labels)
    if len(stacked) != n_models:
        raise DataError(
            f"{len(stacked)} label tensors for {n_models} seeds; expected one per seed or one for all"
        )
    return stacked
