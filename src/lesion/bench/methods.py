"""The methods timed: lesion, Captum's LayerFeatureAblation, and a plain hook loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------- methods
from lesion.bench.floor import Lesions, Scores
from lesion.core.lesions import Lesion
from lesion.core.runner import Runner
from lesion.core.sites import Site
from lesion.core.units import Unit
from lesion.engine.dispatch import cumulative, evaluate_lesions


def lesion_single(model, x, y, sites: Sequence[Site], lesions: Lesions, batch: int, bar=None, info=None,
                  precision: str = "fp32", sparsity: dict | None = None):  # fmt: skip
    """lesion's answer: a sweep of single-unit lesions (the engine, after its own check) -> (2, lesions)."""
    runner = Runner(model, (x, y), sites, batch_size=batch, precision=precision)
    values = evaluate_lesions(runner, runner.fit([Lesion([Unit(layer, i)]) for layer, i in lesions]), bar=bar)
    if info is not None:
        info.update(runner.fallbacks)
    if sparsity is not None:
        sparsity.update(exact_sparsity(runner))
    return np.array([values["accuracy"], values["loss"]])


def exact_sparsity(runner: Runner) -> dict:
    """How many (lesion, example) pairs the graph engine saw, how many the lesion left unchanged (the unit
    already held its replacement) and how many it recomputed."""
    eng = runner._engine
    pairs = int(getattr(eng, "examples", 0))
    unchanged, computed = int(getattr(eng, "unchanged", 0)), int(getattr(eng, "computed", 0))
    return {
        "pairs": pairs, "unchanged": unchanged, "recomputed": computed,
        "unchanged_fraction": unchanged / pairs if pairs else None,
        "skipped_fraction": runner.skipped() if pairs else None,
    }  # fmt: skip


def hook_single(model: nn.Module, batches, lesions: Lesions, bar=None) -> Scores:
    """One full forward pass per lesion with a plain forward hook zeroing the unit (channel) in place."""
    modules = dict(model.named_modules())
    out = np.zeros((2, len(lesions)))
    for k, (layer, j) in enumerate(lesions):

        def zero(module, inputs, output, j=j):
            output[:, j] = 0  # (batch, units) or (batch, channels, h, w)
            return output

        handle = modules[layer].register_forward_hook(zero)
        try:
            out[:, k] = _evaluate(model, batches)
        finally:
            handle.remove()
        if bar is not None:
            bar.update(1)
    return out


