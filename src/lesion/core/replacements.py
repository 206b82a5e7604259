"""How a unit is deleted: what value takes the place of its activity.

A replacement sees the current activity of the lesioned units ``cur`` (batch, ..., k, group): unit axis
second to last, a head's channels last) and a ``Context`` (the site, the batch with its example ids, the
unit indices), and returns the values that replace it (anything broadcastable to ``cur``). Some need
data first (``fit``): the sweep fits them on its own data unless given a ``reference``; ``lesion.ablate``
fits them on ``reference`` or refuses.

- ``Zero()``, ``Constant(c)``: the paper's clamp (zero after the nonlinearity is the default).
- ``Mean()``: the unit's mean over a reference set; ``PositionalMean()``: its mean per sequence position.
- ``Resample(seed)``: the unit's activity on another example of the reference data: example ``i`` takes
  the activity of example ``perm[i]``, ``perm = torch.randperm(n, generator=manual_seed(seed))``.
- ``Patch(source)``: the activity on the paired example of ``source`` (activation patching).
- ``Optimal()`` (``lesion.engine.optimal``): the constant minimising the expected loss (Li & Janson 2024).
- ``Noise(scale)``: adds Gaussian noise of ``scale`` x the unit's SD; ``Directions(q)``: projects out the
  orthonormal columns of ``q`` from the whole site.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from lesion.core import interventions as iv
from lesion.errors import LesionError
from lesion.util import Scaling

if TYPE_CHECKING:
    from lesion.core.batch import Batch
    from lesion.core.sites import Site


@dataclass
class Context:
    """What a replacement may look at besides the activity: the site, the batch and the units."""

    site: Site
    units: torch.Tensor  # (k,) unit indices on the site's unit axis
    batch: Batch | None = None  # the batch being evaluated (None inside a plain ``ablate`` block)
    batch_index: int = 0
    lesion: Any = None

    @property
    def ids(self) -> torch.Tensor | None:
        """Global example ids of the batch (positions in the data), or None outside a sweep."""
        return None if self.batch is None else self.batch.ids


class Replacement:
    """Base class: override ``values`` (or ``edit`` for whole-site transforms); ``fit`` if data is needed."""

    fitted_field: ClassVar[str | None] = None  # the field ``fit`` fills; None: nothing to fit
    constant = False  # one value per unit, the same for every example: the fast engine can use it
    repeats = 1  # draws a sweep averages over (Resample); each draw is ``draw(k)``

    @property
    def needs_fit(self) -> bool:
        return self.fitted_field is not None and getattr(self, self.fitted_field) is None

    def fit(self, model, data, sites: Mapping[str, Site], lesions, metric=None) -> Replacement:
        """A copy ready to use, with whatever it needs measured on ``data`` at ``sites`` (``metric``: what
        the sweep measures, for replacements fitted to it such as ``Optimal``)."""
        return self

    def draw(self, k: int) -> Replacement:
        """The ``k``-th of ``repeats`` draws (itself, for replacements that draw nothing)."""
        return self

    def open(self) -> Replacement:
        """Per application (one ``ablate`` block, one pass of a sweep): fresh state such as a generator."""
        return self

    def values(self, cur: torch.Tensor, ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    def fill(self, site: Site, lesion=None) -> torch.Tensor:
        """(width,) per-unit constants, for ``constant`` replacements (used by the fast engine)."""
        raise LesionError(f"{self!r} is not a per-unit constant")

    edit = None  # optional: (h, site, units, ctx) -> new h, for replacements of the whole site


@dataclass(frozen=True)
class Zero(Replacement):
    """Clamp to 0: the paper's deletion (after the nonlinearity)."""

    constant = True

    def values(self, cur, ctx):
        return torch.zeros((), dtype=cur.dtype, device=cur.device)

    def fill(self, site, lesion=None):
        return torch.zeros(site.width)


@dataclass(frozen=True)
class Constant(Replacement):
    """Clamp to one constant ``value``."""

    value: float = 0.0
    constant = True

    def values(self, cur, ctx):
        return torch.full((), float(self.value), dtype=cur.dtype, device=cur.device)

    def fill(self, site, lesion=None):
        return torch.full((site.width,), float(self.value))


