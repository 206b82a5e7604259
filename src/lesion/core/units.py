"""Unit addresses: ``layer:17``, ``layer:0-9``, ``layer:*``, ``layer:17@-1``, normalised once into a UnitSet.

``layer`` is exactly a name from ``model.named_modules()``; module names contain dots, so a colon
separates the layer from the indices. Ranges are inclusive: ``fc1:0-9`` is ten units. ``@`` restricts a
unit of a sequence site (batch, positions, units) to chosen positions: ``mlp.act:17@-1`` is neuron 17 at
the last position only, ``mlp.act:3@0,5`` at positions 0 and 5; without ``@`` a neuron is deleted at
every position. Sets are resolved against ``{layer: width}``; nothing here knows about modules.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import total_ordering
from typing import Any, Union

from lesion.errors import SiteError, UnitError

ALL = None  # marker for "every unit of the layer", resolved against a site's width
MAX_UNITS = 1 << 20  # the most units a layer may have when its width is unknown (no sites given)
_INT = re.compile(
    r"[0-9]{1,15}"
)  # ASCII digits only: int() would also take "1_000" and other scripts' digits
_POS = re.compile(r"-?[0-9]+")


@total_ordering
@dataclass(frozen=True)
class Unit:
    """One unit: a neuron (at every position, or at one), a conv channel, or a head of a head view."""

    layer: str
    index: int
    position: int | None = None  # a sequence position (negative from the end); None = every position

    def __str__(self) -> str:
        pos = "" if self.position is None else f"@{self.position}"
        return f"{self.layer}:{self.index}{pos}"

    def __lt__(self, other: Unit) -> bool:
        return self._key() < other._key()

    def _key(self) -> tuple:
        return (self.layer, self.index, self.position is not None, self.position or 0)

    @classmethod
    def parse(cls, text: str) -> Unit:
        """Parse a single address such as ``features.3:17`` or ``h.0.mlp.act:17@-1``."""
        units = parse_units(text).units()
        if len(units) != 1:
            raise UnitError(f"expected one unit like 'layer:17', got {text!r}")
        return units[0]


UnitSpec = Union[str, Unit, tuple, Iterable, Mapping, Callable, "UnitSet"]
Widths = Mapping[str, int]


class UnitSet(Mapping[str, "tuple[int, ...] | None"]):
    """An ordered mapping ``layer -> sorted unit indices`` (``None`` = every unit of the layer).

    ``positions(layer)`` gives the sequence positions the layer's units are restricted to (None: all).
    """

    def __init__(
        self,
        selection: Mapping[str, tuple[int, ...] | None] | None = None,
        positions: Mapping[str, tuple[int, ...]] | None = None,
    ):
        self._sel: dict[str, tuple[int, ...] | None] = dict(selection or {})
        self._pos: dict[str, tuple[int, ...]] = {k: v for k, v in (positions or {}).items() if k in self._sel}

    def __getitem__(self, layer: str) -> tuple[int, ...] | None:
        return self._sel[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sel)

    def __len__(self) -> int:
        return len(self._sel)

    def __repr__(self) -> str:
        return f"UnitSet({self.to_strings()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnitSet) and (self._sel, self._pos) == (other._sel, other._pos)

    def __hash__(self) -> int:
        return hash((tuple(self._sel.items()), tuple(self._pos.items())))

    def positions(self, layer: str) -> tuple[int, ...] | None:
        return self._pos.get(layer)

    @property
    def positional(self) -> bool:
        """True when some layer's units are restricted to chosen positions."""
        return bool(self._pos)

    @property
    def resolved(self) -> bool:
        return all(v is not ALL for v in self._sel.values())

    def units(self) -> list[Unit]:
        """Every unit as a ``Unit`` (one per position where positions are chosen; needs a resolved set)."""
        if not self.resolved:
            raise UnitError("this unit set still has 'layer:*' entries; resolve it against sites")
        out = []
        for layer, idx in self._sel.items():
            for p in self._pos.get(layer, (None,)):
                out.extend(Unit(layer, i, p) for i in idx)  # type: ignore[union-attr]
        return out

    def count(self) -> int:
        return len(self.units())

    def to_strings(self) -> list[str]:
        out = []
        for layer, idx in self._sel.items():
            pos = self._pos.get(layer)
            tail = "" if pos is None else "@" + ",".join(map(str, pos))
            out.extend([f"{layer}:*{tail}"] if idx is ALL else [f"{layer}:{i}{tail}" for i in idx])
        return out

    def resolve(self, sites: Widths | Sequence[Any]) -> UnitSet:
        """Check every layer and index against ``sites`` ({layer: width}, or Sites) and expand ``layer:*``."""
        widths = as_widths(sites)
        out: dict[str, tuple[int, ...]] = {}
        for layer, idx in self._sel.items():
            if layer not in widths:
                raise unknown_layer(layer, widths)
            width = widths[layer]
            if idx is ALL:
                out[layer] = tuple(range(width))
                continue
            if idx and idx[-1] >= width:
                raise UnitError(
                    f"unit index {idx[-1]} out of range for layer {layer!r}: "
                    f"expected 0..{width - 1} ({width} units)"
                )
            out[layer] = idx
        order = {name: k for k, name in enumerate(widths)}
        return UnitSet(dict(sorted(out.items(), key=lambda kv: order[kv[0]])), self._pos)


