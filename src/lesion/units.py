"""Unit addresses: ``layer:17``, ``layer:0-9``, ``layer:*``, normalised once into a UnitSet.

``layer`` is exactly a name from ``model.named_modules()``; module names contain dots, so a colon
separates the layer from the indices. Ranges are inclusive: ``fc1:0-9`` is ten units.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from lesion.errors import SiteError, UnitError

if TYPE_CHECKING:
    from lesion.sites import Site

ALL = None  # marker for "every unit of the layer", resolved against a site's width


@dataclass(frozen=True, order=True)
class Unit:
    """One unit: a neuron of a fully connected layer or a whole channel of a conv layer."""

    layer: str
    index: int

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> Unit:
        """Parse a single address such as ``features.3:17``."""
        layer, sel = _split(text)
        idx = _parse_indices(sel, text)
        if idx is ALL or len(idx) != 1:
            raise UnitError(f"expected one unit like 'layer:17', got {text!r}")
        return cls(layer, idx[0])


UnitSpec = Union[str, Unit, tuple, Iterable, Mapping, Callable, "UnitSet"]


class UnitSet(Mapping[str, "tuple[int, ...] | None"]):
    """An ordered mapping ``layer -> sorted unit indices`` (``None`` = every unit of the layer)."""

    def __init__(self, selection: Mapping[str, tuple[int, ...] | None] | None = None):
        self._sel: dict[str, tuple[int, ...] | None] = dict(selection or {})

    def __getitem__(self, layer: str) -> tuple[int, ...] | None:
        return self._sel[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sel)

    def __len__(self) -> int:
        return len(self._sel)

    def __repr__(self) -> str:
        return f"UnitSet({self.to_strings()!r})"

    @property
    def resolved(self) -> bool:
        return all(v is not ALL for v in self._sel.values())

    def units(self) -> list[Unit]:
        """Every unit as a ``Unit`` (requires a resolved set)."""
        if not self.resolved:
            raise UnitError("this unit set still has 'layer:*' entries; resolve it against sites")
        return [Unit(layer, i) for layer, idx in self._sel.items() for i in idx]  # type: ignore[union-attr]

    def count(self) -> int:
        return len(self.units())

    def to_strings(self) -> list[str]:
        out = []
        for layer, idx in self._sel.items():
            out.extend([f"{layer}:*"] if idx is ALL else [f"{layer}:{i}" for i in idx])
        return out

    def resolve(self, sites: Sequence[Site]) -> UnitSet:
        """Check every layer and index against ``sites`` and expand ``layer:*``."""
        by_name = {s.name: s for s in sites}
        out: dict[str, tuple[int, ...]] = {}
        for layer, idx in self._sel.items():
            site = by_name.get(layer)
            if site is None:
                raise unknown_layer(layer, list(by_name), sites)
            if idx is ALL:
                out[layer] = tuple(range(site.width))
                continue
            bad = [i for i in idx if not 0 <= i < site.width]
            if bad:
                raise UnitError(
                    f"unit index {bad[0]} out of range for layer {layer!r}: "
                    f"expected 0..{site.width - 1} ({site.width} units)"
                )
            out[layer] = idx
        order = {s.name: k for k, s in enumerate(sites)}
        return UnitSet(dict(sorted(out.items(), key=lambda kv: order[kv[0]])))


def parse_units(spec: UnitSpec, sites: Sequence[Site] | None = None) -> UnitSet:
    """Normalise any accepted unit specification into a ``UnitSet``.

    Accepts ``"fc1:3"``, ``"fc1:0-9,12"``, ``"fc1:*"``, a ``Unit``, a ``(layer, index)`` tuple, a list
    of those, a mapping ``{layer: indices or None}``, or (with ``sites``) a predicate ``Unit -> bool``.
    With ``sites`` the result is resolved and validated.

    >>> parse_units(["fc1:0-2", "fc2:5"]).to_strings()
    ['fc1:0', 'fc1:1', 'fc1:2', 'fc2:5']
    """
    if isinstance(spec, UnitSet):
        sel = dict(spec.items())
    elif callable(spec) and not isinstance(spec, str | Unit | tuple | Mapping):
        if sites is None:
            raise UnitError("a predicate unit selection needs the model's sites to choose from")
        sel = {}
        for s in sites:
            idx = tuple(i for i in range(s.width) if spec(Unit(s.name, i)))
            if idx:
                sel[s.name] = idx
    else:
        sel = {}
        for layer, idx in _items(spec):
            if idx is ALL or sel.get(layer, ()) is ALL:
                sel[layer] = ALL
            else:
                sel[layer] = tuple(sorted(set(sel.get(layer, ())) | set(idx)))
    units = UnitSet(sel)
    return units.resolve(sites) if sites is not None else units


def unknown_layer(layer: str, candidates: Sequence[str], sites: Sequence[Site]) -> SiteError:
    """The error for a layer name that is not a site, with the closest names and the valid sites."""
    close = difflib.get_close_matches(layer, list(candidates), n=3, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else ""
    valid = ", ".join(f"{s.name} ({s.width})" for s in sites) or "none"
    return SiteError(f"unknown layer {layer!r}{hint}; layers with units: {valid}")


def _items(spec) -> Iterator[tuple[str, tuple[int, ...] | None]]:
    if isinstance(spec, str):
        layer, sel = _split(spec)
        yield layer, _parse_indices(sel, spec)
    elif isinstance(spec, Unit):
        yield spec.layer, (spec.index,)
    elif isinstance(spec, Mapping):
        for layer, idx in spec.items():
            if idx is ALL or idx == "*":
                yield str(layer), ALL
            elif isinstance(idx, int):
                yield str(layer), (_check_int(idx, layer),)
            else:
                yield str(layer), tuple(_check_int(i, layer) for i in idx)
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        yield spec[0], (_check_int(spec[1], spec[0]),)
    elif isinstance(spec, Iterable):
        for item in spec:
            yield from _items(item)
    else:
        raise UnitError(
            f"cannot read units from {type(spec).__name__}; expected 'layer:17', 'layer:0-9', "
            "'layer:*', a Unit, a (layer, index) pair, a list of these or a mapping"
        )


def _check_int(i, layer) -> int:
    if isinstance(i, bool) or (not isinstance(i, int) and not hasattr(i, "__index__")):
        raise UnitError(f"unit index for layer {layer!r} must be an integer, got {i!r}")
    i = int(i)
    if i < 0:
        raise UnitError(f"unit index {i} for layer {layer!r} is negative; expected 0 or more")
    return i


def _split(text: str) -> tuple[str, str]:
    layer, colon, sel = text.strip().rpartition(":")
    if not colon or not layer or not sel:
        raise UnitError(
            f"cannot parse unit address {text!r}; expected 'layer:17', 'layer:0-9' or 'layer:*' "
            "with layer a name from model.named_modules()"
        )
    return layer, sel.strip()


def _parse_indices(sel: str, text: str) -> tuple[int, ...] | None:
    if sel == "*":
        return ALL
    out: set[int] = set()
    for part in sel.split(","):
        a, dash, b = part.strip().partition("-")
        try:
            lo = int(a)
            hi = int(b) if dash else lo
        except ValueError:
            raise UnitError(
                f"cannot parse unit indices {sel!r} in {text!r}; expected e.g. 17, 0-9, 1,4,7 or *"
            ) from None
        if lo < 0 or hi < lo:
            raise UnitError(f"bad unit range {part.strip()!r} in {text!r}; expected 0 <= lo <= hi")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))