@dataclass(frozen=True)
class Mean(Replacement):
    """Clamp each unit to its mean over a reference set (per channel for a head view); positions that an
    ``attention_mask`` marks as padding are left out of the mean.

    ``stats`` (``lesion.collect_stats``) gives the means directly; otherwise they are measured on
    ``reference``, or on the sweep's own data.
    """

    stats: Any = None
    reference: Any = None
    means: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    constant = True

    fitted_field = "means"

    def fit(self, model, data, sites, lesions, metric=None):
        if self.means is not None:
            return self
        layers = list(sites)  # every site: one pass either way, and prefixes of any order stay covered
        if self.stats is not None:
            layers = [n for n in layers if n in self.stats] or _layers(lesions, sites)
            missing = [n for n in layers if n not in self.stats]
            if missing:
                raise LesionError(f"the reference statistics have no layer {missing[0]!r}; measure it too")
            return replace(self, means={n: self.stats[n].mean for n in layers})
        from lesion.core.capture import has_mask, masked_means
        from lesion.core.stats import collect_stats

        ref = _need(self.reference if self.reference is not None else data, "Mean()")
        if has_mask(ref):  # padded positions are left out, as the metrics leave them out
            return replace(self, means=masked_means(model, ref, [sites[n] for n in layers]))
        st = collect_stats(model, ref, [sites[n] for n in layers], histograms=False, labels=False)
        return replace(self, means={n: st[n].mean for n in layers})

    def values(self, cur, ctx):
        m = self._means(ctx.site)[ctx.units]  # (k, group)
        return m.to(device=cur.device, dtype=cur.dtype)

    def fill(self, site, lesion=None):
        return self._means(site)[:, 0].clone()

    def _means(self, site: Site) -> torch.Tensor:
        if self.means is None or site.name not in self.means:
            raise LesionError(
                "Mean() needs reference data: Mean(stats=collect_stats(...)) or Mean(reference=data), or "
                "use it in a sweep, which measures the means on its data"
            )
        return self.means[site.name].float().reshape(site.width, site.group)


@dataclass(frozen=True)
class PositionalMean(Replacement):
    """Clamp each unit to its mean at the same sequence position, over a reference set (examples whose
    position is padding, by the ``attention_mask``, left out)."""

    reference: Any = None
    means: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    fitted_field = "means"

    def fit(self, model, data, sites, lesions, metric=None):
        if self.means is not None:
            return self
        from lesion.core.capture import positional_means

        layers = _layers(lesions, sites)
        for n in layers:
            if sites[n].position_dim is None:
                raise LesionError(
                    f"site {n!r} has no sequence axis; PositionalMean needs (batch, positions, units)"
                )
        ref = _need(self.reference if self.reference is not None else data, "PositionalMean()")
        return replace(self, means=positional_means(model, ref, [sites[n] for n in layers]))

    def values(self, cur, ctx):
        if self.means is None or ctx.site.name not in self.means:
            raise LesionError("PositionalMean() needs reference data: PositionalMean(reference=data)")
        m = self.means[ctx.site.name]  # (positions, width * group)
        t = cur.shape[1]
        if t > m.shape[0]:
            raise LesionError(
                f"site {ctx.site.name!r}: a sequence of {t} positions, but the reference data had only "
                f"{m.shape[0]}; expected sequences no longer than the reference"
            )
        m = m[:t].reshape(t, ctx.site.width, ctx.site.group)[:, ctx.units]  # (t, k, group)
        shape = [1, t] + [1] * (cur.ndim - 4) + list(m.shape[1:])
        return m.reshape(shape).to(device=cur.device, dtype=cur.dtype)


@dataclass(frozen=True)
class Resample(Replacement):
    """The unit's activity on another example of the reference data (a seeded permutation).

    ``repeats`` > 1 makes a sweep average its metric over draws with seeds ``seed``, ``seed + 1``, ...
    """

    seed: int = 0
    repeats: int = 1
    reference: Any = None
    cache: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    fitted_field = "cache"

    def fit(self, model, data, sites, lesions, metric=None):
        if self.cache is not None:
            return self
        from lesion.core.capture import activations

        ref = _need(self.reference if self.reference is not None else data, "Resample()")
        return replace(self, cache=activations(model, ref, [sites[n] for n in _layers(lesions, sites)]))

    def draw(self, r: int) -> Resample:
        return replace(self, seed=self.seed + r, repeats=1)

    def values(self, cur, ctx):
        acts = _cached(self.cache, ctx, "Resample()")
        n = acts.shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        ids = ctx.ids if ctx.ids is not None else torch.arange(cur.shape[0])
        if int(ids.max()) >= n:
            raise LesionError(f"Resample: example id {int(ids.max())} beyond the {n} reference examples")
        return _select(acts[perm[ids]], ctx, cur)


@dataclass(frozen=True)
class Patch(Replacement):
    """Activation patching: the unit's activity on the paired example of ``source`` (same order, size)."""

    source: Any = None
    cache: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    fitted_field = "cache"

    def fit(self, model, data, sites, lesions, metric=None):
        if self.source is None:
            raise LesionError(
                "Patch(source) needs the source inputs, paired example by example with the data"
            )
        if self.cache is not None:
            return self
        from lesion.core.capture import activations, count

        cache = activations(model, self.source, [sites[n] for n in _layers(lesions, sites)])
        n_src = next(iter(cache.values())).shape[0]
        n = count(data) if data is not None else n_src
        if n != n_src:
            raise LesionError(
                f"Patch source has {n_src} examples; the data has {n}: expected one per example"
            )
        return replace(self, cache=cache)

    def values(self, cur, ctx):
        acts = _cached(self.cache, ctx, "Patch(source)")
        ids = ctx.ids if ctx.ids is not None else torch.arange(cur.shape[0])
        n = acts.shape[0]
        if int(ids.max()) >= n or (ctx.ids is None and len(ids) != n):
            raise LesionError(
                f"Patch source has {n} examples but the batch has {cur.shape[0]}; expected a source "
                "paired example by example with the inputs"
            )
        return _select(acts[ids], ctx, cur)


