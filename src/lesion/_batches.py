"""Turn what a user passes as data into validated (x, y) batches on the model's device."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from lesion.errors import DataError

Data = Any  # a (inputs, labels) pair of tensors/arrays, a DataLoader, or any iterable of such pairs


def batches(data: Data, *, batch_size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield validated ``(x, y)`` batches: consistent input shapes, integer labels of matching length.

    Raises DataError for a malformed batch and for data that yields no example at all.
    """
    shape = None
    n = 0
    for k, item in enumerate(_raw(data, batch_size)):
        x, y = _pair(item, k)
        if x.ndim == 0 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(
                f"batch {k}: inputs of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)}; "
                "expected inputs (batch, ...) and labels (batch,) of the same length"
            )
        if shape is None:
            shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != shape:
            raise DataError(
                f"batch {k}: inputs shaped {tuple(x.shape[1:])} per example; earlier batches had {shape}"
            )
        if y.numel() and int(y.min()) < 0:
            raise DataError(f"batch {k}: label {int(y.min())} is negative; expected class indices >= 0")
        n += x.shape[0]
        if x.shape[0]:
            yield x, y
    if n == 0:
        raise DataError("the data holds no examples; expected at least one (inputs, labels) batch")


def reusable(data: Data) -> Data:
    """Data that can be passed over more than once: a one-shot iterator is read into a list."""
    return list(data) if isinstance(data, Iterator) else data


def check_labels(y: torch.Tensor, n_classes: int, k: int | None = None) -> None:
    if y.numel() and int(y.max()) >= n_classes:
        where = f"batch {k}: " if k is not None else ""
        raise DataError(
            f"{where}label {int(y.max())} is out of range; the model has {n_classes} outputs, "
            f"expected labels 0..{n_classes - 1}"
        )


def _raw(data: Data, batch_size: int) -> Iterable:
    if isinstance(data, tuple | list) and len(data) == 2 and not _is_pair_list(data):
        x, y = (_tensor(v, "inputs" if i == 0 else "labels") for i, v in enumerate(data))
        if x.ndim == 0 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(
                f"inputs of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)}; "
                "expected inputs (n, ...) and labels (n,) of the same length"
            )
        return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size))
    if isinstance(data, Iterable):
        return data
    raise DataError(
        f"cannot read data from {type(data).__name__}; expected an (inputs, labels) pair of tensors, "
        "a DataLoader, or an iterable of (inputs, labels) batches"
    )


def _is_pair_list(data) -> bool:
    """True when ``data`` is a list of two (x, y) batches rather than one (inputs, labels) pair."""
    return all(isinstance(v, tuple | list) for v in data)


def _pair(item, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(item, dict):
        item = (item.get("x", item.get("input")), item.get("y", item.get("label")))
    if not isinstance(item, tuple | list) or len(item) < 2:
        raise DataError(f"batch {k} is a {type(item).__name__}; expected an (inputs, labels) pair")
    return _tensor(item[0], "inputs", k), _labels(item[1], k)


def _tensor(v, what: str, k: int | None = None) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        v = torch.from_numpy(v)
    if not isinstance(v, torch.Tensor):
        where = f"batch {k}: " if k is not None else ""
        raise DataError(f"{where}{what} are a {type(v).__name__}; expected a tensor or numpy array")
    return v


def _labels(v, k: int) -> torch.Tensor:
    y = _tensor(v, "labels", k)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"batch {k}: labels have dtype {y.dtype}; expected integer class indices")
    return y.long()
