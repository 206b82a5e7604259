"""Interventions: pure functions ``tensor -> tensor`` on a site's activations.

Each takes the batched activations ``h`` and the unit axis ``dim`` and returns a new tensor; nothing is
modified in place. Lesioning applies them with forward hooks (``lesion.core.lesions``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lesion.errors import LesionError, UnitError


def _index(h: torch.Tensor, units: Sequence[int] | torch.Tensor, dim: int) -> torch.Tensor:
    idx = torch.as_tensor(units, dtype=torch.long, device=h.device).reshape(-1)
    width = h.shape[dim]
    if idx.numel() and (int(idx.max()) >= width or int(idx.min()) < 0):
        bad = int(idx.max()) if int(idx.max()) >= width else int(idx.min())
        raise UnitError(f"unit index {bad} out of range: expected 0..{width - 1} ({width} units)")
    return idx


def _along(values: torch.Tensor, h: torch.Tensor, dim: int) -> torch.Tensor:
    """Reshape a per-unit vector so it broadcasts along ``dim`` of ``h``."""
    shape = [1] * h.ndim
    shape[dim] = -1
    return values.to(device=h.device, dtype=h.dtype).reshape(shape)


def clamp(
    h: torch.Tensor, units: Sequence[int] | torch.Tensor, value: float | torch.Tensor, dim: int = 1
) -> torch.Tensor:
    """Clamp ``units`` to ``value``: a scalar, or one value per listed unit (e.g. their means)."""
    dim = dim % h.ndim
    idx = _index(h, units, dim)
    out = h.clone()
    if isinstance(value, torch.Tensor) and value.numel() > 1:
        if value.numel() != idx.numel():
            raise LesionError(
                f"got {value.numel()} clamp values for {idx.numel()} units; expected one per unit"
            )
        fill = _along(value, h, dim).expand(*[idx.numel() if d == dim else s for d, s in enumerate(h.shape)])
        return out.index_copy_(dim, idx, fill.contiguous())
    return out.index_fill_(dim, idx, float(value))


def zero(h: torch.Tensor, units: Sequence[int] | torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Delete ``units``: clamp their activity to 0 (the paper's default ablation)."""
    return clamp(h, units, 0.0, dim)


def mask(h: torch.Tensor, keep: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Multiply by a 0/1 ``keep`` vector over units: the fast form of zero-ablation."""
    return h * _along(keep, h, dim % h.ndim)


def noise(
    h: torch.Tensor,
    sd: torch.Tensor,
    scale: float,
    *,
    dim: int = 1,
    scaling: str = "sd",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add zero-mean Gaussian noise to every unit.

    ``scaling="sd"``: noise SD = scale x the unit's SD; ``"variance"``: noise variance = scale x the
    unit's variance. ``sd`` holds one SD per unit. Noise is drawn on the CPU from ``generator`` so the
    same seed gives the same numbers on every device.
    """
    if scaling == "sd":
        noise_sd = scale * sd
    elif scaling == "variance":
        noise_sd = (scale * sd.double() ** 2).sqrt()
    else:
        raise LesionError(f"unknown noise scaling {scaling!r}; expected 'sd' or 'variance'")
    dim = dim % h.ndim
    if sd.numel() != h.shape[dim]:
        raise LesionError(f"got {sd.numel()} unit SDs for a site of width {h.shape[dim]}")
    eps = torch.randn(h.shape, generator=generator, dtype=torch.float32).to(h.device, h.dtype)
    return h + eps * _along(noise_sd, h, dim)


def remove_directions(h: torch.Tensor, q: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Project out the orthonormal columns of ``q`` (units, k): h <- h - Q Q^T h along the unit axis."""
    dim = dim % h.ndim
    if q.ndim == 1:
        q = q[:, None]
    if q.shape[0] != h.shape[dim]:
        raise LesionError(f"directions have {q.shape[0]} entries; the site has {h.shape[dim]} units")
    q = q.to(device=h.device, dtype=h.dtype)
    hm = h.movedim(dim, -1)  # (..., units)
    return (hm - (hm @ q) @ q.T).movedim(-1, dim)


def random_directions(width: int, k: int, *, seed: int = 0) -> torch.Tensor:
    """``k`` random orthonormal directions in a ``width``-dim space, as columns (width, k): the control."""
    if not 0 < k <= width:
        raise LesionError(f"cannot draw {k} orthonormal directions in {width} dims; expected 1..{width}")
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(width, k, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # unique: positive diagonal of R
    return q.float()


def unit_directions(width: int, units: Sequence[int]) -> torch.Tensor:
    """Axis-aligned directions: removing them equals zero-ablating ``units``."""
    q = torch.zeros(width, len(units))
    q[list(units), range(len(units))] = 1.0
    return q
