"""Side-by-side timings of lesion against its peers (``lesion bench``), following shared/PEERS.md.

Workloads (full sizes; ``quick=True`` shrinks each one):
- W1: each of the 1,024 hidden units of a 784-512-512-10 MLP deleted alone, accuracy and loss on
  10,000 examples: lesion (``Evaluator.single_units``, the engine) vs Captum's LayerFeatureAblation
  (perturbations_per_eval 1, 4, 16) vs one forward pass per unit with a zeroing hook.
- W2: cumulative curves, 10 random orders over all 1,024 units, every count (1,025 points per order):
  lesion (``Evaluator.cumulative``) vs the hook loop (one forward pass per count).
- W3: each channel of the last three conv layers of the paper's convnet (width 0.5, batch norm) deleted
  alone on 2,000 28x28 images: lesion vs Captum (a feature mask per channel).
- W4: peak resident memory of W1 at 60,000 examples with lesion, in a child process.

Every method runs in this process on the same model, data and thread count. Its numbers are checked
against lesion's on a few units first (that run is also its warm-up), then it is timed (median of
``repeats`` runs), and its last timed run is checked against lesion's on everything. A method's floor is
the arithmetic it must do (``_SiteCost``) divided by the GFLOP/s of a large GEMM timed in the same run.

Data: mnist5k's 5,000 real digits (its seed-0 train split, then its test split) tiled to the size
needed, so every run sees the same examples. The MLP is trained on the 4,000 training digits for 2
epochs (1 in quick mode; seed 0); the convnet keeps its seed-0 random weights, with batch-norm
statistics estimated on the W3 images (training it would cost minutes and does not change the work).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesion._alloc import tune_allocator
from lesion._progress import progress_bar
from lesion.data import load_dataset
from lesion.errors import LesionError
from lesion.evaluation import Evaluator
from lesion.sites import Site, default_candidates, find_sites
from lesion.units import Unit

WORKLOADS = ("W1", "W2", "W3", "W4")
PERTURBATIONS_PER_EVAL = (1, 4, 16)
Lesions = list[tuple[str, int]]  # (layer, unit) pairs
Scores = np.ndarray  # (2, lesions): accuracy, mean loss


@dataclass(frozen=True)
class Sizes:
    """How big each workload is."""

    examples: int = 10_000  # W1, W2
    units: int = 512  # W1, W2: units lesioned per hidden layer
    orders: int = 10  # W2
    hook_stride: int = 16  # W2: the hook loop is timed on one count in this many, then extrapolated
    conv_examples: int = 2_000  # W3
    conv_channels: int | None = None  # W3: channels lesioned per layer (None: all)
    captum_conv_channels: int = 8  # W3: channels per layer Captum is timed on, then extrapolated
    memory_examples: int = 60_000  # W4
    gemm: int = 4096  # side of the GEMM that measures this machine's GFLOP/s
    check_units: int = 4  # units per layer of the check that is also each method's warm-up
    mlp_batch: int = 1000
    conv_batch: int = 250  # small batches keep a convnet's activations in cache (shared/ENV.md)
    mlp_epochs: int = 2  # training of the MLP on mnist5k


FULL = Sizes()
QUICK = Sizes(examples=1_000, units=32, orders=2, hook_stride=4, conv_examples=50, conv_channels=4,
              captum_conv_channels=2, memory_examples=6_000, gemm=1024, check_units=1,
              mlp_epochs=1)  # fmt: skip


class Mismatch(RuntimeError):
    """A method's numbers differ from lesion's beyond float rounding, so its timing would mean nothing."""


def run(
    *,
    quick: bool = False,
    repeats: int = 3,
    threads: int = 2,
    only: Sequence[str] | None = None,
    progress: bool = False,
) -> dict:
    """Run the chosen workloads (default: all) and return the results as a JSON-able dict.

    Sets torch's thread count to ``threads`` for the run (restored afterwards) and tunes glibc malloc.
    Raises LesionError for unknown workload names, Mismatch where a method disagrees with lesion.
    """
    chosen = _choose(only)
    if repeats < 1 or threads < 1:
        raise LesionError(f"repeats={repeats}, threads={threads}; expected positive ints")
    tuned = tune_allocator()
    load_start = os.getloadavg()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ctx = _Context(QUICK if quick else FULL, repeats, threads, progress)
        workloads = {}
        for name in chosen:
            start = time.perf_counter()
            workloads[name] = _WORKLOADS[name](ctx) | {"wall_seconds": time.perf_counter() - start}
    finally:
        torch.set_num_threads(previous)
    return {
        "machine": machine(threads, tuned, load_start),
        "settings": {"quick": quick, "repeats": repeats, "threads": threads, "workloads": list(chosen)}
        | {"sizes": asdict(ctx.sizes)},
        "gemm": ctx.gemm,
        "setup_seconds": ctx.setup_seconds,
        "workloads": workloads,
    }


def save(results: dict, path: str | Path) -> None:
    """Write ``results`` as indented JSON, through a temporary file beside ``path``."""
    from lesion._outputs import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n"))


def machine(threads: int, tuned: bool, load_start: tuple[float, ...]) -> dict:
    """CPU, core count, library versions, date and load averages (a loaded machine times slowly)."""
    cpu = platform.processor() or "unknown"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import lesion

    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "numpy": np.__version__, "captum": _captum_version(),
        "lesion": lesion.__version__, "python": platform.python_version(), "threads": threads,
        "malloc_tuned": tuned, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_start": [round(v, 2) for v in load_start],
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip


def _choose(only: Sequence[str] | None) -> tuple[str, ...]:
    if only is None:
        return WORKLOADS
    names = tuple(dict.fromkeys(n.strip().upper() for n in only if n.strip()))
    bad = [n for n in names if n not in WORKLOADS]
    if bad or not names:
        raise LesionError(f"workloads {list(only)!r}; expected some of {', '.join(WORKLOADS)}")
    return tuple(n for n in WORKLOADS if n in names)


# ----------------------------------------------------------------------------------- models and data


def mnist_examples(n: int, digits: tuple[torch.Tensor, torch.Tensor] | None = None):
    """``n`` normalised 28x28 digits and labels: ``digits`` (default: mnist5k's 5,000, train split
    then test split) tiled as often as needed."""
    if digits is None:
        d = load_dataset("mnist5k")
        digits = torch.cat([d.x_train, d.x_test]), torch.cat([d.y_train, d.y_test])
    x, y = digits
    reps = -(-n // len(y))
    return x.repeat(reps, 1, 1, 1)[:n].contiguous(), y.repeat(reps)[:n].contiguous()


def trained_mlp(epochs: int = 2) -> nn.Sequential:
    """The 784-512-512-10 MLP (seed 0) trained on mnist5k's training split."""
    from lesion.models import mlp
    from lesion.training import train

    model = mlp((1, 28, 28), [512, 512], 10, seed=0)
    train(model, load_dataset("mnist5k"), epochs=epochs, seed=0)
    return model.eval()


