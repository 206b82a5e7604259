"""Leaner forms of composite activations for the engine's batched passes, equal bit for bit.

GPT-2's activation (``transformers``' ``NewGELUActivation``) is written as eight elementwise operations,
each of which allocates a tensor as large as the MLP's hidden activity; on the engine's passes (many
lesions x every token x 4 d_model floats) they took a fifth of a head sweep's time on a CPU, most of it
moving memory. The forms here run the same operations on the same operands in the same order, in place
on one small temporary, a cache-sized chunk at a time, so every result is the same float as the model's
own forward (``tests/test_kernels.py`` checks it for every form and float dtype). They are used only
where that holds: no gradient, no autocast (which may cast some operations and not others), contiguous
floating-point input, and the module's exact class (a subclass may compute something else). Anywhere else, and
outside the engine's passes, the model's own forward runs; the passes' checks against the hook path run
that own forward, so they would see a difference. ``LEAN = False`` turns them off.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

LEAN = True
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_SQRT_2_PI = math.sqrt(2.0 / math.pi)
CHUNK = 1 << 18  # elements: 1 MiB of float32 per temporary


def _new_gelu(x: torch.Tensor, out: torch.Tensor, p: torch.Tensor) -> None:
    """0.5 * x * (1.0 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3))), in transformers' order."""
    torch.pow(x, 3.0, out=p)
    p.mul_(0.044715).add_(x).mul_(_SQRT_2_PI).tanh_().add_(1.0)
    torch.mul(x, 0.5, out=out).mul_(p)


def _fast_gelu(x: torch.Tensor, out: torch.Tensor, p: torch.Tensor) -> None:
    """0.5 * x * (1.0 + tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))), in transformers' order."""
    torch.mul(x, 0.044715, out=p).mul_(x).add_(1.0)
    torch.mul(x, 0.7978845608, out=out).mul_(p).tanh_().add_(1.0)
    torch.mul(x, 0.5, out=p)
    out.mul_(p)


def _chunked(form: Callable, x: torch.Tensor) -> torch.Tensor:
    """``form`` over ``x`` a chunk of ``CHUNK`` elements at a time on a CPU (its operations then run
    in the cache, not through memory), in one piece elsewhere."""
    flat = x.view(-1)
    out = torch.empty_like(flat)
    step = CHUNK if x.device.type == "cpu" else max(1, flat.numel())
    p = torch.empty(min(step, flat.numel()), dtype=x.dtype, device=x.device)
    for i in range(0, flat.numel(), step):
        part = flat[i : i + step]
        form(part, out[i : i + step], p[: part.numel()])
    return out.view(x.shape)


def _forms() -> dict[type, Callable[[torch.Tensor], torch.Tensor]]:
    try:
        from transformers import activations
    except ImportError:  # the hf extra is optional
        return {}
    return {activations.NewGELUActivation: _new_gelu, activations.FastGELUActivation: _fast_gelu}


def lean_forwards(model: nn.Module) -> dict[nn.Module, Callable]:
    """``{module: forward}`` for every module of ``model`` that has a lean form: for ``_forwards``."""
    if not LEAN:
        return {}
    forms = _forms()
    out = {}
    for module in model.modules():
        form = forms.get(type(module))
        if form is not None and "forward" not in module.__dict__:
            out[module] = _guarded(form, module.forward)
    return out


def _guarded(form: Callable, own: Callable) -> Callable:
    def forward(x, *args, **kwargs):
        if args or kwargs or not isinstance(x, torch.Tensor) or x.dtype not in _DTYPES:
            return own(x, *args, **kwargs)
        if torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type) or not x.is_contiguous():
            return own(x)  # (a strided input keeps its own layout in the module's own output)
        return _chunked(form, x)

    return forward
