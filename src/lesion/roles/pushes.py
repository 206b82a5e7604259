"""What a unit pushes the output towards: its weights to the output through the layers after it.

One forward pass records the leaf modules that run after the site. Where they form a chain (each takes
the previous one's output) of Linear layers, elementwise activations, dropout, identity and flatten,
the push of unit j is column j of the product of the Linear weights (global average pooling passes a
map's uniform change through): exact for the last hidden layer
(the output layer's own weights, the direct path), a linear approximation through deeper ones
(nonlinearities ignored). A feature map's push sums its positions (the whole map raised by 1). Any
other module on the way (a convolution, a norm, a residual join) leaves the push out, saying why.

A language model's unit (``lm_pushes``) pushes tokens through the direct path: its output direction
through the final norm (centring and gain) and the unembedding, the tokens it raises and lowers most.
"""

from __future__ import annotations

import numpy as np
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


# ------------------------------------------------------------------------------- language models

TOP_TOKENS = 5  # tokens promoted and suppressed, kept per unit
CHUNK = 256  # units whose logit directions (units x vocabulary) are computed at once
LM_HOW = (
    "direct path: the unit's output direction in the residual stream through the final norm's centring "
    "and gain and the unembedding (per unit of activity; the norm's division by the residual's scale, a "
    "positive factor per position, is left out, so the ranking and signs are those of the direct path)"
)
HEAD_HOW = LM_HOW.replace("the unit's output direction", "the head's mean output (its mean attention "
                          "output over the data through its rows of the output projection)")  # fmt: skip


def lm_pushes(model: nn.Module, data, sites: list[Site], token_parts: dict) -> dict[str, tuple]:
    """site -> ({"promotes", "promotes_by", "suppresses", "suppresses_by"}: (units, 5) token ids and
    logit changes, or None, the path in words or why it is missing). A neuron's direction is its row of
    the MLP's output projection (``lesion.analyses.direct``); a head's, its mean output, from the sums
    of ``token_parts``."""
    from lesion.analyses.readout import locate, readout
    from lesion.errors import LesionError

    out: dict[str, tuple] = {}
    try:
        r = readout(model, data)
        neurons = [s for s in sites if not s.heads]
        writers = {w.site.name: w for w in locate(model, data, neurons)[1]} if neurons else {}
    except (LesionError, RuntimeError) as exc:
        return {s.name: (None, f"no direct path found: {exc}") for s in sites}
    named = dict(model.named_modules())
    for s in sites:
        if s.heads:
            mean = token_parts.get(s.name, {}).get("mean_input")
            if mean is None or s.hook != "input":
                out[s.name] = (None, "the head's output projection or its mean output was not recorded")
                continue
            m = named[s.target]
            rows = (m.weight.T if isinstance(m, nn.Linear) else m.weight).detach().float()  # (h * d, d_model)
            z = torch.as_tensor(mean, dtype=torch.float32).reshape(s.width, s.group)
            directions = torch.einsum("hd,hdm->hm", z, rows.reshape(s.width, s.group, -1))
            out[s.name] = (_top_tokens(r, directions), HEAD_HOW)
        elif s.name in writers:
            out[s.name] = (_top_tokens(r, writers[s.name].w_out.float()), LM_HOW)
        else:
            out[s.name] = (None, "no output projection found for this site")
    return out


def _top_tokens(r, directions: torch.Tensor) -> dict[str, np.ndarray]:
    """The ``TOP_TOKENS`` tokens each direction (units, d_model) raises and lowers most through the
    readout ``r`` (float32, ``CHUNK`` units at a time)."""
    rows = r.rows.float()
    gamma = None if r.gamma is None else r.gamma.float()
    got = {k: [] for k in ("promotes", "promotes_by", "suppresses", "suppresses_by")}
    for i in range(0, len(directions), CHUNK):
        w = directions[i : i + CHUNK].float()
        if r.norm is not None and not r.rms:
            w = w - w.mean(-1, keepdim=True)
        if gamma is not None:
            w = w * gamma
        logits = w @ rows  # (chunk, vocab)
        k = min(TOP_TOKENS, logits.shape[1])
        up, down = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
        got["promotes"].append(up.indices)
        got["promotes_by"].append(up.values)
        got["suppresses"].append(down.indices)
        got["suppresses_by"].append(down.values)
    return {k: torch.cat(v).numpy() for k, v in got.items()}
