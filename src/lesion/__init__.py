"""lesion: delete neurons and feature maps of a trained PyTorch model and measure what that does.

>>> import torch, lesion
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
>>> [str(s) for s in lesion.find_sites(net, torch.zeros(1, 4))]
['1 (3)']
"""

from lesion.analyses import (
    ablation_curves,
    curve_auc,
    noise_curves,
    per_class_drops,
    selectivity_vs_importance,
    unit_table,
)
from lesion.errors import DataError, LesionError, ModelFileError, SiteError, UnitError
from lesion.evaluation import Evaluation, evaluate
from lesion.lesioning import ablate, ablate_directions, add_noise, hooks
from lesion.measures import auc, correlate, mutual_information, selectivity_index
from lesion.sites import Site, find_sites
from lesion.stats import collect_stats
from lesion.units import Unit, UnitSet, parse_units

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "Evaluation",
    "LesionError",
    "ModelFileError",
    "Site",
    "SiteError",
    "Unit",
    "UnitError",
    "UnitSet",
    "ablate",
    "ablate_directions",
    "ablation_curves",
    "add_noise",
    "auc",
    "collect_stats",
    "correlate",
    "curve_auc",
    "evaluate",
    "find_sites",
    "hooks",
    "mutual_information",
    "noise_curves",
    "parse_units",
    "per_class_drops",
    "selectivity_index",
    "selectivity_vs_importance",
    "unit_table",
]
