"""Architectures, built from keyword arguments or from a JSON-able ``arch`` dict."""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lesion.errors import LesionError, ModelFileError


def mlp(
    input_shape: tuple[int, ...] | int,
    widths: Sequence[int],
    n_classes: int,
    *,
    dropout: float = 0.0,
    batchnorm: bool = False,
    seed: int | None = None,
) -> nn.Sequential:
    """A multilayer perceptron whose post-ReLU sites are named ``relu1``, ``relu2``, ...

    Modules: ``flatten``, then per hidden layer i ``fc{i}``, ``bn{i}`` (with ``batchnorm``),
    ``relu{i}``, ``drop{i}`` (with ``dropout > 0``), then ``out``. With ``seed`` the weights are drawn
    from a forked RNG seeded with it: the same seed gives bit-identical weights, and the caller's
    global RNG state is left untouched.

    >>> [name for name, _ in mlp((1, 8, 8), [16], 10, batchnorm=True).named_children()]
    ['flatten', 'fc1', 'bn1', 'relu1', 'out']
    """
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    _positive_ints("input_shape", shape, allow_empty=False)
    widths = list(widths) if isinstance(widths, Sequence) and not isinstance(widths, str) else widths
    _positive_ints("widths", widths, allow_empty=True)
    _positive_ints("n_classes", [n_classes], allow_empty=False, scalar=True)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise LesionError(f"dropout={dropout!r}; expected a probability in [0, 1)")
    if not isinstance(batchnorm, bool):
        raise LesionError(f"batchnorm={batchnorm!r}; expected True or False")

    def build() -> nn.Sequential:
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        fan_in = math.prod(shape)
        for i, width in enumerate(widths, start=1):
            layers[f"fc{i}"] = nn.Linear(fan_in, width)
            if batchnorm:
                layers[f"bn{i}"] = nn.BatchNorm1d(width)
            layers[f"relu{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            fan_in = width
        layers["out"] = nn.Linear(fan_in, n_classes)
        return nn.Sequential(layers)

    return seeded_init(build, seed)


def seeded_init(build: Callable[[], nn.Module], seed: int | None) -> nn.Module:
    """Run ``build`` with the global RNG seeded by ``seed`` inside ``fork_rng`` (None: unseeded)."""
    if seed is None:
        return build()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LesionError(f"seed={seed!r}; expected a non-negative int or None")
    with torch.random.fork_rng(devices=[]):  # weights are drawn on the CPU
        torch.manual_seed(seed)
        return build()


def _positive_ints(what: str, values, *, allow_empty: bool, scalar: bool = False) -> None:
    ok = isinstance(values, list | tuple) and (allow_empty or len(values) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    if not ok:
        shown = values[0] if scalar else values
        kind = "a positive int" if scalar else "a sequence of positive ints"
        raise LesionError(f"{what}={shown!r}; expected {kind}")


# kind -> builder taking the arch's other keys as keyword arguments; later: "convnet", "resnet".
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mlp": mlp}


def build_model(arch: dict[str, Any], *, seed: int | None = None) -> nn.Module:
    """Build the model an ``arch`` dict describes, e.g. ``{"kind": "mlp", "input_shape": [1, 28, 28],
    "widths": [512, 512], "n_classes": 10}``; ``seed`` as in ``mlp``.

    Raises ModelFileError for an unknown kind or missing/unexpected keys, LesionError for bad values.
    """
    if not isinstance(arch, dict):
        raise ModelFileError(f"arch is a {type(arch).__name__}; expected a dict with a 'kind' key")
    kind = arch.get("kind")
    if kind not in ARCHITECTURES:
        raise ModelFileError(
            f"unknown architecture kind {kind!r}; known kinds: {', '.join(sorted(ARCHITECTURES))}"
        )
    builder = ARCHITECTURES[kind]
    params = inspect.signature(builder).parameters
    allowed = {n for n in params if n != "seed"}
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    given = set(arch) - {"kind"}
    if missing := sorted(required - given):
        raise ModelFileError(f"{kind} arch lacks {', '.join(missing)}; expected keys {sorted(allowed)}")
    if extra := sorted(given - allowed):
        raise ModelFileError(f"{kind} arch has unexpected keys {extra}; expected keys {sorted(allowed)}")
    kwargs = {k: v for k, v in arch.items() if k != "kind"}
    return builder(**kwargs, seed=seed)
