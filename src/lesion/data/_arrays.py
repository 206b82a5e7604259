"""The user's own data: arrays, ``.npz`` files, as a ``Dataset`` with a seeded stratified split.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(40, 3))
>>> d = from_arrays(x, np.arange(40) % 2)
>>> d.input_shape, d.n_classes, len(d.y_train), len(d.y_test)
((3,), 2, 32, 8)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lesion.data._assemble import assemble, check_split_args
from lesion.data._dataset import Dataset
from lesion.data._formats import MAX_DATA_BYTES
from lesion.data._npy import read_npz
from lesion.data._sources import Raw
from lesion.errors import DataError, LesionNote
from lesion.util.files import check_regular

MAX_CLASSES = 1 << 16  # distinct labels of one dataset


def from_arrays(
    x,
    y,
    *,
    x_test=None,
    y_test=None,
    classes: Sequence[str] | None = None,
    name: str = "arrays",
    seed: int = 0,
    test_fraction: float = 0.2,
    normalise: bool = True,
) -> Dataset:
    """A ``Dataset`` from inputs ``x`` (N, ...) and integer labels ``y`` (N,): numpy arrays or tensors.

    Without ``x_test``/``y_test`` a seeded split keeps every class's share in both parts. uint8 inputs
    are scaled to [0, 1]; with ``normalise`` every channel (axis 1: image channels, or features of flat
    (N, D) inputs) is standardised with the training split's mean and SD, so the test set leaks nothing.
    """
    check_split_args(seed, test_fraction)
    xs, ys = _array(x, "x"), _labels(y, "y")
    if len(xs) != len(ys):
        raise DataError(f"x has {len(xs)} examples and y {len(ys)}; expected one label per example")
    xt = None if x_test is None else _array(x_test, "x_test")
    yt = None if y_test is None else _labels(y_test, "y_test")
    if (xt is None) != (yt is None):
        raise DataError("pass both x_test and y_test, or neither (a seeded split is made then)")
    if classes is None:
        ys, yt, names = _distinct(ys, yt)
    else:
        names = tuple(str(c) for c in classes)
        top = int(max(ys.max(), -1 if yt is None else yt.max()))
        if len(names) <= top:
            raise DataError(f"classes names {len(names)} classes; the labels go up to {top}")
    raw = Raw(xs, ys, xt, yt, names)
    data = assemble(name, raw, None if normalise else _identity(xs.shape[1]), seed, float(test_fraction))
    return data


def from_npz(path: str | Path, **kwargs) -> Dataset:
    """A ``Dataset`` from an ``.npz`` file holding ``x`` and ``y`` (and optionally ``x_test``, ``y_test``,
    ``classes``); read without pickle."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{str(path)!r} is not a file; expected an .npz with arrays x and y")
    check_regular(path, DataError, ".npz file")
    arrays = read_npz(path, path.name, MAX_DATA_BYTES)  # every header checked before it is inflated
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path.name} holds {sorted(arrays)}; expected arrays named x and y")
    extra = {k: arrays[k] for k in ("x_test", "y_test") if k in arrays}
    if "classes" in arrays and (arrays["classes"].ndim != 1 or len(arrays["classes"]) > MAX_CLASSES):
        raise DataError(f"{path.name}: classes has shape {arrays['classes'].shape}; expected at most "
                        f"{MAX_CLASSES:,} names")  # fmt: skip
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    return from_arrays(arrays["x"], arrays["y"], classes=classes, name=path.stem, **extra, **kwargs)


def _array(v, what: str) -> np.ndarray:
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if a.ndim < 2 or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise DataError(f"{what} has dtype {a.dtype} and shape {a.shape}; expected numbers of shape (N, ...)")
    if a.dtype.kind == "c":
        raise DataError(f"{what} has complex dtype {a.dtype}; expected real numbers (pass x.real or abs(x))")
    if a.size == 0:
        raise DataError(f"{what} has shape {a.shape}; expected at least one example of at least one value")
    if not np.isfinite(a).all():
        raise DataError(f"{what} holds NaN or infinite values; expected finite numbers")
    return a if a.dtype in (np.uint8, np.float32, np.float64) else a.astype(np.float32)


def _labels(v, what: str) -> np.ndarray:
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{what} has dtype {a.dtype} and shape {a.shape}; expected integer class labels (N,)")
    if a.size == 0:
        raise DataError(f"{what} holds no labels; expected one integer label per example")
    if a.size and a.min() < 0:
        raise DataError(f"{what} holds label {a.min()}; expected class indices >= 0")
    return a.astype(np.int64)


def _distinct(ys: np.ndarray, yt: np.ndarray | None):
    """Labels as indices of their distinct values, named by them: labels 0..K-1 stay as they are; a
    label of 10^9 costs one class, not 10^9 (with a LesionNote, since the indices change)."""
    values = np.unique(ys if yt is None else np.concatenate([ys, yt]))  # sorted
    if len(values) > MAX_CLASSES:
        raise DataError(
            f"the labels take {len(values):,} distinct values; expected at most {MAX_CLASSES:,} classes"
        )
    names = tuple(str(v) for v in values)
    if values[-1] == len(values) - 1:  # 0..K-1, every class present
        return ys, yt, names
    warnings.warn(
        f"the labels take {len(values):,} distinct values between {values[0]} and {values[-1]}; they are "
        f"classes 0..{len(values) - 1}, named by their values ({', '.join(names[:5])}"
        f"{', ...' if len(names) > 5 else ''})",
        LesionNote,
        stacklevel=3,
    )
    test = None if yt is None else np.searchsorted(values, yt).astype(np.int64)
    return np.searchsorted(values, ys).astype(np.int64), test, names


def _identity(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (0.0,) * channels, (1.0,) * channels