def _evaluate(model: nn.Module, batches) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` over ``batches``."""
    correct, loss, n = 0, 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)  # (batch, classes)
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
    return correct / n, loss / n


def captum_single(model, batches, shapes: dict[str, tuple], ppe: int, lesions: Lesions, bar=None) -> Scores:
    """Captum's LayerFeatureAblation, one call per layer and batch, with a feature mask per unit.

    ``shapes``: per-example output shape of each layer, units on its first axis. The forward function
    returns (correct, loss) summed over the batch (captum's aggregate mode) for ``ppe`` = 1, and per
    example otherwise (aggregate mode allows one perturbation per evaluation). Lesioned = intact -
    attribution. A layer's units not in ``lesions`` form one extra feature, ablated together.
    """
    from captum.attr import LayerFeatureAblation

    modules = dict(model.named_modules())
    n = sum(len(y) for _, y in batches)
    intact = np.array(_evaluate(model, batches)) * n  # (2,) correct and loss, summed
    forward = _captum_forward(model, per_example=ppe > 1)
    out = np.zeros((2, len(lesions)))
    for layer, members in _by_layer(lesions).items():
        shape = shapes[layer]
        units = [j for _, j in members]
        mask = torch.full((shape[0],), len(units), dtype=torch.long)
        mask[units] = torch.arange(len(units))
        mask = mask.reshape(1, -1, *[1] * (len(shape) - 1))  # (1, units, 1, ...): one feature per unit
        ablation = LayerFeatureAblation(forward, modules[layer])
        drop = np.zeros((2, len(units)))
        for x, y in batches:
            with torch.no_grad():
                attr = ablation.attribute(
                    x, additional_forward_args=(y,), layer_mask=mask, perturbations_per_eval=ppe
                )  # (2, *shape) aggregate, or (batch * 2, *shape) per example
            attr = attr.reshape(-1, 2, shape[0], attr[0, 0].numel())[..., 0].sum(0)  # (2, units)
            drop += attr[:, units].double().numpy()
            if bar is not None:
                bar.update(len(units))
        out[:, [k for k, _ in members]] = intact[:, None] - drop
    return out / n


def _captum_forward(model: nn.Module, per_example: bool) -> Callable:
    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)  # (batch, classes)
        correct = (logits.argmax(1) == y).to(logits.dtype)
        loss = F.cross_entropy(logits, y, reduction="none")
        if per_example:
            return torch.stack([correct, loss], 1)  # (batch, 2)
        return torch.stack([correct.sum(), loss.sum()])  # (2,)

    return forward


def _by_layer(lesions: Lesions) -> dict[str, list[tuple[int, int]]]:
    """layer -> [(position in ``lesions``, unit)]."""
    out: dict[str, list[tuple[int, int]]] = {}
    for k, (layer, j) in enumerate(lesions):
        out.setdefault(layer, []).append((k, j))
    return out


def _split(x: torch.Tensor, y: torch.Tensor, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(y), batch)]


def lesion_curves(model, x, y, sites: Sequence[Site], orders: list[Lesions], batch: int, bar=None, info=None,
                  sparsity: dict | None = None):  # fmt: skip
    """lesion's cumulative curves: (2, orders, counts), accuracy and loss after deleting the first c
    units of each order, for every c = 0..len(order)."""
    runner = Runner(model, (x, y), sites, batch_size=batch)
    counts = list(range(len(orders[0]) + 1))
    out = np.zeros((2, len(orders), len(counts)))
    for o, order in enumerate(orders):
        values = cumulative(runner, [Lesion([Unit(layer, i)]) for layer, i in order], counts)
        out[:, o] = np.array([values["accuracy"], values["loss"]])
        if bar is not None:
            bar.update(1)
    if info is not None:
        info.update(runner.fallbacks)
    if sparsity is not None:
        sparsity.update(exact_sparsity(runner))
    return out


def hook_curves(model, batches, orders: list[Lesions], widths: dict[str, int], picks, bar=None) -> Scores:
    """One forward pass per (order, count) of ``picks``: hooks mask the first count units of the order.

    ``widths``: units of each layer. Returns (2, picks): accuracy and loss.
    """
    modules = dict(model.named_modules())
    keep = {layer: torch.ones(w) for layer, w in widths.items()}  # 1 = intact, 0 = deleted
    prefix = [_positions(order) for order in orders]

    def hook(layer):
        def mask(module, inputs, output):
            return output.mul_(keep[layer].view(-1, *[1] * (output.ndim - 2)))  # (batch, units, ...)

        return mask

    handles = [modules[layer].register_forward_hook(hook(layer)) for layer in keep]
    out = np.zeros((2, len(picks)))
    try:
        for k, (o, count) in enumerate(picks):
            for layer, m in keep.items():
                m.fill_(1.0)
                pos, units = prefix[o].get(layer, (torch.zeros(0), torch.zeros(0, dtype=torch.long)))
                m[units[pos < count]] = 0.0
            out[:, k] = _evaluate(model, batches)
            if bar is not None:
                bar.update(1)
    finally:
        for h in handles:
            h.remove()
    return out


def _positions(order: Lesions) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """layer -> (positions in ``order``, units) of that layer's units."""
    return {
        layer: (torch.tensor([k for k, _ in members]), torch.tensor([j for _, j in members]))
        for layer, members in _by_layer(order).items()
    }
