"""Every figure of ``lesion reproduce``, in report order."""

from lesion.experiments.figures.common import Figure, Outcome
from lesion.experiments.figures.followups import AMJAD, LEAVITT, ROTATION, ZHOU
from lesion.experiments.figures.generalisation import F1, F2, F3, F4C
from lesion.experiments.figures.overtraining import F4
from lesion.experiments.figures.recovery import BAU2020, MEYES
from lesion.experiments.figures.replacements import T3, T4
from lesion.experiments.figures.scale import SIZE
from lesion.experiments.figures.units import F5A, F5B, F6, F7
from lesion.experiments.figures.vit_grokking import T1, T2

FIGURES: tuple[Figure, ...] = (
    F1, F2, F3, F4, F4C, F5A, F5B, F6, F7, SIZE, ZHOU, AMJAD, LEAVITT, ROTATION, MEYES, BAU2020,
    T1, T2, T3, T4,
)  # fmt: skip

__all__ = ["FIGURES", "Figure", "Outcome"]
