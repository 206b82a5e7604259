"""Sharded sweeps merge into exactly the unsharded tables; shards are plain jobs the runner reuses."""

from __future__ import annotations

import pandas as pd
import pytest

from lesion.errors import LesionError
from lesion.experiments import Job, Store, run
from lesion.experiments.shards import shard_slice, sharded_curves, sharded_units

MODEL = Job("train", {
    "arch": {"kind": "mlp", "widths": [12, 8]}, "dataset": "digits", "corrupt": 0.0, "seed": 0,
    "train": {"epochs": 2, "lr": 3e-3},
})  # fmt: skip
CURVES = {"orders": ["random", "selectivity_high", "mutual_info_low", "random"], "repeats": 3, "fractions": 5}


def table(store: Store, job: Job, file: str) -> pd.DataFrame:
    return pd.read_parquet(store.path(job.key) / file)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return Store(tmp_path_factory.mktemp("shards"))


def test_sharded_units_equal_the_whole_sweep(store):
    whole = sharded_units(MODEL, {}, shards=1)
    parts = sharded_units(MODEL, {}, shards=3)
    many = sharded_units(MODEL, {}, shards=25)  # more shards than the 20 units: five are empty
    assert whole.kind == "units" and parts.kind == "merge" and len(parts.deps) == 3
    run([whole, parts, many], store)
    expected = table(store, whole, "units.parquet")
    assert len(expected) == 20
    for merged in (parts, many):
        pd.testing.assert_frame_equal(table(store, merged, "units.parquet"), expected)
    sizes = [len(table(store, d, "units.parquet")) for d in parts.deps.values()]
    assert sizes == [7, 7, 6]


def test_sharded_curves_equal_the_whole_set(store):
    units = sharded_units(MODEL, {}, shards=1)
    whole = Job("curves", CURVES, {"model": MODEL, "units": units})
    parts = sharded_curves(MODEL, CURVES, {"units": units}, per_shard=2)
    assert parts.kind == "merge"
    one = {"orders": ["random"], "repeats": 3}
    assert sharded_curves(MODEL, one, per_shard=3).key == Job("curves", one, {"model": MODEL}).key
    got = [(d.params["orders"], d.params["repeats"]) for d in parts.deps.values()]
    assert got == [
        (["random"], [0, 1]), (["random"], [2]), (["selectivity_high", "mutual_info_low"], 1),
        (["random"], [0, 1]), (["random"], [2]),
    ]  # fmt: skip
    run([whole, parts], store)
    expected = table(store, whole, "curves.parquet")
    assert len(expected) == (3 + 1 + 1 + 3) * 5
    pd.testing.assert_frame_equal(table(store, parts, "curves.parquet"), expected)
    # both random entries name the same shards: three distinct shard jobs, not five
    assert len({d.key for d in parts.deps.values()}) == 3
    again = run([parts], store)
    assert again.computed == [] and parts.key in again.reused


def test_repeat_lists_are_checked():
    import lesion

    with pytest.raises(LesionError, match="distinct repeat numbers"):
        lesion.ablation_curves(None, None, repeats=[1, 1])
    with pytest.raises(LesionError, match=r"repeats=-1; expected a count"):
        lesion.ablation_curves(None, None, repeats=-1)


def test_shard_bounds():
    assert [shard_slice(5, i, 2) for i in range(2)] == [slice(0, 3), slice(3, 5)]
    assert [len(range(10)[shard_slice(10, i, 4)]) for i in range(4)] == [3, 3, 2, 2]
    with pytest.raises(LesionError, match="shard 2 of 2"):
        shard_slice(5, 2, 2)
    with pytest.raises(LesionError, match="shards=0; expected a positive int"):
        sharded_units(MODEL, {}, shards=0)
