"""lesion: delete neurons and feature maps of a trained PyTorch model and measure what that does.

>>> import torch, lesion
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
>>> [str(s) for s in lesion.find_sites(net, torch.zeros(1, 4))]
['1 (3)']
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lesion.analyses.attribution import attribution_table, plot_attribution
    from lesion.analyses.direct import direct_effects, plot_direct
    from lesion.analyses.evaluation import Evaluation, evaluate
    from lesion.analyses.measures import auc, correlate, mutual_information, selectivity_index
    from lesion.analyses.paper import (
        ablation_curves,
        curve_auc,
        noise_curves,
        per_class_drops,
        selectivity_vs_importance,
        unit_table,
    )
    from lesion.analyses.sweep import sweep
    from lesion.core.batch import Batch
    from lesion.core.lesions import Lesion, ablate, ablate_directions, add_noise, hooks
    from lesion.core.metric import KL, MSE, Classification, LogitDiff, Metric, NextTokenLoss, Scalar
    from lesion.core.replacements import (
        Constant,
        Directions,
        Mean,
        Noise,
        Patch,
        PositionalMean,
        Replacement,
        Resample,
        Zero,
    )
    from lesion.core.sites import Site, find_sites
    from lesion.core.stats import collect_stats
    from lesion.core.units import Unit, UnitSet, parse_units
    from lesion.engine.optimal import Optimal
    from lesion.errors import DataError, LesionError, ModelFileError, SiteError, UnitError
    from lesion.roles import roles

from lesion.util import VERSION as __version__  # noqa: F401  (public)

__all__ = [
    "KL",
    "MSE",
    "Batch",
    "Classification",
    "Constant",
    "DataError",
    "Directions",
    "Evaluation",
    "Lesion",
    "LesionError",
    "LogitDiff",
    "Mean",
    "Metric",
    "ModelFileError",
    "NextTokenLoss",
    "Noise",
    "Optimal",
    "Patch",
    "PositionalMean",
    "Replacement",
    "Resample",
    "Scalar",
    "Site",
    "SiteError",
    "Unit",
    "UnitError",
    "UnitSet",
    "Zero",
    "ablate",
    "ablate_directions",
    "ablation_curves",
    "add_noise",
    "attribution_table",
    "auc",
    "collect_stats",
    "correlate",
    "curve_auc",
    "direct_effects",
    "direction_curves",
    "direction_information",
    "evaluate",
    "find_sites",
    "hooks",
    "mutual_information",
    "noise_curves",
    "parse_units",
    "per_class_drops",
    "plot_attribution",
    "plot_direct",
    "roles",
    "selectivity_index",
    "selectivity_vs_importance",
    "sweep",
    "unit_table",
]

# Public name -> submodule that defines it. Imported on first access (PEP 562), so that light entry
# points such as ``lesion --help`` do not pay for torch.
_SOURCES = {
    "lesion.analyses.paper": (
        "ablation_curves", "curve_auc", "noise_curves", "per_class_drops", "selectivity_vs_importance",
        "unit_table",
    ),
    "lesion.analyses.attribution": ("attribution_table", "plot_attribution"),
    "lesion.analyses.controls": ("direction_curves", "direction_information"),
    "lesion.analyses.direct": ("direct_effects", "plot_direct"),
    "lesion.errors": ("DataError", "LesionError", "ModelFileError", "SiteError", "UnitError"),
    "lesion.analyses.evaluation": ("Evaluation", "evaluate"),
    "lesion.core.batch": ("Batch",),
    "lesion.core.lesions": ("Lesion", "ablate", "ablate_directions", "add_noise", "hooks"),
    "lesion.core.metric": ("KL", "MSE", "Classification", "LogitDiff", "Metric", "NextTokenLoss", "Scalar"),
    "lesion.engine.optimal": ("Optimal",),
    "lesion.core.replacements": (
        "Constant", "Directions", "Mean", "Noise", "Patch", "PositionalMean", "Replacement", "Resample",
        "Zero",
    ),
    "lesion.core.sites": ("Site", "find_sites"),
    "lesion.analyses.sweep": ("sweep",),
    "lesion.analyses.measures": ("auc", "correlate", "mutual_information", "selectivity_index"),
    "lesion.core.stats": ("collect_stats",),
    "lesion.roles": ("roles",),
    "lesion.core.units": ("Unit", "UnitSet", "parse_units"),
}  # fmt: skip
_LOCATION = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str):
    module = _LOCATION.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"lesion.{name}") is not None:
        value = importlib.import_module(f"lesion.{name}")  # a submodule, as ``import lesion`` once gave
    else:
        raise AttributeError(f"module 'lesion' has no attribute {name!r}")
    globals()[name] = value  # cache: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
