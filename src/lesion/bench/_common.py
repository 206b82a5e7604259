"""Sizes, the shared context, models and data, and how a method is timed and checked."""

from __future__ import annotations

import functools
import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lesion.bench.floor import Lesions, Scores, gemm_rate  # noqa: F401  (re-exported to the workloads)
from lesion.data import load_dataset
from lesion.util.progress import progress_bar

PERTURBATIONS_PER_EVAL = (1, 4, 16)


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
    lm_layers: int = 4  # W5-W7: the GPT-style model (HF GPT-2 architecture, random weights)
    lm_width: int = 256
    lm_neurons: int = 1024
    lm_heads: int = 8
    lm_vocab: int = 1024
    lm_sequences: int = 64
    lm_tokens: int = 128
    lm_batch: int = 64
    lm_units: int = 1024  # W5, W7: neurons per block deleted
    lm_peer_units: int = 64  # W5, W6: units each peer is timed on, then extrapolated (one pass per unit)
    real_quick: bool = False  # W8-W11: the real configs (GPT-2 small, ~1 B Llama); True: 2-block stand-ins
    real_sequences: int = 8  # W8-W11: sequences of real_tokens seeded random tokens
    real_tokens: int = 128
    real_batch: int = 8
    real_peer_units: int = 12  # W8, W9, W11: units the hook loop is timed on, then extrapolated
    real_triage: str = "1%"  # W10: the exact budget of the triaged whole-model sweep


FULL = Sizes()
QUICK = Sizes(examples=1_000, units=32, orders=2, hook_stride=4, conv_examples=50, conv_channels=4,
              captum_conv_channels=2, memory_examples=6_000, gemm=1024, check_units=1,
              mlp_epochs=1, lm_layers=2, lm_width=64, lm_neurons=128, lm_heads=4, lm_vocab=256,
              lm_sequences=8, lm_tokens=32, lm_batch=8, lm_units=16, lm_peer_units=8, real_quick=True,
              real_sequences=4, real_tokens=16, real_batch=4, real_peer_units=3,
              real_triage="10%")  # fmt: skip


class Mismatch(RuntimeError):
    """A method's numbers differ from lesion's beyond float rounding, so its timing would mean nothing."""


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


def trained_mlp(epochs: int = 2, width: int = 512) -> nn.Sequential:
    """The 784-``width``-``width``-10 MLP (seed 0) trained on mnist5k's training split."""
    from lesion.models import mlp
    from lesion.training.loop import train

    model = mlp((1, 28, 28), [width, width], 10, seed=0)
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

    def __init__(self, sizes: Sizes, repeats: int, threads: int, progress: bool, *, device: str = "cpu",
                 precision: str = "fp32"):  # fmt: skip
        self.sizes, self.repeats, self.threads, self.progress = sizes, repeats, threads, progress
        self.device, self.precision = device, precision  # of the real-size workloads W8-W11
        self.gemm = gemm_rate(sizes.gemm)
        self.setup_seconds: dict[str, float] = {}
        self.quietest = float("inf")  # the fewest cores others kept busy during any timed run
        self.retimed: list[dict] = []  # runs thrown away because the machine was busier

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


# -------------------------------------------------------------------------------------- measuring


class Times(list):
    """Seconds of each timed run, with the cores other processes kept busy meanwhile (``loads``) and
    whether every run was taken on a machine as quiet as the bench's quietest run (``steady``)."""

    loads: list[float]
    steady: bool = True


def other_load() -> Callable[[], float]:
    """Start measuring; the returned function gives the average number of cores that processes other
    than this one kept busy since (from /proc/stat and this process's CPU times; 0.0 where there is
    no /proc/stat)."""

    def busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")

    t0, b0, me0 = time.perf_counter(), busy(), sum(os.times()[:4])

    def stop() -> float:
        b1, wall = busy(), time.perf_counter() - t0
        if b0 is None or b1 is None or wall <= 0:
            return 0.0
        return max(0.0, ((b1 - b0) - (sum(os.times()[:4]) - me0)) / wall)

    return stop


RETIMES = 3  # a run timed while others kept a core more busy than the quietest run is re-timed this often


def _bench(ctx: _Context, label: str, fn: Callable, items: list, check: list[int], repeats: int, n: int,
           ref: np.ndarray | None = None) -> tuple[Times, np.ndarray, dict | None]:  # fmt: skip
    """Run ``fn(items[check], bar)`` as warm-up (checked against lesion's ``ref`` if given), then time
    ``repeats`` runs of ``fn(items, bar)``; returns the times, the last result and its differences from
    ``ref`` (on ``n`` examples).

    The quiet-machine protocol: each run records the cores other processes kept busy meanwhile; a run
    during which they kept more than one core busier than in the quietest run of this bench is thrown
    away and re-timed (``RETIMES`` times at most). A method that never got a quiet run is marked
    unsteady, and no ratio is reported for it (``_summary``)."""
    if check:
        with ctx.bar(f"{label} warm-up", len(check)) as bar:
            got = fn([items[k] for k in check], bar)
        if ref is not None:
            _agree(label, ref[:, check], got, n)
    times, got = Times(), None
    times.loads = []
    for r in range(repeats):
        for attempt in range(RETIMES + 1):
            gc.collect()
            with ctx.bar(f"{label} {r + 1}/{repeats}", len(items)) as bar:
                stop = other_load()
                start = time.perf_counter()
                got = fn(items, bar)
                seconds, load = time.perf_counter() - start, stop()
            ctx.quietest = min(ctx.quietest, load)
            if load <= ctx.quietest + 1.0 or attempt == RETIMES:
                break
            ctx.retimed.append({"method": label, "seconds": seconds, "other_cores_busy": round(load, 2)})
        times.append(seconds)
        times.loads.append(round(load, 2))
        times.steady = times.steady and load <= ctx.quietest + 1.0
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
    """seconds (median runs times ``scale`` where extrapolated), floors and ratios of one workload; no
    ratio where either method of the pair was timed on a busier machine (``unsteady``)."""
    scale = scale or {}
    seconds = {m: None if t is None else _median(t) * scale.get(m, 1.0) for m, t in runs.items()}
    floors = {m: ctx.floor(f) for m, f in flops.items()}
    unsteady = sorted(m for m, t in runs.items() if t is not None and not getattr(t, "steady", True))
    lesion = seconds["lesion"]
    ratios = {
        f"{m}/lesion": None if unsteady and {m, "lesion"} & set(unsteady) else s / lesion
        for m, s in seconds.items() if m != "lesion" and s is not None
    }  # fmt: skip
    ratios["lesion/floor"] = lesion / floors["lesion"]
    ratios |= {f"lesion/{m}_floor": lesion / f for m, f in floors.items() if m != "lesion"}
    loads = {m: getattr(t, "loads", None) for m, t in runs.items() if t is not None}
    return {
        "seconds": seconds, "runs": runs, "flops": flops, "floor_seconds": floors, "ratios": ratios,
        "other_cores_busy": loads, "unsteady": unsteady,
    }  # fmt: skip


def _captum_missing() -> dict:
    return {"available": False, "reason": "captum is not importable: pip install 'lesion[bench]'"}


def _captum_version() -> str | None:
    try:
        import captum
    except ImportError:
        return None
    return captum.__version__
