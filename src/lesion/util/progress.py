"""Progress bars (tqdm on stderr) that cost nothing when turned off."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(items: Iterable | None, desc: str, enabled: bool, total: int | None = None):
    """Wrap ``items`` (or make a manual bar of ``total`` steps) in a tqdm bar when ``enabled``."""
    return tqdm(items, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True)
