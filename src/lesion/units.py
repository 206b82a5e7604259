"""Unit addresses: ``layer:17``, ``layer:0-9``, ``layer:*``, normalised once into a UnitSet.

``layer`` is exactly a name from ``model.named_modules()``; module names contain dots, so a colon
separates the layer from the indices. Ranges are inclusive: ``fc1:0-9`` is ten units.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from lesion.errors import SiteError, UnitError

if TYPE_CHECKING:
    from lesion.sites import Site

ALL = None  # marker for "every unit of the layer", resolved against a site's width
MAX_UNITS = 1 << 20  # the most units a layer may have when its width is unknown (no sites given)
_NUMBER = re.compile(r"[0-9]+", re.ASCII)
_DIGITS = 15  # longer indices are out of range of any layer (and int() of them would cost time)


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
            raise UnitError(f"expected one unit like 'layer:17', got {_clip(text)!r}")
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
    With ``sites`` the result is resolved and validated. Indices are ASCII digits only; every range is
    checked against its layer's width (without ``sites``: against ``MAX_UNITS``) before it is expanded,
    so parsing costs memory in proportion to the text and the layers' widths, never to a range's span.

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
        sel = _collect(spec, sites)
    units = UnitSet(sel)
    return units.resolve(sites) if sites is not None else units


def _collect(spec: UnitSpec, sites: Sequence[Site] | None) -> dict[str, tuple[int, ...] | None]:
    """``layer -> sorted indices`` from ranges, each checked against its width before expansion."""
    widths = None if sites is None else {s.name: s.width for s in sites}
    ranges: dict[str, list[tuple[int, int]] | None] = {}
    for layer, parts in _items(spec):
        if widths is not None and layer not in widths:
            raise unknown_layer(layer, list(widths), sites or ())
        if parts is ALL or ranges.get(layer, []) is ALL:
            ranges[layer] = ALL
            continue
        limit = MAX_UNITS if widths is None else widths[layer]
        for lo, hi in parts:
            _check_range(layer, lo, hi, limit, widths is not None)
        ranges.setdefault(layer, []).extend(parts)  # type: ignore[union-attr]
    return {layer: ALL if r is ALL else _expand(r) for layer, r in ranges.items()}


def _check_range(layer: str, lo: int, hi: int, limit: int, known: bool) -> None:
    if hi < limit:
        return
    if known:
        raise UnitError(
            f"unit index {hi} out of range for layer {layer!r}: expected 0..{limit - 1} ({limit} units)"
        )
    raise UnitError(
        f"unit index {hi} for layer {layer!r} is beyond lesion's limit of {MAX_UNITS:,} units per layer; "
        "expected a smaller index (pass the model's sites to check indices against their widths)"
    )


def _expand(ranges: list[tuple[int, int]]) -> tuple[int, ...]:
    """The sorted union of inclusive ranges; each index appears once, so the size is bounded by width."""
    out: list[int] = []
    last = -1
    for lo, hi in sorted(ranges):
        lo = max(lo, last + 1)
        if lo <= hi:
            out.extend(range(lo, hi + 1))
        last = max(last, hi)
    return tuple(out)


def unknown_layer(layer: str, candidates: Sequence[str], sites: Sequence[Site]) -> SiteError:
    """The error for a layer name that is not a site, with the closest names and the valid sites."""
    close = difflib.get_close_matches(layer[:200], list(candidates), n=3, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else ""
    valid = ", ".join(f"{s.name} ({s.width})" for s in sites) or "none"
    return SiteError(f"unknown layer {_clip(layer)!r}{hint}; layers with units: {valid}")


def _items(spec) -> Iterator[tuple[str, list[tuple[int, int]] | None]]:
    """``(layer, inclusive index ranges)`` pairs, or ``(layer, ALL)``, without expanding any range."""
    if isinstance(spec, str):
        layer, sel = _split(spec)
        yield layer, _parse_ranges(sel, spec)
    elif isinstance(spec, Unit):
        yield spec.layer, [(spec.index, spec.index)]
    elif isinstance(spec, Mapping):
        for layer, idx in spec.items():
            if idx is ALL or (isinstance(idx, str) and idx == "*"):
                yield str(layer), ALL
            elif isinstance(idx, str):
                yield str(layer), _parse_ranges(idx, f"{layer}:{idx}")
            elif _is_int(idx):
                i = _check_int(idx, layer)
                yield str(layer), [(i, i)]
            elif isinstance(idx, Iterable):
                yield str(layer), [(i, i) for i in map(lambda v: _check_int(v, layer), _flat(idx, layer))]
            else:
                raise UnitError(
                    f"units for layer {layer!r} are a {type(idx).__name__}; expected an index, a list "
                    "of indices, '*' or None"
                )
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        i = _check_int(spec[1], spec[0])
        yield spec[0], [(i, i)]
    elif isinstance(spec, Iterable):
        for item in spec:
            yield from _items(item)
    else:
        raise UnitError(
            f"cannot read units from {type(spec).__name__}; expected 'layer:17', 'layer:0-9', "
            "'layer:*', a Unit, a (layer, index) pair, a list of these or a mapping"
        )


def _flat(idx: Iterable, layer) -> Iterable:
    """The elements of a list of indices; a numpy or torch array of any shape counts as its elements."""
    ndim = getattr(idx, "ndim", None)
    if ndim is not None and ndim != 1:
        raise UnitError(
            f"unit indices for layer {layer!r} have {ndim} dimensions; expected a flat list of indices"
        )
    return idx.tolist() if hasattr(idx, "tolist") else idx


def _is_int(i) -> bool:
    return not isinstance(i, bool) and (isinstance(i, int) or getattr(i, "ndim", 1) == 0)


def _check_int(i, layer) -> int:
    if isinstance(i, bool) or not hasattr(i, "__index__"):
        raise UnitError(f"unit index for layer {layer!r} must be an integer, got {i!r}")
    try:
        i = int(i.__index__())
    except TypeError:  # e.g. a float tensor of one element
        raise UnitError(f"unit index for layer {layer!r} must be an integer, got {i!r}") from None
    if i < 0:
        raise UnitError(f"unit index {i} for layer {layer!r} is negative; expected 0 or more")
    return i


def _split(text: str) -> tuple[str, str]:
    layer, colon, sel = text.strip().rpartition(":")
    if not colon or not layer or not sel:
        raise UnitError(
            f"cannot parse unit address {_clip(text)!r}; expected 'layer:17', 'layer:0-9' or 'layer:*' "
            "with layer a name from model.named_modules()"
        )
    return layer, sel.strip()


def _parse_ranges(sel: str, text: str) -> list[tuple[int, int]] | None:
    """Inclusive ``(lo, hi)`` ranges of ``"17"``, ``"0-9,12"``; ``None`` (ALL) for ``"*"``.

    Only ASCII digits count (``int`` would also take ``"1_000"`` and ``"٣"``), at most 15 of them.
    """
    if sel == "*":
        return ALL
    out = []
    for part in sel.split(","):
        a, dash, b = part.strip().partition("-")
        if not _NUMBER.fullmatch(a) or (dash and not _NUMBER.fullmatch(b)):
            raise UnitError(
                f"cannot parse unit indices {_clip(sel)!r} in {_clip(text)!r}; expected ASCII digits "
                "like 17, 0-9, 1,4,7 or *"
            )
        if max(len(a), len(b)) > _DIGITS:
            raise UnitError(
                f"unit index {_clip(max(a, b, key=len), 20)} in {_clip(text)!r} is out of range: expected "
                f"at most {_DIGITS} digits"
            )
        lo = int(a)
        hi = int(b) if dash else lo
        if hi < lo:
            raise UnitError(f"bad unit range {_clip(part.strip())!r} in {_clip(text)!r}; expected lo <= hi")
        out.append((lo, hi))
    return out


def _parse_indices(sel: str, text: str) -> tuple[int, ...] | None:
    ranges = _parse_ranges(sel, text)
    if ranges is ALL:
        return ALL
    layer = text.strip().rpartition(":")[0]
    for lo, hi in ranges:
        _check_range(layer, lo, hi, MAX_UNITS, False)
    return _expand(ranges)


def _clip(text: str, n: int = 60) -> str:
    """At most ``n`` characters of ``text``, so an error never echoes a huge input back."""
    return text if len(text) <= n else f"{text[:n]}..."