def calibrated_convnet(x: torch.Tensor, batch: int) -> nn.Sequential:
    """The paper's convnet at width 0.5 with batch norm (seed 0), BN statistics averaged over ``x``."""
    from lesion.models import convnet

    net = convnet((1, 28, 28), 10, width_mult=0.5, batchnorm=True, seed=0)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    net.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            net(x[i : i + batch])
    for m in norms:
        m.momentum = 0.1
    return net.eval()


class _Context:
    """Sizes, settings, the GEMM rate, and the models and data the workloads share (built once)."""

    def __init__(self, sizes: Sizes, repeats: int, threads: int, progress: bool):
        self.sizes, self.repeats, self.threads, self.progress = sizes, repeats, threads, progress
        self.gemm = gemm_rate(sizes.gemm)
        self.setup_seconds: dict[str, float] = {}

    @functools.cached_property
    def mlp(self) -> nn.Sequential:
        start = time.perf_counter()
        model = trained_mlp(self.sizes.mlp_epochs)
        self.setup_seconds["train_mlp"] = time.perf_counter() - start
        return model

    @functools.cached_property
    def digits(self) -> tuple[torch.Tensor, torch.Tensor]:
        return mnist_examples(self.sizes.examples)

    def bar(self, desc: str, total: int):
        return progress_bar(None, desc, self.progress, total=total)

    def floor(self, flops: float) -> float:
        return flops / (self.gemm["gflops"] * 1e9)


# ------------------------------------------------------------------------------------------- methods