def _clip(text: str, n: int = 80) -> str:
    """A user's text shortened for an error message, so a huge input is never echoed whole."""
    text = str(text)
    return text if len(text) <= n else text[: n - 3] + "..."


def as_widths(sites: Widths | Sequence[Any]) -> dict[str, int]:
    """``{layer: width}`` from a mapping or from objects with ``name`` and ``width`` (Sites)."""
    if isinstance(sites, Mapping):
        return {str(k): int(v) for k, v in sites.items()}
    return {s.name: int(s.width) for s in sites}


def parse_units(spec: UnitSpec, sites: Widths | Sequence[Any] | None = None) -> UnitSet:
    """Normalise any accepted unit specification into a ``UnitSet``.

    Accepts ``"fc1:3"``, ``"fc1:0-9,12"``, ``"fc1:*"``, ``"act:3@-1"``, a ``Unit``, a ``(layer, index)``
    tuple, a list of those, a mapping ``{layer: indices or None}``, or (with ``sites``) a predicate
    ``Unit -> bool``. With ``sites`` ({layer: width} or Sites) the result is resolved and validated, and
    ranges are checked against the widths before anything is expanded.

    >>> parse_units(["fc1:0-2", "fc2:5"]).to_strings()
    ['fc1:0', 'fc1:1', 'fc1:2', 'fc2:5']
    >>> parse_units("act:3@-1").units()
    [Unit(layer='act', index=3, position=-1)]
    """
    widths = as_widths(sites) if sites is not None else None
    if isinstance(spec, UnitSet):
        units = UnitSet(dict(spec.items()), {k: p for k in spec if (p := spec.positions(k)) is not None})
    elif callable(spec) and not isinstance(spec, str | Unit | tuple | Mapping):
        if widths is None:
            raise UnitError("a predicate unit selection needs the model's sites to choose from")
        sel = {}
        for name, w in widths.items():
            idx = tuple(i for i in range(w) if spec(Unit(name, i)))
            if idx:
                sel[name] = idx
        units = UnitSet(sel)
    else:
        units = _collect(_items(spec, widths))
    return units.resolve(widths) if widths is not None else units


def _collect(items: Iterable[tuple[str, tuple[int, ...] | None, tuple[int, ...] | None]]) -> UnitSet:
    sel: dict[str, tuple[int, ...] | None] = {}
    pos: dict[str, tuple[int, ...] | None] = {}
    for layer, idx, where in items:
        if layer in pos and pos[layer] != where:
            raise UnitError(
                f"layer {layer!r} is named at different positions ({_pos_text(pos[layer])} and "
                f"{_pos_text(where)}) in one unit set; expected one set of positions per layer "
                "(delete the others in a separate lesion)"
            )
        pos[layer] = where
        if idx is ALL or sel.get(layer, ()) is ALL:
            sel[layer] = ALL
        else:
            sel[layer] = tuple(sorted(set(sel.get(layer, ())) | set(idx)))
    return UnitSet(sel, {k: v for k, v in pos.items() if v is not None})


