"""The in-memory ``Dataset`` and the loader over it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from lesion.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """A split classification dataset held in memory, already normalised.

    Inputs are float32 ``(N, C, H, W)`` images (or any ``(N, ...)`` from ``from_arrays``), labels int64
    ``(N,)`` in ``0..n_classes - 1``. ``load_dataset``
    caches and shares instances, so treat the tensors as read-only: corrupt labels through
    ``with_train_labels`` (which returns a copy), never in place.
    """

    name: str
    x_train: torch.Tensor  # (N, C, H, W) float32
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor  # (M, C, H, W) float32
    y_test: torch.Tensor  # (M,) int64
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            _check_split(self, split)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(C, H, W)``."""
        return tuple(self.x_train.shape[1:])

    def with_train_labels(self, y: torch.Tensor) -> Dataset:
        """A copy whose training labels are ``y`` (e.g. partly randomised); test labels stay true."""
        y = torch.as_tensor(y)
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise DataError(f"train labels have dtype {y.dtype}; expected integer class indices")
        return dataclasses.replace(self, y_train=y.to(torch.int64))

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, classes={self.n_classes})"
        )


def _check_split(d: Dataset, split: str) -> None:
    x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
    if x.dtype != torch.float32 or x.ndim < 2:
        raise DataError(
            f"{d.name}: x_{split} is {x.dtype} of shape {tuple(x.shape)}; expected float32 (N, C, H, W) "
            "or (N, ...)"
        )
    if y.dtype != torch.int64 or y.shape != (x.shape[0],):
        raise DataError(
            f"{d.name}: y_{split} is {y.dtype} of shape {tuple(y.shape)}; "
            f"expected int64 of shape ({x.shape[0]},) to match x_{split}"
        )
    if x.shape[1:] != d.x_train.shape[1:]:
        raise DataError(
            f"{d.name}: test images are {tuple(x.shape[1:])}; train images are {tuple(d.x_train.shape[1:])}"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(d.classes)):
        raise DataError(
            f"{d.name}: y_{split} holds labels {int(y.min())}..{int(y.max())}; "
            f"expected 0..{len(d.classes) - 1} for {len(d.classes)} classes"
        )


def make_loader(
    x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """A DataLoader of ``(x, y)`` batches; with ``shuffle`` the order is drawn from a generator seeded
    with ``seed``: each pass (epoch) has a new order, and two loaders with the same seed yield the same
    sequence of orders.

    Batches are sliced from the tensors whole (a batch sampler, no per-example collation), which is
    many times faster than the default loader; hence ``loader.batch_size`` is None.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r}; expected a positive int")
    if x.ndim == 0 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(
            f"inputs of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)}; "
            "expected inputs (n, ...) and labels (n,) of the same length"
        )
    ds = TensorDataset(x, y)
    if shuffle:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(ds)
    return DataLoader(ds, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=False))
