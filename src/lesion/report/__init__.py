"""Figures and the HTML/Markdown report of ``lesion reproduce``."""

from lesion.report.figures import DRAW
from lesion.report.followup_figures import draw_bau, draw_meyes, draw_size
from lesion.report.html import Section, write_html, write_markdown
from lesion.report.replacements_figures import draw_t3, draw_t4
from lesion.report.roles_figures import draw_roles
from lesion.report.vit_grokking_figures import draw_t1, draw_t2

DRAW |= {"size-study": draw_size, "meyes-recovery": draw_meyes, "bau-class-units": draw_bau}
DRAW |= {"T1": draw_t1, "T2": draw_t2}
DRAW |= {"T3": draw_t3, "T4": draw_t4}  # beyond the paper
DRAW |= {"ROLES": draw_roles}  # the role of every unit

__all__ = ["DRAW", "Section", "write_html", "write_markdown"]
