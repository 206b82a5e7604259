"""Job kind ``roles``: the card of every unit of a trained network (``lesion.roles.build``).

Writes ``roles.parquet`` (one row per unit, every number of its card). With ``params["atlas"]`` it also
writes the atlas folder ``atlas/`` (``roles.parquet``, ``cards.json``, ``atlas.html``, ``manifest.json``)
through the functions ``lesion atlas`` calls (``lesion.roles.atlas.write_atlas``, ``thumbnails``,
``example_ids``), so the atlas of a reproduce run is the page ``lesion atlas`` would write for that network
and those examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lesion.experiments.job import kind
from lesion.experiments.jobs import _dataset, model_and_data, write_table


@kind("roles")
def roles_job(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path) -> None:
    """The cards of ``inputs["model"]``'s units.

    ``split``: "train" (the first ``examples`` training examples with the labels the network was trained
    on; where some of those labels differ from the true ones, the memorisation parts against the true
    labels) or "test" (the first ``examples`` held-out examples). ``pair_units``, ``causal_draws`` and
    ``seed`` as in ``lesion.roles.build``; ``atlas``: also write ``atlas/``.
    """
    from lesion.roles.assemble import build

    split = params.get("split", "test")
    n = params.get("examples")
    model, xy = model_and_data({"split": split, "examples": n}, inputs)
    trained = _trained(inputs)
    data = _dataset(trained)
    train = true = None
    if split == "train":
        labels = data.y_train[:n]
        if bool((labels != xy[1]).any()):  # corrupted labels: memorisation against the true ones
            train, true = xy, labels
    atlas = build(
        model,
        xy,
        train=train,
        true_labels=true,
        pair_units=int(params.get("pair_units", 16)),
        causal_draws=int(params.get("causal_draws", 8)),
        seed=int(params.get("seed", 0)),
    )
    write_table(atlas.table(), out / "roles.parquet")
    if params.get("atlas"):
        which = "training examples (labels trained on)" if split == "train" else "held-out examples"
        title = f"{_network(trained)} on {data.name}: {len(xy[1])} {which}"
        _write_atlas(out / "atlas", atlas, xy, data.classes, title)


def _write_atlas(folder: Path, atlas, xy, classes, title: str) -> None:
    from lesion.roles.atlas import example_ids, thumbnails, write_atlas

    write_atlas(folder, atlas, thumbnails(xy, example_ids(atlas)), title=title, classes=classes)


def _network(trained: Mapping[str, Any]) -> str:
    """``convnet 4-8 (batch norm)``, ``mlp 512-512, 20% labels shuffled``: the network in words."""
    arch = trained["arch"]
    shape = "-".join(map(str, arch.get("widths", arch.get("channels", []))))
    words = f"{arch['kind']} {shape}".strip()
    if arch.get("batchnorm"):
        words += " (batch norm)"
    if trained.get("corrupt"):
        words += f", {trained['corrupt']:.0%} labels shuffled"
    return words


def _trained(inputs: Mapping[str, Path]) -> dict:
    import json

    return json.loads((inputs["model"] / "job.json").read_text())["params"]
