"""Turn raw arrays into a ``Dataset``: a seeded stratified split and normalisation by the training split."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from lesion.data._dataset import Dataset
from lesion.data._sources import Raw
from lesion.errors import DataError


def assemble(
    name: str,
    raw: Raw,
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None,
    seed: int,
    test_fraction: float,
) -> Dataset:
    """Split (when there is no official test set) and normalise ``raw`` into a ``Dataset``."""
    x_train, y_train, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if x_test is None or y_test is None:
        idx_train, idx_test = _split(name, y_train, seed, test_fraction)
        x_train, x_test, y_train, y_test = (
            x_train[idx_train],
            x_train[idx_test],
            y_train[idx_train],
            y_train[idx_test],
        )
    x_train, x_test = _unit_range(x_train), _unit_range(x_test)
    if norm is None:  # statistics of the training split only, so the test set leaks nothing
        norm = _channel_stats(x_train)
    return Dataset(
        name=name,
        x_train=_normalise(x_train, *norm),
        y_train=torch.from_numpy(y_train.astype(np.int64)),
        x_test=_normalise(x_test, *norm),
        y_test=torch.from_numpy(y_test.astype(np.int64)),
        classes=raw.classes,
    )


def check_split_args(seed: int, test_fraction: float) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float):
        raise DataError(f"test_fraction={test_fraction!r}; expected a number strictly between 0 and 1")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction!r}; expected a number strictly between 0 and 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DataError(f"seed={seed!r}; expected an int in 0..2**32-1")


def _split(name: str, y: np.ndarray, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded train/test split that keeps every class's share in both parts."""
    try:
        return train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed)
    except ValueError as e:  # too few examples of some class for a stratified split
        counts = np.bincount(y)
        raise DataError(
            f"{name}: cannot split {len(y)} examples with test_fraction={test_fraction} keeping every "
            f"class in both parts ({e}); the smallest class has {counts[counts > 0].min()}; "
            "expected at least 2 per class and at least one per class in each part"
        ) from None


def _unit_range(x: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] as a new float array: uint8 0..255 becomes float32, floats keep their dtype."""
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out /= 255.0
        return out
    return x.astype(np.float64 if x.dtype == np.float64 else np.float32)


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``x`` (N, C, H, W)."""
    flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)  # (C, N * H * W); flat inputs: (D, N)
    return tuple(map(float, flat.mean(axis=1))), tuple(map(float, flat.std(axis=1)))


def _normalise(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(N, C, ...) floats, which this modifies -> normalised float32 tensor (channels on axis 1)."""
    shape = (1, -1, *[1] * (x.ndim - 2))
    x -= np.asarray(mean, dtype=x.dtype).reshape(shape)
    x /= np.where(np.asarray(std) > 0, np.asarray(std), 1.0).astype(x.dtype).reshape(shape)
    return torch.from_numpy(x.astype(np.float32, copy=False)).contiguous()
