"""A lesion is a value: which units, and what replaces them. Applying it borrows the model with hooks.

Every context manager here registers hooks on entry and removes them in ``finally``, so no hook survives
success, an exception or nesting, and no weight or attribute of the model is touched. Contexts nest:
inner hooks run after outer ones on the same module. Unit axes come from ``Site`` alone: without
``sites=``, ``ablate`` finds the lesioned layers' sites on the first forward pass (one dry run).
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lesion.core.batch import Batch, as_batch
from lesion.core.replacements import Context, Directions, Noise, Replacement, as_replacement
from lesion.core.sites import DRY_RUN, Site, find_sites, hook_site
from lesion.core.units import UnitSet, UnitSpec, fold, parse_units
from lesion.errors import LesionError, SiteError, UnitError
from lesion.util import Scaling

if TYPE_CHECKING:
    from lesion.core.stats import Stats

Edit = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Lesion:
    """Which units to delete and how: ``Lesion("relu1:0-9", Mean())``. A value: hashable, reusable.

    >>> str(Lesion(["fc1:3", "fc1:4"]))
    'fc1:3-4'
    """

    units: UnitSet
    replacement: Replacement = field(default_factory=lambda: as_replacement(0.0))
    name: str | None = None

    def __init__(self, units: UnitSpec, replacement: Any = 0.0, name: str | None = None):
        object.__setattr__(self, "units", parse_units(units))
        object.__setattr__(self, "replacement", as_replacement(replacement))
        object.__setattr__(self, "name", name)

    def __str__(self) -> str:
        return self.name or compact(self.units)

    def with_replacement(self, replacement: Replacement) -> Lesion:
        return Lesion(self.units, replacement, self.name)

    def resolve(self, sites: Sequence[Site]) -> Lesion:
        return Lesion(self.units.resolve(sites), self.replacement, self.name)


def compact(units: UnitSet) -> str:
    """``layer:0-9,12`` text of a unit set (ranges collapsed)."""
    parts = []
    for layer, idx in units.items():
        pos = units.positions(layer)
        tail = "" if pos is None else "@" + ",".join(map(str, pos))
        parts.append(f"{layer}:{'*' if idx is None else fold(idx)}{tail}")
    return " ".join(parts)


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
            handles.append(named[name].register_forward_hook(_output_hook(name, chain)))
        yield model
    finally:
        for h in handles:
            h.remove()


def _output_hook(name: str, chain: list[Edit]):
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


# True in this thread (context) while lesion hooks must let the model run intact: fitting a replacement
# inside a pass, or a sweep's intact reference pass (KL); other threads keep their lesions
ASIDE: ContextVar[bool] = ContextVar("lesion_aside", default=False)


@contextmanager
def aside() -> Iterator[None]:
    """Inside the block, in this thread only, applied lesions step aside (the model runs intact)."""
    token = ASIDE.set(True)
    try:
        yield
    finally:
        ASIDE.reset(token)


class Applied:
    """The live state of lesions applied to a model: the current batch, set by a sweep before each pass."""

    def __init__(self):
        self.batch: Batch | None = None
        self.batch_index = 0
        self.sites: dict[str, Site] | None = None
        self.lock = threading.Lock()  # one thread finds the sites; the others wait for them


@contextmanager
def ablate(
    model: nn.Module,
    units: UnitSpec | Lesion,
    replacement: Replacement | float | str | None = None,
    *,
    sites: Sequence[Site] | None = None,
    reference: Any = None,
) -> Iterator[nn.Module]:
    """Delete ``units`` inside the block, replacing their activity (default: clamp to 0).

    ``units`` is a unit address, a list of them, or a ``Lesion``. ``replacement`` is any Replacement
    (``lesion.replacements``), a number (``Constant``) or ``"mean"`` (``Mean()``). Replacements that need
    data (mean, resample, patch, optimal) are fitted on ``reference``. Pass
    ``sites`` to validate indices up front; without them the lesioned layers are found on the first
    forward pass (one extra dry run), so every unit axis follows the same rule.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    >>> with ablate(net, "1:0-1"):
    ...     net(torch.ones(1, 2))[0, :2].tolist()
    [0.0, 0.0]
    """
    chosen = as_replacement(0.0 if replacement is None else replacement)
    lesion = units if isinstance(units, Lesion) else Lesion(units, chosen)
    if isinstance(units, Lesion) and replacement is not None:
        lesion = lesion.with_replacement(chosen)
    state = Applied()
    if sites is not None:
        lesion = lesion.resolve(sites)
        state.sites = {s.name: s for s in sites}
        lesion = fit_lesions(model, reference, state.sites, [lesion])[0]
    with apply(model, [lesion], state, reference=reference):
        yield model


def fit_lesions(
    model, data, sites: Mapping[str, Site], lesions: Sequence[Lesion], metric=None
) -> list[Lesion]:
    """Lesions whose replacements are fitted (one fit per distinct replacement, on ``data``; those fitted
    to a loss, such as ``Optimal``, to ``metric``'s)."""
    fitted: dict[Any, Replacement] = {}
    out = []
    for les in lesions:
        r = les.replacement
        if r.needs_fit:
            key = replacement_key(r)
            if key not in fitted:
                same = [x for x in lesions if replacement_key(x.replacement) == key]
                fitted[key] = r.fit(model, data, sites, same, metric=metric)
            r = fitted[key]
        out.append(les.with_replacement(r))
    return out


def replacement_key(r: Replacement) -> Any:
    """Equal replacements share one fit and one engine group; unhashable ones stand alone."""
    try:
        hash(r)
    except TypeError:
        return id(r)
    return r


@contextmanager
def apply(
    model: nn.Module, lesions: Sequence[Lesion], state: Applied, *, reference=None
) -> Iterator[Applied]:
    """Hook ``lesions`` into ``model`` (one hook per lesioned module); the sweep's building block."""
    named = dict(model.named_modules())
    layers = list(dict.fromkeys(layer for les in lesions for layer in les.units))
    known = set(state.sites or ()) | set(getattr(model, "hook_dict", None) or ())
    for name in layers:
        if (name not in named or not name) and name not in known and f"{name}.hook_z" not in known:
            from lesion.core.units import unknown_layer

            widths = state.sites or {}
            raise unknown_layer(name, {n: s.width for n, s in widths.items()} if widths else [])
    opened = [(les, les.replacement.open()) for les in lesions]
    handles: list = []

    def install() -> None:  # once the sites are known: each site's own module, output or input
        for name in layers:
            site = state.sites[name]
            mine = [(les, r) for les, r in opened if name in les.units]
            if site.target not in named:
                raise SiteError(f"site {name!r} reads module {site.target!r}, which the model lacks")
            handles.append(
                hook_site(named[site.target], site, _site_edit(name, mine, state, model, reference))
            )

    try:
        if state.sites is None or any(n not in state.sites for n in layers):
            handles.append(
                model.register_forward_pre_hook(_resolver(model, layers, state, install), with_kwargs=True)
            )
        else:
            install()
        yield state
    finally:
        for h in handles:
            h.remove()


def _resolver(model, layers, state: Applied, install):
    """A root pre-hook that finds the lesioned layers' sites on the first forward pass of a plain block,
    then hooks them (before any of the model's modules runs, so this very pass is lesioned)."""

    def hook(_m, args, kwargs):
        if ASIDE.get() or DRY_RUN.get():
            return None
        with state.lock:
            if state.sites is None or any(n not in state.sites for n in layers):
                example = Batch(tuple(args), dict(kwargs), ids=torch.arange(_size(args, kwargs)))
                found = find_sites(model, example.slice(0, 2), layers)
                state.sites = {**(state.sites or {}), **{s.name: s for s in found}}
                install()
        return None

    return hook


def _size(args, kwargs) -> int:
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor) and v.ndim:
            return int(v.shape[0])
    return 1


