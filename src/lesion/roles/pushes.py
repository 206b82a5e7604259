"""What a unit pushes the output towards: its weights to the output through the layers after it.

One forward pass records the leaf modules that run after the site. Where they form a chain (each takes
the previous one's output) of Linear layers, elementwise activations, dropout, identity and flatten,
the push of unit j is column j of the product of the Linear weights (global average pooling passes a
map's uniform change through): exact for the last hidden layer
(the output layer's own weights, the direct path), a linear approximation through deeper ones
(nonlinearities ignored). A feature map's push sums its positions (the whole map raised by 1). Any
other module on the way (a convolution, a norm, a residual join) leaves the push out, saying why.
"""

from __future__ import annotations

import torch
from torch import nn

from lesion.core.batch import as_batch
from lesion.core.sites import Site, is_activation
from lesion.util.modules import eval_mode

PASS = (nn.Dropout, nn.Identity, nn.Flatten)


def _leaf_calls(model: nn.Module, example) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    calls = []
    handles = []
    for name, m in model.named_modules():
        if not list(m.children()):
            handles.append(
                m.register_forward_hook(
                    lambda mod, inp, out, name=name: calls.append((name, mod, inp[0] if inp else None, out))
                )
            )
    try:
        with torch.no_grad(), eval_mode(model):
            as_batch(example).run(model)
    finally:
        for h in handles:
            h.remove()
    return calls


def _global_average(mod: nn.Module) -> bool:
    """Average pooling to one value per map: a map raised by 1 everywhere raises its pooled value by 1."""
    size = getattr(mod, "output_size", None)
    return isinstance(mod, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d) and size in (1, (1, 1))


def pushes(model: nn.Module, example, sites: list[Site]) -> dict[str, tuple[torch.Tensor | None, str]]:
    """site -> ((outputs, units) push matrix or None, the path in words or why it is missing)."""
    calls = _leaf_calls(model, example)
    out = {}
    for s in sites:
        out[s.name] = _push(calls, s)
    return out


def _push(calls, site: Site) -> tuple[torch.Tensor | None, str]:
    if site.heads:
        return None, "not computed for attention heads"
    at = [i for i, c in enumerate(calls) if c[0] == site.target]
    if len(at) != 1:
        return None, f"site {site.name!r} is not one leaf module run once"
    prev = calls[at[0]][3]
    product = None
    n_linear = 0
    for name, mod, inp, outp in calls[at[0] + 1 :]:
        if (
            not isinstance(inp, torch.Tensor)
            or inp.numel() != prev.numel()
            or not torch.equal(inp.reshape(-1), prev.reshape(-1))
        ):
            return None, f"the path to the output is not a chain: {name!r} does not take the previous output"
        if isinstance(mod, nn.Linear):
            w = mod.weight.detach().double()
            product = w if product is None else w @ product
            n_linear += 1
        elif not (isinstance(mod, PASS) or is_activation(mod) or _global_average(mod)):
            return None, f"the path to the output passes through {type(mod).__name__} ({name!r}); no weights"
        prev = outp
    if product is None:
        return None, "no Linear layer after the site"
    width = site.width
    per = product.shape[1] // width
    if per * width != product.shape[1]:
        return None, "the Linear layer after the site does not read its units"
    push = product.reshape(product.shape[0], width, per).sum(2).float()  # a map: all its positions
    how = (
        "direct: the output layer's weights (exact)"
        if n_linear == 1
        else f"product of the {n_linear} later Linear layers' weights, nonlinearities ignored (approximate)"
    )
    return push, how
