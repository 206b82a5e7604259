"""The arithmetic floor: this machine's GEMM rate and the multiply-adds each method must do."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lesion.core.sites import Site

# -------------------------------------------------------------------------------- arithmetic floor

Lesions = list[tuple[str, int]]  # (layer, unit) pairs
Scores = np.ndarray  # (2, lesions): accuracy, mean loss


def gemm_rate(n: int, repeats: int = 3) -> dict:
    """This machine's fp32 matrix-multiply speed: an n x n x n GEMM, median of ``repeats`` after a warm-up."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return {"n": n, "seconds": times, "gflops": 2 * n**3 / statistics.median(times) / 1e9}


def layer_flops(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """Flops per example (2 per multiply-add) of every Linear and Conv module, from one dry forward pass."""
    flops: dict[str, float] = {}

    def count(name):
        def hook(module, inputs, output):
            per_out = module.in_features if isinstance(module, nn.Linear) else module.weight[0].numel()
            flops[name] = 2.0 * per_out * output.numel() / output.shape[0]

        return hook

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    handles = [m.register_forward_hook(count(n)) for n, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return flops


@dataclass(frozen=True)
class _SiteCost:
    """Flops per example around one site, Linear/Conv layers only (ReLU, BN, loss are not counted).

    - full: one whole forward pass.
    - prefix: what lesion's engine runs once per chunk: every layer up to its start node (the site's
      consumer where a Linear/Conv alone reads the site, else the site itself), i.e. full - after.
    - per_lesion: what the engine runs per lesion: the consumer's update for one deleted unit,
      flops(consumer) / its input units (a rank-1 update for a Linear, a one-input-channel conv for a
      Conv), plus every layer after the consumer (``after``).
    - later: every layer after the site, consumer in full: PEERS.md's "prefix once, later layers per
      lesion" method.
    """

    full: float
    prefix: float
    per_lesion: float
    later: float


def site_costs(model: nn.Module, sites: Sequence[Site], example: torch.Tensor) -> dict[str, _SiteCost]:
    """The ``_SiteCost`` of each site, with the engine's own consumer rule (``Plan.consumer``)."""
    from lesion.engine import Plan

    flops = layer_flops(model, example)
    full = sum(flops.values())
    plan = Plan(model, [s.name for s in sites])

    def after(node) -> float:
        return sum(flops.get(n.target, 0.0) for n in plan.downstream(node) if n.op == "call_module")

    costs = {}
    for s in sites:
        cons = plan.consumer(s.name, flat=not s.spatial)
        start = plan.site[s.name] if cons is None else cons.node
        update = 0.0
        if cons is not None:
            m = cons.module
            update = flops[cons.node.target] / (m.in_features if isinstance(m, nn.Linear) else m.in_channels)
        costs[s.name] = _SiteCost(full, full - after(start), update + after(start), after(plan.site[s.name]))
    return costs


def single_flops(costs: dict[str, _SiteCost], lesions: Lesions, n: int) -> dict[str, float]:
    """Flops of each method deleting each of ``lesions`` alone on ``n`` examples."""
    full = next(iter(costs.values())).full
    per_site = _count(lesions)
    return {
        "hook_loop": len(lesions) * n * full,  # one full forward per lesion
        # per layer and batch one forward per feature, plus the layer's and the model's intact outputs
        "captum": (len(lesions) + 2 * len(per_site)) * n * full,
        "later_layers": sum(n * costs[s].prefix + k * n * costs[s].later for s, k in per_site.items()),
        # Runner: one intact pass and 2 reference lesions per layer (its check), then the engine:
        # per site the prefix once, then per lesion the consumer update and the layers after it.
        "lesion": (1 + 2 * len(per_site)) * n * full
        + sum(n * costs[s].prefix + k * n * costs[s].per_lesion for s, k in per_site.items()),
    }


def curve_flops(costs: dict[str, _SiteCost], orders: list[Lesions], n: int) -> dict[str, float]:
    """Flops of each method computing every count of each cumulative curve on ``n`` examples."""
    full = next(iter(costs.values())).full
    steps = len(orders) * (len(orders[0]) + 1)
    per_order = sum(k * costs[s].per_lesion for s, k in _count(orders[0]).items())
    return {
        "hook_loop": steps * n * full,  # one full forward per count
        # Runner: one intact pass and its 2-point check; then per order one full pass, and per
        # step one incremental update (the consumer's rank-1 update and the layers after it).
        "lesion": 3 * n * full + len(orders) * n * (full + per_order),
    }


def _count(lesions: Lesions) -> dict[str, int]:
    out: dict[str, int] = {}
    for layer, _ in lesions:
        out[layer] = out.get(layer, 0) + 1
    return out
