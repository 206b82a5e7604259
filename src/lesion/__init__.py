"""lesion: delete neurons and feature maps of a trained PyTorch model and measure what that does.

The public surface: a sweep of lesions (``sweep``, ``ablate``, ``Lesion``, ``Unit``, ``find_sites``), the
paper's analyses (``unit_table``, ``ablation_curves``, ``noise_curves``...), the role of every unit
(``roles``), and two namespaces,
``lesion.metrics`` and ``lesion.replacements``; errors in ``lesion.errors``. Everything else lives in
the package that defines it (``lesion.analyses``, ``lesion.core``...).

>>> import torch, lesion
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
>>> [str(s) for s in lesion.find_sites(net, torch.zeros(1, 4))]
['1 (3)']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lesion.util import VERSION as __version__  # noqa: F401  (public)

if TYPE_CHECKING:
    from lesion import errors, metrics, replacements
    from lesion.analyses.attribution import attribution_table
    from lesion.analyses.direct import direct_effects
    from lesion.analyses.evaluation import evaluate
    from lesion.analyses.paper import (
        ablation_curves,
        curve_auc,
        noise_curves,
        per_class_drops,
        selectivity_vs_importance,
        unit_table,
    )
    from lesion.analyses.sweep import sweep
    from lesion.core.lesions import Lesion, ablate, ablate_directions, add_noise
    from lesion.core.sites import Site, find_sites
    from lesion.core.stats import collect_stats
    from lesion.core.units import Unit, parse_units
    from lesion.errors import LesionError
    from lesion.roles import roles

__all__ = [
    "Lesion",
    "LesionError",
    "Site",
    "Unit",
    "ablate",
    "ablate_directions",
    "ablation_curves",
    "add_noise",
    "attribution_table",
    "collect_stats",
    "curve_auc",
    "direct_effects",
    "errors",
    "evaluate",
    "find_sites",
    "metrics",
    "noise_curves",
    "parse_units",
    "per_class_drops",
    "replacements",
    "roles",
    "selectivity_vs_importance",
    "sweep",
    "unit_table",
]

# Public name -> the module that defines it, imported on first access (PEP 562), so that light entry
# points such as ``lesion --help`` do not pay for torch.
_SOURCES = {
    "lesion.analyses.paper": (
        "ablation_curves", "curve_auc", "noise_curves", "per_class_drops", "selectivity_vs_importance",
        "unit_table",
    ),
    "lesion.analyses.attribution": ("attribution_table",),
    "lesion.analyses.direct": ("direct_effects",),
    "lesion.analyses.evaluation": ("evaluate",),
    "lesion.analyses.sweep": ("sweep",),
    "lesion.core.lesions": ("Lesion", "ablate", "ablate_directions", "add_noise"),
    "lesion.core.sites": ("Site", "find_sites"),
    "lesion.core.stats": ("collect_stats",),
    "lesion.core.units": ("Unit", "parse_units"),
    "lesion.errors": ("LesionError",),
    "lesion.roles": ("roles",),  # the package, callable: lesion.roles(model, data) -> one row per unit
}  # fmt: skip
_LOCATION = {name: module for module, names in _SOURCES.items() for name in names}
_NAMESPACES = ("errors", "metrics", "replacements")


def __getattr__(name: str):
    module = _LOCATION.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in _NAMESPACES:
        value = importlib.import_module(f"lesion.{name}")
    else:
        raise AttributeError(
            f"module 'lesion' has no attribute {name!r}; the public names are {', '.join(__all__)} "
            "(metrics in lesion.metrics, replacements in lesion.replacements, errors in lesion.errors)"
        )
    globals()[name] = value  # cache: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
