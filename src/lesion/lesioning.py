"""Apply interventions with forward hooks that are always removed: the model is borrowed, never changed.

Every context manager here registers hooks on entry and removes them in ``finally``, so no hook survives
success, an exception or nesting, and no weight or attribute of the model is touched. Contexts nest:
inner hooks run after outer ones on the same module.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from lesion import interventions as iv
from lesion._once import once_per_forward
from lesion.errors import LesionError, SiteError
from lesion.sites import _LAST_DIM, Site
from lesion.units import ALL, UnitSpec, parse_units

if TYPE_CHECKING:
    from lesion.stats import Stats

Edit = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def hooks(model: nn.Module, edits: Mapping[str, Edit | Sequence[Edit]]) -> Iterator[nn.Module]:
    """Replace the output of each named module by ``edit(output)`` inside the block."""
    named = dict(model.named_modules())
    for name in edits:
        if name not in named or not name:
            names = [n for n in named if n]
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
            hint = f"; closest: {', '.join(close)}" if close else ""
            listed = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
            raise SiteError(f"unknown layer {name!r}{hint}; expected a name from named_modules(): {listed}")
    handles = []
    try:
        for name, edit in edits.items():
            chain = list(edit) if isinstance(edit, list | tuple) else [edit]
            handles.append(named[name].register_forward_hook(_hook(name, chain)))
        yield model
    finally:
        for h in handles:
            h.remove()


def _hook(name: str, chain: list[Edit]):
    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise SiteError(
                f"site {name!r} outputs a {type(output).__name__}, not a tensor; expected a module "
                "whose output is one tensor"
            )
        for edit in chain:
            output = edit(output)
        return output

    return hook


def unit_dim_of(model: nn.Module, name: str, sites: Sequence[Site] | None, ndim: int) -> int:
    """The unit axis of a site: from ``sites`` when given, else by the module's kind and ``ndim``."""
    for s in sites or ():
        if s.name == name:
            return s.unit_dim
    if ndim == 2:
        return 1
    return ndim - 1 if isinstance(model.get_submodule(name), _LAST_DIM) else 1


@contextmanager
def ablate(
    model: nn.Module,
    units: UnitSpec,
    *,
    value: float | str = 0.0,
    stats: Stats | None = None,
    sites: Sequence[Site] | None = None,
) -> Iterator[nn.Module]:
    """Delete ``units`` inside the block: clamp them to ``value`` (0, any constant, or ``"mean"``).

    ``value="mean"`` clamps each unit to its mean over a reference set, taken from ``stats``
    (``lesion.collect_stats``). Pass ``sites`` (``lesion.find_sites``) to validate indices up front and
    to fix unit axes; without them, indices are checked on the first forward pass.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    >>> with ablate(net, "1:0-1"):
    ...     net(torch.ones(1, 2))[0, :2].tolist()
    [0.0, 0.0]
    """
    selection = parse_units(units, sites) if sites is not None else parse_units(units)
    if value == "mean" and stats is None:
        raise LesionError("value='mean' needs the reference statistics: pass stats=collect_stats(...)")
    if isinstance(value, str) and value != "mean":
        raise LesionError(f"unknown ablation value {value!r}; expected a number or 'mean'")
    edits = {layer: _clamp_edit(model, layer, idx, value, stats, sites) for layer, idx in selection.items()}
    with once_per_forward(model, edits if sites is None else ()), hooks(model, edits):
        yield model


def _clamp_edit(model, layer, idx, value, stats, sites) -> Edit:
    def edit(h: torch.Tensor) -> torch.Tensor:
        dim = unit_dim_of(model, layer, sites, h.ndim)
        chosen = range(h.shape[dim]) if idx is ALL else idx
        if value == "mean":
            means = stats[layer].mean[list(chosen)]
            return iv.clamp(h, list(chosen), means, dim)
        return iv.clamp(h, list(chosen), float(value), dim)

    return edit


@contextmanager
def add_noise(
    model: nn.Module,
    stats: Stats,
    scale: float,
    *,
    layers: Sequence[str] | None = None,
    scaling: str = "sd",
    seed: int = 0,
) -> Iterator[nn.Module]:
    """Add Gaussian noise to every unit of ``layers`` (default: every site in ``stats``) at once.

    Noise SD per unit = ``scale`` x that unit's SD in ``stats`` (``scaling="variance"``: noise variance =
    scale x unit variance). Fresh noise for every example, from one generator seeded with ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    names = list(layers) if layers is not None else list(stats)
    edits = {}
    for name in names:
        s = stats[name]
        edits[name] = lambda h, s=s: iv.noise(h, s.sd, scale, dim=s.unit_dim, scaling=scaling, generator=g)
    with hooks(model, edits):
        yield model


@contextmanager
def ablate_directions(
    model: nn.Module, layer: str, directions: torch.Tensor, *, sites: Sequence[Site] | None = None
) -> Iterator[nn.Module]:
    """Remove the orthonormal columns of ``directions`` (width, k) from ``layer``'s activations."""
    q = directions.detach()
    gram = q.T.double() @ q.double()
    if not torch.allclose(gram, torch.eye(q.shape[1], dtype=torch.float64), atol=1e-4):
        raise LesionError("directions must be orthonormal columns (width, k); got a non-orthonormal set")

    def edit(h):
        return iv.remove_directions(h, q, unit_dim_of(model, layer, sites, h.ndim))

    with hooks(model, {layer: edit}):
        yield model
