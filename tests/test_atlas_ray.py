"""``lesion.roles.build(..., backend="ray")`` and ``lesion atlas --backend ray`` against a real Ray head on
127.0.0.1: the cards equal those made in one process, exact and by triage."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pandas as pd
import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed (pip install 'lesion[ray]')", allow_module_level=True)

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # head, workers and driver on loopback
os.environ["RAY_AUTH_MODE"] = "disabled"  # the test head runs without token authentication (see test_ray)

from lesion.roles import build
from tests.ray_support import ray_head

NUMBERS = ("loss_zero", "loss_zero_lo", "loss_zero_hi", "loss_mean", "loss_resample", "accuracy_zero",
           "loss_zero_estimate")  # fmt: skip


@pytest.fixture(scope="module")
def head():
    """A Ray head with 2 CPUs on 127.0.0.1 (``tests.ray_support``); stopped afterwards."""
    yield from ray_head()


def _same(ray, local) -> None:
    a, b = ray.table(), local.table()
    assert list(a["unit"]) == list(b["unit"]) and list(a["role"]) == list(b["role"])
    assert list(a["effect_source"]) == list(b["effect_source"])
    for col in NUMBERS:
        np.testing.assert_allclose(a[col], b[col], rtol=1e-6, atol=1e-9, err_msg=col)
    rest = [*NUMBERS, "role"]
    pd.testing.assert_frame_equal(a.drop(columns=rest), b.drop(columns=rest))


@pytest.mark.slow  # about 45 s: two atlases on Ray beside two in one process
def test_cards_on_ray_equal_one_process(head):
    """Every unit exactly (an MLP), and by triage (a tiny GPT-2): the same cards, the same units chosen
    and the same recall as in one process."""
    from tests.text_support import pattern, tiny_gpt
    from tests.toys import ToyMLP, toy_data

    x, y = toy_data(8)
    local = build(ToyMLP(), (x, y), pair_units=2)
    ray = build(ToyMLP(), (x, y), pair_units=2, backend="ray", address=head, shards=2)
    _same(ray, local)
    assert ray.meta["backend"] == "ray"

    gpt, tokens = tiny_gpt(), {"input_ids": pattern(16, seed=2)}
    local = build(gpt, tokens, triage="20%", pair_units=2, batch_size=8)
    ray = build(gpt, tokens, triage="20%", pair_units=2, batch_size=8, backend="ray", address=head, shards=3)
    _same(ray, local)
    keys = ("exact", "top", "sampled", "k", "recall", "low", "high")
    assert {k: ray.meta["triage"][k] for k in keys} == {k: local.meta["triage"][k] for k in keys}


def test_lesion_atlas_backend_ray(head, tmp_path):
    from typer.testing import CliRunner

    from lesion.cli import app

    runner = CliRunner()
    model = tmp_path / "m.safetensors"
    made = runner.invoke(
        app, ["train", "--widths", "8", "--epochs", "1", "--dataset", "digits", "--out", str(model)]
    )
    assert made.exit_code == 0, made.output
    args = ["atlas", str(model), "--examples", "80", "--pairs", "2"]
    local = runner.invoke(app, [*args, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    ray = runner.invoke(app, [*args, "--out", str(tmp_path / "ray"), "--backend", "ray", "--address", head])
    assert ray.exit_code == 0, ray.output
    a, b = (pd.read_parquet(tmp_path / d / "roles.parquet") for d in ("ray", "local"))
    np.testing.assert_allclose(a["loss_zero"], b["loss_zero"], rtol=1e-6, atol=1e-9)
    assert list(a["role"]) == list(b["role"])
