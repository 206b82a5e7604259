"""The user's own data: arrays, ``.npz`` files, as a ``Dataset`` with a seeded stratified split.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(40, 3))
>>> d = from_arrays(x, np.arange(40) % 2)
>>> d.input_shape, d.n_classes, len(d.y_train), len(d.y_test)
((3,), 2, 32, 8)
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lesion.data._assemble import assemble, check_split_args
from lesion.data._dataset import Dataset
from lesion.data._formats import MAX_DATA_BYTES
from lesion.data._sources import Raw
from lesion.errors import DataError


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
    n_classes = int(max(ys.max(), -1 if yt is None else yt.max())) + 1
    names = tuple(str(c) for c in classes) if classes is not None else tuple(str(c) for c in range(n_classes))
    if len(names) < n_classes:
        raise DataError(f"classes names {len(names)} classes; the labels go up to {n_classes - 1}")
    raw = Raw(xs, ys, xt, yt, names)
    data = assemble(name, raw, None if normalise else _identity(xs.shape[1]), seed, float(test_fraction))
    return data


def from_npz(path: str | Path, **kwargs) -> Dataset:
    """A ``Dataset`` from an ``.npz`` file holding ``x`` and ``y`` (and optionally ``x_test``, ``y_test``,
    ``classes``); read without pickle."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{str(path)!r} is not a file; expected an .npz with arrays x and y")
    try:
        with zipfile.ZipFile(path) as z:
            size = sum(i.file_size for i in z.infolist())
        if size > MAX_DATA_BYTES:  # the members' sizes from the zip directory, before inflating any
            raise DataError(f"{path.name}: its arrays take {size} bytes; at most {MAX_DATA_BYTES} are read")
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path.name}: not a readable .npz without pickled objects ({exc})") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path.name} holds {sorted(arrays)}; expected arrays named x and y")
    extra = {k: arrays[k] for k in ("x_test", "y_test") if k in arrays}
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    return from_arrays(arrays["x"], arrays["y"], classes=classes, name=path.stem, **extra, **kwargs)


def _array(v, what: str) -> np.ndarray:
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if a.ndim < 2 or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise DataError(f"{what} has dtype {a.dtype} and shape {a.shape}; expected numbers of shape (N, ...)")
    if not np.isfinite(a).all():
        raise DataError(f"{what} holds NaN or infinite values; expected finite numbers")
    return a if a.dtype in (np.uint8, np.float32, np.float64) else a.astype(np.float32)


def _labels(v, what: str) -> np.ndarray:
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{what} has dtype {a.dtype} and shape {a.shape}; expected integer class labels (N,)")
    if a.size and a.min() < 0:
        raise DataError(f"{what} holds label {a.min()}; expected class indices >= 0")
    return a.astype(np.int64)


def _identity(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (0.0,) * channels, (1.0,) * channels
