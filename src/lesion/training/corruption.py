"""Label corruption, as in the paper's memorisation study: a seeded fraction of training labels is
shuffled among itself (the label histogram is kept exactly) or replaced by uniform random labels.

>>> import torch
>>> y = torch.arange(10) % 3
>>> z, mask = corrupt_labels(y, 0.5, seed=0, return_mask=True)
>>> int(mask.sum()), torch.equal(torch.bincount(z), torch.bincount(y)), torch.equal(z[~mask], y[~mask])
(5, True, True)
"""

from __future__ import annotations

import torch

from lesion.errors import DataError, LesionError

MODES = ("shuffle", "random")


def corrupt_labels(
    y: torch.Tensor,
    fraction: float,
    *,
    mode: str = "shuffle",
    n_classes: int | None = None,
    seed: int = 0,
    return_mask: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """A corrupted copy of the labels ``y`` (n,); ``y`` itself is left alone.

    ``round(fraction * n)`` examples are chosen with a generator seeded by ``seed``. ``mode="shuffle"``
    permutes their labels among themselves (the histogram of ``y`` is kept exactly; a chosen example
    may draw its own label back, as in the paper); ``mode="random"`` gives each a label drawn
    uniformly from ``0..n_classes - 1`` (default ``n_classes``: ``y.max() + 1``). With
    ``return_mask`` the boolean mask (n,) of chosen examples is returned too.
    """
    y = _check_labels(y)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
        raise LesionError(f"fraction={fraction!r}; expected a number in [0, 1]")
    if mode not in MODES:
        raise LesionError(f"mode={mode!r}; expected one of {', '.join(MODES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LesionError(f"seed={seed!r}; expected a non-negative int")
    classes = _n_classes(y, n_classes)
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    chosen = torch.randperm(n, generator=g)[: round(fraction * n)]  # (k,) indices
    out = y.clone()
    if mode == "shuffle":
        out[chosen] = y[chosen[torch.randperm(len(chosen), generator=g)]]
    else:
        out[chosen] = torch.randint(classes, (len(chosen),), generator=g).to(y.device)
    if not return_mask:
        return out
    mask = torch.zeros(n, dtype=torch.bool, device=y.device)
    mask[chosen] = True
    return out, mask


def _check_labels(y) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise DataError(f"labels are a {type(y).__name__}; expected a 1-d integer tensor")
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"labels of dtype {y.dtype} and shape {tuple(y.shape)}; expected 1-d integer labels")
    if y.numel() and int(y.min()) < 0:
        raise DataError(f"label {int(y.min())} is negative; expected class indices >= 0")
    return y


def _n_classes(y: torch.Tensor, n_classes: int | None) -> int:
    seen = int(y.max()) + 1 if y.numel() else 0
    if n_classes is None:
        return max(seen, 1)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < max(seen, 1):
        raise LesionError(
            f"n_classes={n_classes!r}; expected an int >= {max(seen, 1)} (the labels go to {seen - 1})"
        )
    return n_classes


__all__ = ["MODES", "corrupt_labels"]
