"""A griffe extension for the API reference: fence the doctests of a docstring as ``pycon`` code.

lesion's docstrings hold doctests (``>>>`` lines and their output) in plain text, as pytest's
``--doctest-modules`` reads them. Rendered as Markdown, an output line such as ``['1 (3)']`` would read
as a reference link; fenced, it is shown as the console session it is. The docstrings stay unchanged.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """Wrap every run of ``>>>`` lines (with their ``...`` continuations and output) in a pycon fence."""
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        starts = line.lstrip().startswith(">>>")
        if starts and not in_block:
            out.append("```pycon")
            in_block = True
        elif in_block and not line.strip():
            out.append("```")
            in_block = False
        out.append(line)
    if in_block:
        out.append("```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fence doctests in every docstring as the objects are loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