def _pos_text(p: tuple[int, ...] | None) -> str:
    return "every position" if p is None else "@" + ",".join(map(str, p))


def unknown_layer(layer: str, sites: Widths | Sequence[Any]) -> SiteError:
    """The error for a layer name that is not a site, with the closest names and the valid sites."""
    widths = as_widths(sites)
    close = difflib.get_close_matches(layer[:200], list(widths), n=3, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else ""
    valid = ", ".join(f"{n} ({w})" for n, w in widths.items()) or "none"
    return SiteError(f"unknown layer {_clip(layer)!r}{hint}; layers with units: {valid}")


def _items(spec, widths) -> Iterator[tuple[str, tuple[int, ...] | None, tuple[int, ...] | None]]:
    if isinstance(spec, str):
        layer, sel, where = _split(spec)
        yield layer, _parse_indices(sel, spec, _limit(layer, widths), layer), where
    elif isinstance(spec, Unit):
        yield spec.layer, (_check_int(spec.index, spec.layer),), _one_pos(spec.position)
    elif isinstance(spec, Mapping):
        for layer, idx in spec.items():
            if idx is ALL or (isinstance(idx, str) and idx == "*"):
                yield str(layer), ALL, None
            elif _is_index(idx):
                yield str(layer), (_check_int(idx, layer),), None
            else:
                yield str(layer), _indices(idx, layer, _limit(str(layer), widths)), None
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        yield spec[0], (_check_int(spec[1], spec[0]),), None
    elif isinstance(spec, Iterable):
        for item in spec:
            yield from _items(item, widths)
    else:
        raise UnitError(
            f"cannot read units from {type(spec).__name__}; expected 'layer:17', 'layer:0-9', "
            "'layer:*', a Unit, a (layer, index) pair, a list of these or a mapping"
        )


def _one_pos(p: int | None) -> tuple[int, ...] | None:
    return None if p is None else (int(p),)


def _is_index(i) -> bool:
    return hasattr(i, "__index__") and getattr(i, "ndim", 0) == 0


def _indices(idx, layer: str, limit: int) -> tuple[int, ...]:
    """Indices from a list, range or integer array, checked one by one without building more than given."""
    if getattr(idx, "ndim", 1) != 1:
        raise UnitError(
            f"unit indices for layer {_clip(layer)!r} have shape {tuple(idx.shape)}; expected a flat list of "
            "indices"
        )
    if isinstance(idx, float | str | bytes):
        raise UnitError(
            f"unit indices for layer {_clip(layer)!r} are {_clip(repr(idx))}; expected an index, a list of "
            "indices, '*' or None"
        )
    try:
        values = idx.tolist() if hasattr(idx, "tolist") else idx
        out = []
        for i in values:
            out.append(_check_int(i, layer))
            if out[-1] >= limit:
                raise UnitError(
                    f"unit index {out[-1]} for layer {layer!r} is out of range; expected < {limit}"
                )
    except TypeError:
        raise UnitError(
            f"unit indices for layer {_clip(layer)!r} are a {type(idx).__name__}; expected an index, "
            "a list of indices, '*' or None"
        ) from None
    return tuple(sorted(set(out)))


def _check_int(i, layer) -> int:
    if isinstance(i, bool) or not _is_index(i):
        raise UnitError(f"unit index for layer {_clip(layer)!r} must be an integer, got {_clip(repr(i))}")
    i = int(i)
    if i < 0:
        raise UnitError(f"unit index {i} for layer {layer!r} is negative; expected 0 or more")
    return i


def _beyond(layer: str, i: int, limit: int) -> UnitError:
    if limit == MAX_UNITS:
        return UnitError(
            f"unit index {i} for layer {_clip(layer)!r} is beyond lesion's limit of {MAX_UNITS:,} units per "
            "layer; expected a smaller index (pass the model's sites to check indices against their widths)"
        )
    return UnitError(
        f"unit index {i} out of range for layer {_clip(layer)!r}: expected 0..{limit - 1} ({limit} units)"
    )


def _limit(layer: str, widths: Widths | None) -> int:
    if widths is None:
        return MAX_UNITS
    if layer not in widths:
        raise unknown_layer(layer, widths)
    return widths[layer]


def _split(text: str) -> tuple[str, str, tuple[int, ...] | None]:
    layer, colon, sel = text.strip().rpartition(":")
    sel, at, where = sel.partition("@")
    if not colon or not layer or not sel.strip() or (at and not where.strip()):
        raise UnitError(
            f"cannot parse unit address {_clip(text)!r}; expected 'layer:17', 'layer:0-9', 'layer:*' or "
            "'layer:17@-1' with layer a name from model.named_modules()"
        )
    return layer, sel.strip(), _parse_positions(where, text) if at else None


def _parse_positions(where: str, text: str) -> tuple[int, ...]:
    out: set[int] = set()
    for part in where.split(","):
        part = part.strip()
        if _POS.fullmatch(part):
            out.add(int(part))
            continue
        a, dash, b = part.partition("-")
        if (
            not (dash and _INT.fullmatch(a) and _INT.fullmatch(b))
            or int(b) < int(a)
            or int(b) - int(a) > 1 << 16
        ):
            raise UnitError(f"cannot parse positions {where!r} in {text!r}; expected e.g. @-1, @0,5 or @2-4")
        out.update(range(int(a), int(b) + 1))
    return tuple(sorted(out))


def _parse_indices(sel: str, text: str, limit: int, layer: str = "") -> tuple[int, ...] | None:
    """Indices of ``0-9,12`` or ``*``; every range is checked against ``limit`` before it is expanded."""
    if sel == "*":
        return ALL
    parts = []
    for part in sel.split(","):
        a, dash, b = part.strip().removeprefix("head").partition("-")  # "attn:head5" = "attn:5"
        b = b.removeprefix("head")
        if any(len(v) > 15 and v.isdigit() for v in (a, b)):
            raise UnitError(
                f"unit index in {_clip(text)!r} is out of range of any layer; expected at most 15 digits"
            )
        if not _INT.fullmatch(a) or (dash and not _INT.fullmatch(b)):
            raise UnitError(
                f"cannot parse unit indices {_clip(sel)!r} in {_clip(text)!r}; expected ASCII digits, e.g. "
                "17, 0-9, 1,4,7 or *"
            )
        lo, hi = int(a), int(b) if dash else int(a)
        if hi < lo:
            raise UnitError(
                f"bad unit range {_clip(part.strip())!r} in {_clip(text)!r}; expected 0 <= lo <= hi"
            )
        if hi >= limit:
            raise _beyond(layer, hi, limit)
        parts.append((lo, hi))
    merged: list[list[int]] = []
    for lo, hi in sorted(parts):  # overlapping ranges merged first: the set below is at most ``limit``
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple(i for lo, hi in merged for i in range(lo, hi + 1))


def fold(indices) -> str:
    """Indices with runs folded into ranges: ``fold([0, 1, 2, 3, 7]) == "0-3,7"`` (the one place ranges
    are folded; the explorer's page has its own copy in JavaScript)."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def compact(selection: UnitSet) -> list[str]:
    """Unit addresses with runs folded into ranges, one string per layer: ``['fc1:0-9,17', 'fc2:5']``.

    >>> compact(parse_units(["fc1:0-3", "fc1:7", "fc2:5"]))
    ['fc1:0-3,7', 'fc2:5']
    """
    return [f"{layer}:{fold(idx)}" for layer, idx in selection.items() if idx]
