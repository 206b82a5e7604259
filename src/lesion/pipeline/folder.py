"""Where ``lesion analyze`` writes: one folder, complete or not at all, the same for classifiers and
language models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lesion.util.jsonable import jsonable
from lesion.util.outputs import write_folder


def publish(out: Path, summary: dict, clock, spread: dict, write_tables: Callable[[Path], None]) -> dict:
    """Write an analysis into ``out`` completely or not at all: its tables and figures, then
    ``summary.json`` with the time of every step; the finished Ray shards kept for a rerun go."""

    def write(folder: Path) -> None:
        write_tables(folder)
        clock.lap("outputs")
        summary["seconds"] = clock.laps
        (folder / "summary.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n")

    write_folder(out, write, kind="lesion analyze")
    from lesion.backends.ray_sweep import drop_shards

    drop_shards(spread)
    return summary
