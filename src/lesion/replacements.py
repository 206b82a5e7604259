"""How a unit is deleted: what takes the place of its activity. ``Zero()`` (the paper's deletion),
``Constant(c)``, ``Mean()``, ``PositionalMean()``, ``Resample(seed=)``, ``Patch(source)``, ``Optimal()``
(the constant that costs least, Li & Janson 2024), ``Noise(scale)``, ``Directions(...)``, and the
``Replacement`` base a new one subclasses.

>>> import lesion
>>> lesion.replacements.Constant(0.5).value
0.5
"""

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
from lesion.engine.optimal import Optimal

__all__ = [
    "Constant",
    "Directions",
    "Mean",
    "Noise",
    "Optimal",
    "Patch",
    "PositionalMean",
    "Replacement",
    "Resample",
    "Zero",
]
