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
from lesion.models._common import check_switches, positive_ints, seeded_init
from lesion.models._conv import convnet, resnet
from lesion.models._transformer import gpt, vit
from lesion.util.limits import MAX_LAYERS, activation_limit, brief, parameter_limit


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
    positive_ints("input_shape", shape, allow_empty=False)
    widths = list(widths) if isinstance(widths, Sequence) and not isinstance(widths, str) else widths
    positive_ints("widths", widths, allow_empty=True)
    positive_ints("n_classes", [n_classes], allow_empty=False, scalar=True)
    check_switches(dropout, batchnorm)

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


MAX_INPUT_ELEMENTS = 1 << 24  # per example: 16.7 M values, e.g. 3 x 2048 x 2048
MAX_PARAMETERS = 1 << 30  # 1.07 G parameters, 4.3 GB in float32

# kind -> builder taking the arch's other keys as keyword arguments (and ``seed``).
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "convnet": convnet, "gpt": gpt, "mlp": mlp, "resnet": resnet, "vit": vit,
}  # fmt: skip


def build_model(arch: dict[str, Any], *, seed: int | None = None) -> nn.Module:
    """Build the model an ``arch`` dict describes, e.g. ``{"kind": "mlp", "input_shape": [1, 28, 28],
    "widths": [512, 512], "n_classes": 10}`` or ``{"kind": "convnet", "input_shape": [3, 32, 32],
    "n_classes": 10, "width_mult": 0.5}``; the keys are the builder's arguments (see ``ARCHITECTURES``);
    ``seed`` as in ``mlp``.

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
    check_size(kind, kwargs, builder)
    return builder(**kwargs, seed=seed)


def check_size(kind: str, kwargs: dict[str, Any], builder: Callable[..., nn.Module]) -> None:
    """Refuse an arch whose layers, input, parameters or largest activation exceed ``MAX_LAYERS``,
    ``MAX_INPUT_ELEMENTS``, ``MAX_PARAMETERS`` (or half this machine's memory) and 1/16 of this
    machine's memory per example: counted from the arch, then on the meta device (no memory), before
    anything is allocated."""
    layers = _layer_count(kwargs)
    if layers > MAX_LAYERS:
        raise LesionError(
            f"{kind} arch has {layers:,} layers; expected at most {MAX_LAYERS:,} (lesion.util.limits)"
        )
    shape = kwargs.get("input_shape")
    dims = [shape] if isinstance(shape, int) else shape
    if isinstance(dims, list | tuple) and all(isinstance(d, int) for d in dims):
        n = math.prod(dims)
        if n > MAX_INPUT_ELEMENTS:
            raise LesionError(
                f"input_shape={brief(list(dims))} has {n:,} elements per example; expected at most "
                f"{MAX_INPUT_ELEMENTS:,} (lesion.models.MAX_INPUT_ELEMENTS)"
            )
    try:
        with torch.device("meta"):
            model = builder(**kwargs, seed=None)
    except (RuntimeError, OverflowError, MemoryError) as e:
        raise LesionError(f"{kind} arch {brief(kwargs)} is too large to build: {e}") from None
    count = sum(p.numel() for p in model.parameters())
    limit = min(MAX_PARAMETERS, parameter_limit())
    if count > limit:
        raise LesionError(
            f"{kind} arch has {count:,} parameters; expected at most {limit:,} "
            "(lesion.models.MAX_PARAMETERS, or half this machine's memory); check its widths / width_mult"
        )
    largest, where = _largest_activation(model, kind, kwargs)
    if largest > activation_limit():
        raise LesionError(
            f"{kind} arch makes an activation of {largest:,} values per example at {where}; expected at "
            f"most {activation_limit():,} (1/16 of this machine's memory in float32); check its input_shape"
        )


def _layer_count(kwargs: dict[str, Any]) -> int:
    n = 0
    for key in ("widths", "channels", "blocks"):
        v = kwargs.get(key)
        if isinstance(v, list | tuple):
            n = max(n, len(v), sum(d for d in v if isinstance(d, int)) if key == "blocks" else 0)
    v = kwargs.get("n_layer")
    return max(n, v) if isinstance(v, int) else n


def _largest_activation(model: nn.Module, kind: str, kwargs: dict[str, Any]) -> tuple[int, str]:
    """(values, module name) of the largest output for one example, by a forward pass on meta tensors."""
    if kind == "gpt":
        x = torch.zeros(1, kwargs["context"], dtype=torch.long, device="meta")
    else:
        shape = kwargs["input_shape"]
        x = torch.zeros(1, *([shape] if isinstance(shape, int) else shape), device="meta")
    largest: list = [0, "the input"]

    def record(name: str):
        def hook(module, args, output) -> None:
            if isinstance(output, torch.Tensor) and output.numel() > largest[0]:
                largest[:] = [output.numel(), name or "the output"]

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception:  # shapes that do not fit the layers fail later, with the builder's own message
        pass
    finally:
        for h in handles:
            h.remove()
    return largest[0], largest[1]
