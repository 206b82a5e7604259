"""Every study of ``lesion reproduce``, in report order: one registry, one ``register`` call a study.

A study is one ``Figure`` in one module: its jobs, the analysis of their outputs into tables and claims,
the drawing of its figure, and the sizes it alone uses, declared with their defaults
(``Figure(..., sizes={"ensemble": 12})``) and read with ``STUDY.size(profile, key)``. A profile changes
them in ``Profile.sizes[study id]``; ``check_sizes`` refuses a size no registered study declares.
``register`` adds a study, and ``lesion reproduce`` runs whatever is registered.

The modules, one study each or a few on one theme, each study's parts together: ``corruption`` (F1, F2),
``generalisation`` (F3, F4c), ``overtraining`` (F4a/b), ``dropout`` (F5a), ``units`` (F5b, F6, F7),
``scale`` (the size study), ``followups`` (Zhou, Amjad, the rotation control), ``regulariser`` (Leavitt),
``recovery`` (Meyes, Bau 2020), ``vit`` (T1), ``grokking`` (T2), ``replacements`` (T3), ``attribution``
(T4). ``common`` holds the job builders and readers they share, ``plot`` the drawing helpers.
"""

from lesion.errors import LesionError
from lesion.experiments.figures.attribution import T4
from lesion.experiments.figures.common import Figure, Outcome
from lesion.experiments.figures.corruption import F1, F2
from lesion.experiments.figures.dropout import F5A
from lesion.experiments.figures.followups import AMJAD, ROTATION, ZHOU
from lesion.experiments.figures.generalisation import F3, F4C
from lesion.experiments.figures.grokking import T2
from lesion.experiments.figures.overtraining import F4
from lesion.experiments.figures.recovery import BAU2020, MEYES
from lesion.experiments.figures.regulariser import LEAVITT
from lesion.experiments.figures.replacements import T3
from lesion.experiments.figures.roles import ROLES
from lesion.experiments.figures.scale import SIZE
from lesion.experiments.figures.units import F5B, F6, F7
from lesion.experiments.figures.vit import T1
from lesion.experiments.profiles import Profile

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


def check_sizes(p: Profile) -> None:
    """Refuse a profile that sets sizes of a study not registered, or a size its study does not declare."""
    unknown = [s for s in p.sizes if s not in STUDIES]
    if unknown:
        raise LesionError(
            f"profile {p.name!r} sets sizes of {', '.join(map(repr, unknown))}; expected registered studies "
            f"({', '.join(STUDIES)})"
        )
    for study in p.sizes:
        STUDIES[study].sizes_in(p)


for _study in (F1, F2, F3, F4, F4C, F5A, F5B, F6, F7, SIZE, ZHOU, AMJAD, LEAVITT, ROTATION, MEYES, BAU2020,
               T1, T2, T3, T4, ROLES):  # fmt: skip
    register(_study)

FIGURES: tuple[Figure, ...] = registered()  # the built-in studies

__all__ = ["FIGURES", "STUDIES", "Figure", "Outcome", "check_sizes", "register", "registered"]
