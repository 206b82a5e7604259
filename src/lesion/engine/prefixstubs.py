"""Stubs of the module-prefix engine (``lesion.engine.prefix``): a module's forward replaced for a pass in
this thread only (``_forwards``), a recorded output rebuilt with its batched leaves repeated once per
lesion (``_rebuild``), and attention heads deleted in closed form through the output projection.

A head site is the input of the attention's output projection (GPT-2's ``c_proj``, Llama's ``o_proj``):
head h owns ``head_dim`` channels of it. Where the attention module's own output is that projection's
output (checked on every recorded pass: equal, and nothing else in the output but None), deleting head h
with a constant replacement changes the attention's output by

    (new_h - z_h) W_h

at every position (``z``: the projection's recorded input, ``W_h``: its weight rows for the head's
channels): a (head_dim x width) product per position instead of the attention (scores, softmax, values)
and the projection for every lesion. The attention module is stubbed for the pass: it returns its
recorded output plus that change, one copy per lesion; everything after it runs as before. Used in fp32
and fp64 without autocast only; the caller checks every sweep against the hooked model as always.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from lesion.core.lesions import Applied, Lesion, replace_units
from lesion.core.sites import Site


def attention_of(named: dict[str, nn.Module], order: dict, site: Site) -> str | None:
    """The module that encloses ``site``'s projection and may be stubbed with ``head_output``: its parent,
    each run once per pass, for a head view on the projection's input with units on the last axis."""
    if not (site.heads and site.hook == "input" and not site.flat and site.unit_dim == len(site.shape)):
        return None
    proj = named.get(site.target)
    weight = getattr(proj, "weight", None)
    if not (isinstance(proj, nn.Linear) or type(proj).__name__ == "Conv1D") or weight is None:
        return None
    parent = site.target.rpartition(".")[0]
    if not parent or parent not in named or any(order.get(n) is None for n in (parent, site.target)):
        return None
    return parent if order[parent].calls == 1 and order[site.target].calls == 1 else None


def stub_fits(out, proj: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Whether the attention's recorded output ``out`` is the projection's recorded output (``proj``: its
    input and output), alone or first in a tuple whose other entries are None, in fp32/fp64 without
    autocast, so that it can be rebuilt from it."""
    proj_out = proj[1]
    if torch.is_autocast_enabled(proj_out.device.type):
        return False
    rest: Sequence = ()
    if isinstance(out, tuple | list):
        out, rest = (out[0], out[1:]) if len(out) else (None, ())
    if not isinstance(out, torch.Tensor) or any(r is not None for r in rest):
        return False
    return (
        out.shape == proj_out.shape
        and out.dtype in (torch.float32, torch.float64)
        and torch.equal(out, proj_out)
    )


def head_output(proj: nn.Module, site: Site, lesions: Sequence[Lesion], recorded, cache, state: Applied):
    """The attention's output for ``lesions`` stacked lesion-major: ``recorded`` (its output on the
    batch) with the projection's output moved by each lesion's head change; ``cache`` holds the
    projection's recorded (input, output). Every lesion deletes one head of ``site`` with a constant
    replacement (the slow path's own ``replace_units`` gives the new values)."""
    x0, y0 = cache
    hd = site.group
    w = proj.weight.to(x0.dtype)
    deltas = []
    for les in lesions:
        h = les.units[site.name][0]
        new = replace_units(x0, site, les.units, les.replacement, state)
        d = (new[..., h * hd : (h + 1) * hd] - x0[..., h * hd : (h + 1) * hd]).flatten(0, -2)  # (rows, hd)
        rows = w[:, h * hd : (h + 1) * hd].T if isinstance(proj, nn.Linear) else w[h * hd : (h + 1) * hd]
        deltas.append(torch.mm(d, rows).view_as(y0))
    first = (y0.unsqueeze(0) + torch.stack(deltas)).flatten(0, 1)
    return first if isinstance(recorded, torch.Tensor) else type(recorded)([first, *recorded[1:]])


@contextmanager
def _forwards(replacements: Mapping[nn.Module, Callable]):
    """Inside the block, each module's forward is replaced, in this thread only: another thread using
    the model meanwhile runs the module's own forward. Set past any ``__setattr__`` a wrapper defines."""
    me = threading.get_ident()
    saved = []
    try:
        for module, fn in replacements.items():
            own = module.forward

            def forward(*args, _fn=fn, _own=own, **kwargs):
                return _fn(*args, **kwargs) if threading.get_ident() == me else _own(*args, **kwargs)

            saved.append((module, "forward" in module.__dict__, module.__dict__.get("forward")))
            object.__setattr__(module, "forward", forward)
        yield
    finally:
        for module, had, old in saved:
            if had:
                object.__setattr__(module, "forward", old)
            else:
                object.__delattr__(module, "forward")


def _recorded(out, flags: list[bool], n: int, *args, **kwargs):
    """A stubbed module's forward: its recorded output, batched leaves repeated for ``n`` lesions."""
    return _rebuild(out, flags, n)


def _leaves(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [x for v in out.values() for x in _leaves(v)]
    if isinstance(out, list | tuple):
        return [x for v in out for x in _leaves(v)]
    return [out]


def _rebuild(out, flags: list[bool], n: int):
    """``out`` with each batched tensor leaf repeated ``n`` times along its batch axis (fresh copies)."""
    it = iter(flags)

    def walk(o):
        if isinstance(o, torch.Tensor):
            return o.repeat(n, *[1] * (o.ndim - 1)) if next(it) else o.clone()
        if isinstance(o, dict):
            vals = {key: walk(v) for key, v in o.items()}
            return type(o)(**vals) if type(o) is not dict else vals
        if isinstance(o, tuple) and hasattr(o, "_fields"):
            return type(o)(*[walk(v) for v in o])
        if isinstance(o, list | tuple):
            return type(o)(walk(v) for v in o)
        next(it)
        return o

    return walk(out)


def _versions(out) -> list[int] | None:
    """The version counters of the tensor leaves of ``out`` (in-place changes move them); None where a
    leaf does not keep one (an inference-mode tensor): nothing to compare."""
    try:
        return [x._version for x in _leaves(out) if isinstance(x, torch.Tensor)]
    except RuntimeError:
        return None


def _single_constant(lesions: Sequence[Lesion], site: Site) -> bool:
    """Every lesion deletes one unit of ``site`` at every position with a constant replacement."""
    for les in lesions:
        idx = les.units.get(site.name)
        if len(les.units) != 1 or idx is None or len(idx) != 1 or les.units.positional:
            return False
        if not les.replacement.constant or les.replacement.edit is not None:
            return False
    return True


__all__ = ["attention_of", "head_output", "stub_fits"]  # and the stubbing helpers of lesion.engine.prefix