def _site_edit(name: str, mine, state: Applied, model, reference):
    """The edit of one site's tensor: every lesion of it applied in turn (none while lesions step aside)."""
    fitted: dict[int, Replacement] = {}

    def apply_all(h: torch.Tensor) -> torch.Tensor:
        site = state.sites[name]
        for les, r in mine:
            units = les.units.resolve({site.name: site.width} | {n: s.width for n, s in state.sites.items()})
            if r.needs_fit:  # a plain ablate block: fit once, on the reference data, with the hooks aside
                if id(r) not in fitted:
                    with aside():
                        one = fit_lesions(model, reference, state.sites, [les.with_replacement(r)])
                    fitted[id(r)] = one[0].replacement
                r = fitted[id(r)]
            h = replace_units(h, site, units, r, state)
        return h

    def edit(h):
        if ASIDE.get() or DRY_RUN.get():
            return h
        if not isinstance(h, torch.Tensor):
            raise SiteError(
                f"site {name!r} outputs a {type(h).__name__}, not a tensor; expected a module "
                "whose output is one tensor"
            )
        return apply_all(h)

    return edit


def replace_units(
    h: torch.Tensor, site: Site, units: UnitSet, r: Replacement, state: Applied
) -> torch.Tensor:
    """``h`` with the units of ``units`` at ``site`` replaced by ``r`` (at their positions, if chosen)."""
    idx_list = units.get(site.name)
    if not idx_list:
        return h
    raw, h = h, site.view(h)
    if h.ndim != len(site.shape) + 1 or h.shape[site.unit_dim] != site.width * site.group:
        raise SiteError(
            f"site {site.name!r} gave shape {tuple(h.shape)}; expected (batch, "
            f"{', '.join(map(str, site.shape))}) "
            "as on the dry run"
        )
    idx = torch.as_tensor(idx_list, dtype=torch.long, device=h.device)
    ctx = Context(site, idx, state.batch, state.batch_index)
    if r.edit is not None:
        if units.positions(site.name) is not None:
            raise LesionError(f"{type(r).__name__} acts on whole sites; it cannot be limited to positions")
        return site.unview(r.edit(h, site, idx, ctx), raw)
    u = h.movedim(site.unit_dim, -1).unflatten(-1, (site.width, site.group))  # (batch, ..., width, group)
    cur = u.index_select(-2, idx)  # (batch, ..., k, group)
    new = torch.broadcast_to(r.values(cur, ctx).to(device=cur.device, dtype=cur.dtype), cur.shape)
    pos = units.positions(site.name)
    if pos is not None:
        new = torch.where(_position_mask(site, pos, cur), new, cur)
    out = u.index_copy(-2, idx, new.contiguous())
    return site.unview(out.flatten(-2).movedim(-1, site.unit_dim), raw)


