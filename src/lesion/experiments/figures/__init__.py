"""Every study of ``lesion reproduce``, in report order: one registry, one ``register`` call a study.

A study is one ``Figure`` (its jobs, the analysis of their outputs into tables and claims, and, if it
draws its own plot, ``draw``); ``register`` adds it, and ``lesion reproduce`` runs whatever is registered.
Sizes a study needs beyond the shared ones come from ``Profile.size(study, key, default)``.
"""

from lesion.errors import LesionError
from lesion.experiments.figures.common import Figure, Outcome
from lesion.experiments.figures.followups import AMJAD, LEAVITT, ROTATION, ZHOU
from lesion.experiments.figures.generalisation import F1, F2, F3, F4C
from lesion.experiments.figures.overtraining import F4
from lesion.experiments.figures.recovery import BAU2020, MEYES
from lesion.experiments.figures.replacements import T3, T4
from lesion.experiments.figures.roles import ROLES
from lesion.experiments.figures.scale import SIZE
from lesion.experiments.figures.units import F5A, F5B, F6, F7
from lesion.experiments.figures.vit_grokking import T1, T2

STUDIES: dict[str, Figure] = {}  # id -> study, in registration (= report) order


def register(study: Figure) -> Figure:
    """Add a study to ``lesion reproduce`` (its id must be new); returns it, so it can decorate."""
    if not isinstance(study, Figure):
        raise LesionError(f"register({study!r}): expected a lesion.experiments.figures.Figure")
    if STUDIES.get(study.id, study) is not study:
        raise LesionError(f"a study with id {study.id!r} is registered already; expected a new id")
    STUDIES[study.id] = study
    return study


def registered() -> tuple[Figure, ...]:
    """Every registered study, in report order."""
    return tuple(STUDIES.values())


for _study in (F1, F2, F3, F4, F4C, F5A, F5B, F6, F7, SIZE, ZHOU, AMJAD, LEAVITT, ROTATION, MEYES, BAU2020,
               T1, T2, T3, T4, ROLES):  # fmt: skip
    register(_study)

FIGURES: tuple[Figure, ...] = registered()  # the built-in studies

__all__ = ["FIGURES", "STUDIES", "Figure", "Outcome", "register", "registered"]