def lesion_single(model, x, y, sites: Sequence[Site], lesions: Lesions, batch: int, bar=None, info=None):
    """lesion's answer: ``Evaluator.single_units`` (the engine, after its own check) -> (2, lesions)."""
    ev = Evaluator(model, (x, y), sites, batch_size=batch)
    rows = ev.single_units([Unit(layer, i) for layer, i in lesions], 0.0, bar=bar)
    if info is not None:
        info.update(ev.fallbacks)
    return np.array([[r.accuracy for r in rows], [r.loss for r in rows]])


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


def lesion_curves(model, x, y, sites: Sequence[Site], orders: list[Lesions], batch: int, bar=None, info=None):
    """lesion's cumulative curves: (2, orders, counts), accuracy and loss after deleting the first c
    units of each order, for every c = 0..len(order)."""
    ev = Evaluator(model, (x, y), sites, batch_size=batch)
    counts = list(range(len(orders[0]) + 1))
    out = np.zeros((2, len(orders), len(counts)))
    for o, order in enumerate(orders):
        out[:, o] = np.array(ev.cumulative([Unit(layer, i) for layer, i in order], counts, 0.0)).T
        if bar is not None:
            bar.update(1)
    if info is not None:
        info.update(ev.fallbacks)
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


# -------------------------------------------------------------------------------- arithmetic floor


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
        # Evaluator: one intact pass and 2 reference lesions per layer (its check), then the engine:
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
        # Evaluator: one intact pass and its 2-point check; then per order one full pass, and per
        # step one incremental update (the consumer's rank-1 update and the layers after it).
        "lesion": 3 * n * full + len(orders) * n * (full + per_order),
    }


def _count(lesions: Lesions) -> dict[str, int]:
    out: dict[str, int] = {}
    for layer, _ in lesions:
        out[layer] = out.get(layer, 0) + 1
    return out


# -------------------------------------------------------------------------------------- measuring


def _bench(ctx: _Context, label: str, fn: Callable, items: list, check: list[int], repeats: int, n: int,
           ref: np.ndarray | None = None) -> tuple[list[float], np.ndarray, dict | None]:  # fmt: skip
    """Run ``fn(items[check], bar)`` as warm-up (checked against lesion's ``ref`` if given), then time
    ``repeats`` runs of ``fn(items, bar)``; returns the times, the last result and its differences from
    ``ref`` (on ``n`` examples)."""
    if check:
        with ctx.bar(f"{label} warm-up", len(check)) as bar:
            got = fn([items[k] for k in check], bar)
        if ref is not None:
            _agree(label, ref[:, check], got, n)
    times, got = [], None
    for r in range(repeats):
        gc.collect()
        with ctx.bar(f"{label} {r + 1}/{repeats}", len(items)) as bar:
            start = time.perf_counter()
            got = fn(items, bar)
            times.append(time.perf_counter() - start)
    return times, got, None if ref is None else _agree(label, ref, got, n)