@dataclass(frozen=True)
class Noise(Replacement):
    """Add zero-mean Gaussian noise: SD = ``scale`` x the unit's SD (``scaling="variance"``: variance).

    One generator seeded with ``seed`` per application, shared by all sites, drawn in the site's layout.
    """

    scale: float = 1.0
    scaling: Scaling = "sd"
    seed: int = 0
    stats: Any = None
    generator: torch.Generator | None = field(default=None, repr=False, compare=False)

    fitted_field = "stats"

    def fit(self, model, data, sites, lesions, metric=None):
        if self.stats is not None:
            return self
        from lesion.core.stats import collect_stats

        layers = _layers(lesions, sites)
        data = _need(data, "Noise()")
        return replace(self, stats=collect_stats(model, data, [sites[n] for n in layers], histograms=False))

    def open(self):
        return replace(self, generator=torch.Generator().manual_seed(self.seed))

    def edit(self, h, site, units, ctx):
        if self.stats is None:
            raise LesionError(
                "Noise() needs the units' SDs: Noise(scale, stats=collect_stats(...)) or a sweep"
            )
        if len(units) != site.width or site.group != 1:
            raise LesionError(f"Noise is added to every unit of a site; name the whole site, '{site.name}:*'")
        return iv.noise(h, self.stats[site.name].sd, self.scale, dim=site.unit_dim, scaling=self.scaling,
                        generator=self.generator)  # fmt: skip


@dataclass(frozen=True)
class Directions(Replacement):
    """Project out the orthonormal columns of ``q`` (width, k) from the whole site: h <- h - Q Q^T h."""

    q: torch.Tensor = None  # type: ignore[assignment]

    def __post_init__(self):
        q = self.q if self.q.ndim == 2 else self.q[:, None]
        gram = q.T.double() @ q.double()
        if not torch.allclose(gram, torch.eye(q.shape[1], dtype=torch.float64), atol=1e-4):
            raise LesionError("directions must be orthonormal columns (width, k); got a non-orthonormal set")

    def edit(self, h, site, units, ctx):
        if len(units) != site.width:
            raise LesionError(f"directions are removed from the whole site; name it as '{site.name}:*'")
        return iv.remove_directions(h, self.q.detach(), site.unit_dim)


def as_replacement(value: Any = 0.0, stats: Any = None) -> Replacement:
    """A Replacement from the shorthand of earlier versions: a number, ``"zero"``, ``"mean"``, or one."""
    if isinstance(value, Replacement):
        return value
    if isinstance(value, str):
        if value == "mean":
            return Mean(stats=stats)
        if value == "zero":
            return Zero()
        raise LesionError(f"unknown ablation value {value!r}; expected a number, 'mean', or a Replacement")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LesionError(f"ablation value {value!r}; expected a number, 'mean', or a Replacement")
    return Zero() if float(value) == 0.0 else Constant(float(value))


def _need(data, what: str):
    if data is None:
        raise LesionError(
            f"{what} needs reference data: pass reference=data (or use it in a sweep, fitted on its data)"
        )
    return data


def _layers(lesions, sites) -> list[str]:
    names = {layer for les in lesions for layer in les.units}
    return [n for n in sites if n in names]


def _cached(cache, ctx: Context, what: str) -> torch.Tensor:
    if cache is None or ctx.site.name not in cache:
        raise LesionError(f"{what} has no activations of site {ctx.site.name!r}; fit it on data first")
    return cache[ctx.site.name]


def _select(acts: torch.Tensor, ctx: Context, cur: torch.Tensor) -> torch.Tensor:
    """The lesioned units of cached activations ``acts`` (batch, ...) in ``cur``'s layout."""
    site = ctx.site
    u = acts.to(cur.device).movedim(site.unit_dim, -1).unflatten(-1, (site.width, site.group))
    picked = u.index_select(-2, ctx.units.to(cur.device))
    if picked.shape != cur.shape:
        raise LesionError(
            f"site {site.name!r}: the other examples' activity has shape {tuple(picked.shape[1:])}, the "
            f"batch's {tuple(cur.shape[1:])}; expected inputs of the same shape (same sequence length)"
        )
    return picked.to(cur.dtype)
