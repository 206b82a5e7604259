"""The HTML and Markdown report of ``lesion reproduce`` and the run that writes it (``reproduce``); each
study draws its own figure (``lesion.experiments.figures``)."""

from lesion.report.html import Section, write_html, write_markdown

__all__ = ["Section", "write_html", "write_markdown"]