def _position_mask(site: Site, pos: tuple[int, ...], cur: torch.Tensor) -> torch.Tensor:
    if site.position_dim is None:
        raise UnitError(
            f"site {site.name!r} has no sequence axis (shape {site.shape}); positions ('@') need a "
            "(batch, positions, units) site"
        )
    t = cur.shape[1]
    bad = [p for p in pos if not -t <= p < t]
    if bad:
        raise UnitError(f"position {bad[0]} is beyond the sequence of {t} positions at site {site.name!r}")
    mask = torch.zeros(t, dtype=torch.bool, device=cur.device)
    mask[[p % t for p in pos]] = True
    return mask.reshape(1, t, *[1] * (cur.ndim - 2))


@contextmanager
def add_noise(
    model: nn.Module,
    stats: Stats,
    scale: float,
    *,
    layers: Sequence[str] | None = None,
    scaling: Scaling = "sd",
    seed: int = 0,
) -> Iterator[nn.Module]:
    """Add Gaussian noise to every unit of ``layers`` (default: every site in ``stats``) at once.

    Noise SD per unit = ``scale`` x that unit's SD in ``stats`` (``scaling="variance"``: noise variance =
    scale x unit variance). Fresh noise for every example, from one generator seeded with ``seed``.
    """
    names = list(layers) if layers is not None else list(stats)
    noise = Noise(float(scale), scaling, seed, stats)
    sites = [stats[n].site for n in names]
    with ablate(model, Lesion([f"{n}:*" for n in names], noise), sites=sites):
        yield model


@contextmanager
def ablate_directions(
    model: nn.Module, layer: str, directions: torch.Tensor, *, sites: Sequence[Site] | None = None
) -> Iterator[nn.Module]:
    """Remove the orthonormal columns of ``directions`` (width, k) from ``layer``'s activations."""
    with ablate(model, Lesion(f"{layer}:*", Directions(directions.detach())), sites=sites):
        yield model


def as_lesion(item: Any) -> Lesion:
    """A Lesion from a Lesion or a unit spec (deleted with the default zero replacement)."""
    return item if isinstance(item, Lesion) else Lesion(item)


__all__ = ["Lesion", "ablate", "ablate_directions", "add_noise", "as_batch", "hooks"]
