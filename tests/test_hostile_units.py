"""Unit addresses from careless or hostile text (issue 12, items 1 and 9): ASCII digits only, every range
checked against its layer's width (or lesion's cap) before anything is allocated, clear UnitErrors."""

from __future__ import annotations

import contextlib
import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

import lesion
from lesion.core.units import MAX_UNITS, parse_units
from lesion.errors import LesionError, UnitError


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


BAD = ["1:0-3_000_000_0", "1:1_0", "1:٣", "1:0-٣", "1:+3", "1: 3-", "1:0x3", "1:3.0"]


@pytest.mark.parametrize("text", BAD)
def test_only_ascii_digits_are_indices(text):
    with pytest.raises(UnitError, match="expected ASCII digits"):
        parse_units(text)


def peak_bytes(fn) -> int:
    tracemalloc.start()
    with contextlib.suppress(LesionError):
        fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_a_huge_range_is_refused_before_it_is_expanded():
    net = mlp()

    def ablate_huge():
        with lesion.ablate(net, ["1:0-40000000"]):
            net(torch.zeros(1, 4))

    assert peak_bytes(ablate_huge) < 1 << 20  # the old parser built 40 M ints (5 GB) first
    with pytest.raises(UnitError, match=f"limit of {MAX_UNITS:,} units per layer"):
        parse_units("1:0-40000000")
    sites = lesion.find_sites(net, torch.zeros(1, 4))
    assert peak_bytes(lambda: parse_units("1:0-999999999", sites)) < 1 << 20
    with pytest.raises(UnitError, match=r"out of range for layer '1': expected 0..7 \(8 units\)"):
        parse_units("1:0-999999999", sites)
    with pytest.raises(UnitError, match="at most 15 digits"):
        parse_units("1:" + "9" * 5000, sites)


def test_overlapping_ranges_cost_the_width_not_their_count():
    sites = lesion.find_sites(mlp(), torch.zeros(1, 4))
    many = ["1:0-7"] * 50_000
    assert parse_units(many, sites).to_strings() == [f"1:{i}" for i in range(8)]
    assert parse_units(["1:0-3", "1:2-5,7"]).to_strings() == ["1:0", "1:1", "1:2", "1:3", "1:4", "1:5", "1:7"]


def test_errors_never_echo_a_huge_input():
    with pytest.raises(UnitError) as err:
        parse_units("x" * 100_000 + ":1-a")
    assert len(str(err.value)) < 300


def test_numpy_and_torch_index_arrays_in_a_mapping():
    assert parse_units({"1": np.array([3, 1])}).to_strings() == ["1:1", "1:3"]
    assert parse_units({"1": torch.tensor([2])}).to_strings() == ["1:2"]
    assert parse_units({"1": np.int64(4)}).to_strings() == ["1:4"]
    with pytest.raises(UnitError, match="expected a flat list of indices"):
        parse_units({"1": np.zeros((2, 2), dtype=int)})
    with pytest.raises(UnitError, match="must be an integer"):
        parse_units({"1": np.array([0.5])})
    with pytest.raises(UnitError, match="expected an index, a list of indices"):
        parse_units({"1": 2.5})
