"""Smaller careless inputs of issue 12, item 9, and the Ray connection timeout (item 8)."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch
from torch import nn

import lesion
from lesion.errors import LesionError, SiteError
from lesion.experiments.backends import get_backend


class SharedReLU(nn.Module):
    """One ReLU module applied after two layers: its 'units' belong to two places."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.relu, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.relu(self.fc2(self.relu(self.fc1(x)))))


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(30, 4, generator=g), torch.arange(30) % 3


def test_a_reused_module_is_refused_not_dropped_or_clamped_twice():
    net, (x, y) = SharedReLU(), data()
    with pytest.raises(SiteError, match="'relu' runs 2 times per forward pass"):
        lesion.find_sites(net, x[:2])
    with pytest.raises(SiteError, match="'relu' runs 2 times per forward pass"):
        lesion.unit_table(net, (x, y))
    with (
        pytest.raises(SiteError, match="'relu' runs 2 times per forward pass"),
        lesion.ablate(net, "relu:0"),
    ):
        net(x)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == 0
    net.relu(x)  # the module itself is still usable outside a lesion


def test_ablate_still_works_on_a_module_used_once_and_on_direct_calls():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    with lesion.ablate(net, "1:0-1"):
        assert net(torch.ones(1, 2))[0, :2].tolist() == [0.0, 0.0]
        assert net(torch.ones(1, 2))[0, :2].tolist() == [0.0, 0.0]  # a second pass is a new count
        net[1](torch.ones(1, 3))
        net[1](torch.ones(1, 3))  # direct calls outside a pass of the model are not counted


@pytest.mark.parametrize("fractions", [3, 0.5, "0.5", [[0.1]], [float("nan")]])
def test_fractions_that_are_not_a_sequence_of_fractions(fractions):
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(LesionError, match=r"fractions"):
        lesion.ablation_curves(net, data(), fractions=fractions, repeats=1)


def test_numpy_indices_in_a_unit_mapping_work_in_ablate():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    with lesion.ablate(net, {"1": np.array([0, 1])}):
        assert net(torch.ones(1, 2))[0, :2].tolist() == [0.0, 0.0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_ray_address_nobody_answers_fails_within_the_timeout(tmp_path):
    backend = get_backend("ray", address=f"127.0.0.1:{closed_port()}", connect_timeout=1.0)
    start = time.perf_counter()
    unreachable = r"cannot reach the Ray cluster at 127\.0\.0\.1:\d+ within 1 s"
    with pytest.raises(LesionError, match=unreachable), backend.session(1):
        pass
    assert time.perf_counter() - start < 5
    assert get_backend("ray", address="127.0.0.1:1").connect_timeout == 30.0  # the default
    with (
        pytest.raises(LesionError, match="expected HOST:PORT"),
        get_backend("ray", address="nowhere").session(1),
    ):
        pass


def test_reproduce_with_an_unreachable_ray_address_is_a_user_error(tmp_path):
    from typer.testing import CliRunner

    from lesion.cli import app

    result = CliRunner().invoke(app, [
        "reproduce", "--profile", "tiny", "--only", "F1", "--out", str(tmp_path), "--backend", "ray",
        "--address", "127.0.0.1:1", "--connect-timeout", "1",
    ])  # fmt: skip
    assert result.exit_code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1 within 1 s" in result.output


def test_the_reuse_guard_counts_each_threads_forward_passes_apart():
    import threading

    net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 3))
    x = torch.randn(256, 4)
    errors: list[BaseException] = []

    def forward_many() -> None:
        try:
            for _ in range(200):
                net(x)
        except BaseException as e:  # collected for the assertion below
            errors.append(e)

    with lesion.ablate(net, "1:0"):
        threads = [threading.Thread(target=forward_many) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
