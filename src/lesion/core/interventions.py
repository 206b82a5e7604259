"""Interventions on a whole site: pure functions ``tensor -> tensor`` on its activations.

Each takes the batched activations ``h`` and the unit axis ``dim`` and returns a new tensor; nothing is
modified in place. The ``Noise`` and ``Directions`` replacements (``lesion.core.replacements``) apply
them; per-unit replacements are applied by ``lesion.core.lesions.replace_units``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lesion.errors import LesionError
from lesion.util import Scaling


def _along(values: torch.Tensor, h: torch.Tensor, dim: int) -> torch.Tensor:
    """Reshape a per-unit vector so it broadcasts along ``dim`` of ``h``."""
    shape = [1] * h.ndim
    shape[dim] = -1
    return values.to(device=h.device, dtype=h.dtype).reshape(shape)


def noise(
    h: torch.Tensor,
    sd: torch.Tensor,
    scale: float,
    *,
    dim: int = 1,
    scaling: Scaling = "sd",
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