def _agree(label: str, ref: np.ndarray, got: np.ndarray, n: int) -> dict:
    """Max |difference| of accuracy and loss from lesion's; Mismatch beyond float rounding (a loss off by
    more than 1e-4 relative, or more than one example in 1,000 flipping at a near tie)."""
    d_acc = np.abs(ref[0] - got[0])
    d_loss = np.abs(ref[1] - got[1])
    if d_acc.max() * n > max(1, n // 1000) + 1e-6 or (d_loss / np.maximum(1.0, np.abs(ref[1]))).max() > 1e-4:
        raise Mismatch(
            f"{label}: accuracy differs from lesion's by up to {d_acc.max():.3g}, loss by up to "
            f"{d_loss.max():.3g}, on {n} examples"
        )
    return {"accuracy": float(d_acc.max()), "loss": float(d_loss.max())}


def _median(times: list[float] | None) -> float | None:
    return statistics.median(times) if times else None


def _summary(ctx, runs: dict[str, list[float] | None], flops: dict[str, float], scale=None) -> dict:
    """seconds (median runs times ``scale`` where extrapolated), floors and ratios of one workload."""
    scale = scale or {}
    seconds = {m: None if t is None else _median(t) * scale.get(m, 1.0) for m, t in runs.items()}
    floors = {m: ctx.floor(f) for m, f in flops.items()}
    lesion = seconds["lesion"]
    ratios = {f"{m}/lesion": s / lesion for m, s in seconds.items() if m != "lesion" and s is not None}
    ratios["lesion/floor"] = lesion / floors["lesion"]
    ratios |= {f"lesion/{m}_floor": lesion / f for m, f in floors.items() if m != "lesion"}
    return {
        "seconds": seconds, "runs": runs, "flops": flops, "floor_seconds": floors, "ratios": ratios,
    }  # fmt: skip


def _captum_missing() -> dict:
    return {"available": False, "reason": "captum is not importable: pip install 'lesion[bench]'"}


def _captum_version() -> str | None:
    try:
        import captum
    except ImportError:
        return None
    return captum.__version__


# -------------------------------------------------------------------------------------- workloads


def w1(ctx: _Context) -> dict:
    """Each hidden unit of the MLP deleted alone: lesion vs the hook loop vs Captum (1, 4, 16 per eval)."""
    s, model, (x, y) = ctx.sizes, ctx.mlp, ctx.digits
    sites = find_sites(model, x[:2])
    lesions = [(site.name, i) for site in sites for i in range(min(s.units, site.width))]
    check = [k for k, (_, i) in enumerate(lesions) if i < s.check_units]
    batches, n, fallbacks = _split(x, y, s.mlp_batch), len(y), {}

    def lesion_fn(ls, bar):
        return lesion_single(model, x, y, sites, ls, s.mlp_batch, bar, fallbacks)

    runs: dict = {}
    runs["lesion"], ref, _ = _bench(ctx, "W1 lesion", lesion_fn, lesions, check, ctx.repeats, n)
    hook = functools.partial(hook_single, model, batches)
    runs["hook_loop"], _, d_hook = _bench(ctx, "W1 hook loop", hook, lesions, check, ctx.repeats, n, ref)
    diffs, captum = {"hook_loop": d_hook}, _captum_missing()
    runs["captum"] = runs["captum_best"] = None
    if _captum_version() is not None:
        shapes = {site.name: site.shape for site in sites}
        by_ppe, diffs["captum"], best = _captum_scan(ctx, model, batches, lesions, check, shapes, n, ref)
        runs["captum"], runs["captum_best"] = by_ppe[1], by_ppe[best]
        captum = {"available": True, "version": _captum_version(), "best_perturbations_per_eval": best}
        captum["seconds_by_perturbations_per_eval"] = {str(k): _median(t) for k, t in by_ppe.items()}
    flops = single_flops(site_costs(model, sites, x[:1]), lesions, n)
    return {
        "description": "delete each hidden unit of a 784-512-512-10 MLP alone; accuracy and loss",
        "n_examples": n, "n_lesions": len(lesions), "batch_size": s.mlp_batch,
        **_summary(ctx, runs, flops), "max_abs_diff": diffs, "captum": captum,
        "intact": dict(zip(("accuracy", "loss"), _evaluate(model, batches), strict=True)),
        "engine_fallbacks": fallbacks, "notes": _NOTES["W1"],
    }  # fmt: skip


def _captum_scan(ctx, model, batches, lesions, check, shapes, n, ref) -> tuple[dict, dict, int]:
    """Captum at each perturbations_per_eval: checked, timed once (ppe=1 ``repeats`` times), then the
    fastest topped up to ``repeats`` runs. Returns the runs by ppe, the worst differences, the fastest."""
    by_ppe: dict[int, list[float]] = {}
    worst = {"accuracy": 0.0, "loss": 0.0}
    for ppe in PERTURBATIONS_PER_EVAL:
        fn = functools.partial(captum_single, model, batches, shapes, ppe)
        reps = ctx.repeats if ppe == 1 else 1
        by_ppe[ppe], _, d = _bench(ctx, f"W1 captum ppe={ppe}", fn, lesions, check, reps, n, ref)
        worst = {k: max(v, d[k]) for k, v in worst.items()}
    best = min(PERTURBATIONS_PER_EVAL, key=lambda k: by_ppe[k][0])
    if best != 1 and ctx.repeats > 1:
        fn = functools.partial(captum_single, model, batches, shapes, best)
        more, _, _ = _bench(ctx, f"W1 captum ppe={best}", fn, lesions, [], ctx.repeats - 1, n, ref)
        by_ppe[best] += more
    return by_ppe, worst, best


def w2(ctx: _Context) -> dict:
    """Cumulative curves in random orders at every count: lesion vs the hook loop (timed on a subset)."""
    s, model, (x, y) = ctx.sizes, ctx.mlp, ctx.digits
    sites = find_sites(model, x[:2])
    units = [(site.name, i) for site in sites for i in range(min(s.units, site.width))]
    rng = np.random.default_rng(0)
    orders = [[units[i] for i in rng.permutation(len(units))] for _ in range(s.orders)]
    counts, n, fallbacks = len(units) + 1, len(y), {}
    picks = [(o, c) for o in range(s.orders) for c in range(o % s.hook_stride, counts, s.hook_stride)]

    def lesion_fn(os_, bar):
        return lesion_curves(model, x, y, sites, os_, s.mlp_batch, bar, fallbacks)

    runs: dict = {}
    runs["lesion"], curves, _ = _bench(ctx, "W2 lesion", lesion_fn, orders, [0], ctx.repeats, n)
    ref = curves[:, [o for o, _ in picks], [c for _, c in picks]]  # (2, picks)
    widths = {site.name: site.width for site in sites}
    hook = functools.partial(hook_curves, model, _split(x, y, s.mlp_batch), orders, widths)
    check = list(range(0, len(picks), max(1, len(picks) // 4)))[:4]
    runs["hook_loop"], _, d_hook = _bench(ctx, "W2 hook loop", hook, picks, check, ctx.repeats, n, ref)
    fraction = len(picks) / (s.orders * counts)
    summary = _summary(ctx, runs, curve_flops(site_costs(model, sites, x[:1]), orders, n),
                       scale={"hook_loop": 1 / fraction})  # fmt: skip
    return {
        "description": "cumulative curves: random orders over all hidden units, every count",
        "n_examples": n, "n_orders": s.orders, "n_units": len(units), "n_points": s.orders * counts,
        "batch_size": s.mlp_batch, **summary, "max_abs_diff": {"hook_loop": d_hook},
        "extrapolated": fraction < 1,
        "extrapolation": {"hook_loop": {
            "measured_fraction": fraction, "measured_forward_passes": len(picks),
            "forward_passes": s.orders * counts, "measured_seconds": _median(runs["hook_loop"]),
            "how": f"one count in {s.hook_stride} of each order (offset by the order) timed, seconds "
                   "scaled linearly per forward pass; compared with lesion on exactly those counts",
        }},
        "engine_fallbacks": fallbacks, "notes": _NOTES["W2"],
    }  # fmt: skip


def w3(ctx: _Context) -> dict:
    """Each channel of the convnet's last three conv layers deleted alone: lesion vs Captum."""
    s = ctx.sizes
    x, y = mnist_examples(s.conv_examples)
    model = calibrated_convnet(x, s.conv_batch)
    sites = default_candidates(find_sites(model, x[:2]))  # the ReLUs after the last three convs
    per_layer = {site.name: min(s.conv_channels or site.width, site.width) for site in sites}
    lesions = [(site.name, c) for site in sites for c in range(per_layer[site.name])]
    check = [k for k, (_, c) in enumerate(lesions) if c < s.check_units]
    batches, n, fallbacks = _split(x, y, s.conv_batch), len(y), {}

    def lesion_fn(ls, bar):
        return lesion_single(model, x, y, sites, ls, s.conv_batch, bar, fallbacks)

    runs: dict = {}
    runs["lesion"], ref, _ = _bench(ctx, "W3 lesion", lesion_fn, lesions, check, ctx.repeats, n)
    out = {"captum": _captum_missing(), "max_abs_diff": {}, "extrapolated": False}
    runs["captum"], scale = None, {}
    if _captum_version() is not None:
        timed = [k for k, (_, c) in enumerate(lesions) if c < s.captum_conv_channels]
        sub = [lesions[k] for k in timed]
        sub_check = [i for i, (_, c) in enumerate(sub) if c < s.check_units]
        fn = functools.partial(captum_single, model, batches, {site.name: site.shape for site in sites}, 1)
        runs["captum"], _, d = _bench(ctx, "W3 captum", fn, sub, sub_check, ctx.repeats, n, ref[:, timed])
        ext = _captum_extrapolation(sites, per_layer, s.captum_conv_channels, len(batches))
        scale = {"captum": 1 / ext["measured_fraction"]}
        ext["measured_seconds"] = _median(runs["captum"])
        out |= {"captum": {"available": True, "version": _captum_version(), "perturbations_per_eval": 1},
                "max_abs_diff": {"captum": d}, "extrapolated": ext["measured_fraction"] < 1,
                "extrapolation": {"captum": ext}}  # fmt: skip
    flops = single_flops(site_costs(model, sites, x[:1]), lesions, n)
    del flops["hook_loop"]
    return {
        "description": "delete each channel of the last three conv layers of the paper's convnet "
        "(width 0.5, batch norm) alone; accuracy and loss",
        "n_examples": n, "n_lesions": len(lesions), "layers": per_layer, "batch_size": s.conv_batch,
        **_summary(ctx, runs, flops, scale), **out, "engine_fallbacks": fallbacks, "notes": _NOTES["W3"],
    }  # fmt: skip


def _captum_extrapolation(sites, per_layer: dict[str, int], timed: int, n_batches: int) -> dict:
    """Forward passes Captum runs on the timed channels vs on all: per call (layer, batch) one per
    feature (the untimed channels ablated together are one more) and two for the intact outputs."""
    measured = total = 0
    for site in sites:
        c = per_layer[site.name]
        rest = int(c < site.width)
        measured += n_batches * (min(timed, c) + int(min(timed, c) < site.width) + 2)
        total += n_batches * (c + rest + 2)
    return {
        "measured_fraction": measured / total, "measured_forward_passes": measured,
        "forward_passes": total,
        "how": f"the first {timed} channels of each layer timed, seconds scaled linearly per forward "
        "pass; compared with lesion on exactly those channels",
    }  # fmt: skip


def w4(ctx: _Context) -> dict:
    """Peak memory of W1 at ``memory_examples`` examples with lesion, in a fresh child process."""
    s = ctx.sizes
    with tempfile.TemporaryDirectory() as tmp:
        weights, digits = Path(tmp) / "mlp.pt", Path(tmp) / "digits.pt"
        torch.save(ctx.mlp.state_dict(), weights)
        torch.save(mnist_examples(5_000), digits)  # reading mnist5k's CSV again would cost seconds
        spec = {"weights": str(weights), "digits": str(digits), "examples": s.memory_examples,
                "units": s.units, "batch": s.mlp_batch, "threads": ctx.threads}  # fmt: skip
        code = "import sys; from lesion.bench import memory_child; memory_child(sys.argv[1])"
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"W4: the measuring process failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "description": "peak resident memory of W1 (every hidden unit deleted alone) with lesion",
        "n_examples": s.memory_examples, "n_lesions": child.pop("n_lesions"), **child,
        "notes": _NOTES["W4"],
    }  # fmt: skip


def memory_child(spec_text: str) -> None:
    """W4's child process: load the model and data, reset the peak RSS, run W1 with lesion, print JSON."""
    spec = json.loads(spec_text)
    tune_allocator()
    torch.set_num_threads(spec["threads"])
    from lesion.models import mlp

    model = mlp((1, 28, 28), [512, 512], 10)
    model.load_state_dict(torch.load(spec["weights"], weights_only=True))
    model.eval()
    x, y = mnist_examples(spec["examples"], torch.load(spec["digits"], weights_only=True))
    sites = find_sites(model, x[:2])
    lesions = [(site.name, i) for site in sites for i in range(min(spec["units"], site.width))]
    lesion_single(model, x[:100], y[:100], sites, lesions[:2], spec["batch"])  # load lazy code paths
    gc.collect()
    _malloc_trim()  # hand freed heap pages back, so reused ones count towards the peak
    reset = _reset_peak()
    base = _status_kb("VmRSS")
    start = time.perf_counter()
    lesion_single(model, x, y, sites, lesions, spec["batch"])
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    print(json.dumps({
        "peak_mb": (peak - base) / 1024, "baseline_mb": base / 1024, "peak_rss_mb": peak / 1024,
        "data_mb": (x.nbytes + y.nbytes) / 2**20, "peak_reset": reset, "seconds": seconds,
        "n_lesions": len(lesions),
    }))  # fmt: skip


def _malloc_trim() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


_WORKLOADS: dict[str, Callable[[_Context], dict]] = {"W1": w1, "W2": w2, "W3": w3, "W4": w4}

_NOTES = {
    "W1": [
        "data: mnist5k's 5,000 digits tiled to n_examples; MLP trained (sizes.mlp_epochs) on 4,000 of them",
        "lesion = Evaluator(...) + single_units: its intact pass and its own 2-unit check included",
        "captum: LayerFeatureAblation per layer and batch; ppe 1 uses an aggregate (correct, loss) "
        "forward, ppe > 1 a per-example one; captum_best = the fastest ppe",
        "hook_loop: one full forward per unit, a plain forward hook zeroing the unit in place",
        "flops count Linear/Conv multiply-adds (x2) only; rank-1 updates are memory-bound, so "
        "lesion/floor well above 1 is expected",
        "later_layers floor: PEERS.md's 'prefix once, later layers per lesion' method (not timed)",
    ],
    "W2": [
        "same model and data as W1; orders: numpy default_rng(0) permutations of all hidden units",
        "lesion = Evaluator(...) + cumulative per order (its 2-point check on the first order included)",
        "hook_loop: one full forward per count, hooks multiplying each layer by a 0/1 mask",
    ],
    "W3": [
        "data: the first n_examples of mnist5k's digits; convnet seed-0 weights, BN statistics "
        "estimated on those images (momentum None), eval mode",
        "captum: LayerFeatureAblation on each ReLU with a (1, C, 1, 1) mask, one feature per channel",
    ],
    "W4": [
        "a fresh process loads model and data, warms up on 100 examples, trims the heap, resets VmHWM "
        "(/proc/self/clear_refs), runs W1 with lesion; peak_mb = VmHWM after - VmRSS before (torch CPU "
        "tensors are invisible to tracemalloc)",
        "data: mnist5k's 5,000 digits tiled to n_examples",
    ],
}


# -------------------------------------------------------------------------------------------- table


def table(results: dict):
    """A rich Table: per workload and method the seconds, floor, ratio to lesion, max differences."""
    from rich.table import Table

    gemm, m = results["gemm"], results["machine"]
    t = Table(
        title=f"lesion bench: {m['cpu']}, {m['threads']} threads, GEMM {gemm['gflops']:.0f} GFLOP/s, load "
        f"{m['load_average_start'][0]:.2f}->{m['load_average_end'][0]:.2f}",
        caption="ratio: method seconds / lesion seconds; lesion row: lesion seconds / its arithmetic floor. "
        "|Δ|: max abs difference from lesion's accuracy and loss. 'N% timed': the rest extrapolated.",
    )
    for col in ("", "method", "seconds", "floor s", "ratio", "|Δacc|", "|Δloss|", "note"):
        left = col in ("", "method", "note")
        t.add_column(col, justify="left" if left else "right", no_wrap=col != "note")
    for name, w in results["workloads"].items():
        if name == "W4":
            note = f"peak +{w['peak_mb']:.0f} MB"
            t.add_row(name, "lesion", _fmt(w["seconds"]), "", "", "", "", note)
            continue
        for method, sec in w["seconds"].items():
            peer = method.removesuffix("_best")
            diff = w["max_abs_diff"].get(peer, {})
            ratio = w["ratios"]["lesion/floor"] if method == "lesion" else w["ratios"].get(f"{method}/lesion")
            cells = [_fmt(sec), _fmt(w["floor_seconds"].get(peer)), _fmt(ratio, "x")]
            cells += [_fmt(diff.get(k), sci=True) for k in ("accuracy", "loss")]
            t.add_row(name, method, *cells, _row_note(w, method))
    return t


def _row_note(w: dict, method: str) -> str:
    if method.startswith("captum") and not w["captum"].get("available"):
        return "skipped: no captum"
    if method == "captum_best":
        return f"ppe={w['captum']['best_perturbations_per_eval']}"
    ext = w.get("extrapolation", {}).get(method)
    return f"{ext['measured_fraction']:.0%} timed" if ext else ""


def _fmt(x: float | None, suffix: str = "", sci: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:.1e}" if sci else f"{x:.3g}{suffix}" if x < 100 else f"{x:.0f}{suffix}"
