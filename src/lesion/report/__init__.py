"""Figures and the HTML/Markdown report of ``lesion reproduce``."""

from lesion.report.figures import DRAW
from lesion.report.html import Section, write_html, write_markdown

__all__ = ["DRAW", "Section", "write_html", "write_markdown"]
