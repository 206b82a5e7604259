"""Argument checks and seeded construction shared by the architectures."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lesion.errors import LesionError


def seeded_init(build: Callable[[], nn.Module], seed: int | None) -> nn.Module:
    """Run ``build`` with the global RNG seeded by ``seed`` inside ``fork_rng`` (None: unseeded)."""
    if seed is None:
        return build()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LesionError(f"seed={seed!r}; expected a non-negative int or None")
    with torch.random.fork_rng(devices=[]):  # weights are drawn on the CPU
        torch.manual_seed(seed)
        return build()


def positive_ints(what: str, values, *, allow_empty: bool, scalar: bool = False) -> None:
    ok = isinstance(values, list | tuple) and (allow_empty or len(values) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    if not ok:
        shown = values[0] if scalar else values
        kind = "a positive int" if scalar else "a sequence of positive ints"
        raise LesionError(f"{what}={shown!r}; expected {kind}")


def check_switches(dropout: float, batchnorm: bool) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise LesionError(f"dropout={dropout!r}; expected a probability in [0, 1)")
    if not isinstance(batchnorm, bool):
        raise LesionError(f"batchnorm={batchnorm!r}; expected True or False")


def image_shape(input_shape) -> tuple[int, int, int]:
    """``input_shape`` as (channels, height, width) of positive ints."""
    shape = tuple(input_shape) if isinstance(input_shape, list | tuple) else input_shape
    if not isinstance(shape, tuple) or len(shape) != 3:
        raise LesionError(f"input_shape={input_shape!r}; expected (channels, height, width)")
    positive_ints("input_shape", shape, allow_empty=False)
    return shape


def kaiming_init(model: nn.Module) -> nn.Module:
    """He-normal conv weights (fan-in, ReLU gain) and zero conv biases, so deep nets without batch
    norm start with activations of stable scale; Linear and BatchNorm keep torch's defaults.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
