"""Ensembles: vmapped training equals one-by-one training with the same seeds and data orders."""

from __future__ import annotations

import pytest
import torch

from lesion.corruption import corrupt_labels
from lesion.data import Dataset, load_dataset
from lesion.ensemble import choose_method, train_ensemble
from lesion.errors import DataError, LesionError
from lesion.models import build_model, load_model
from lesion.training import train

TOL = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def arch_of(digits: Dataset, **kwargs) -> dict:
    return {"kind": "mlp", "input_shape": list(digits.input_shape), "widths": [24], "n_classes": 10} | kwargs


def assert_same(models_a, hist_a, models_b, hist_b) -> None:
    for a, b in zip(models_a, models_b, strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], **TOL, msg=k)
    assert hist_a.columns.tolist() == hist_b.columns.tolist()
    assert hist_a[["seed", "epoch"]].equals(hist_b[["seed", "epoch"]])
    cols = ["train_loss", "test_loss", "train_accuracy", "test_accuracy", "lr"]
    torch.testing.assert_close(torch.tensor(hist_a[cols].values), torch.tensor(hist_b[cols].values), **TOL)


@pytest.mark.parametrize(
    ("arch_kwargs", "train_kwargs"),
    [
        ({}, {"optimizer": "adam", "lr": 1e-2, "schedule": "cosine"}),
        ({"widths": [16, 8]}, {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-3}),
        # Adam turns the rounding noise in the zero gradient of a bias before batch norm into full
        # steps, so batch norm is compared under SGD, which passes rounding noise on unamplified.
        ({"batchnorm": True}, {"optimizer": "sgd", "lr": 0.05, "schedule": "step", "step_size": 1}),
    ],
)
def test_vmap_equals_loop(digits, arch_kwargs, train_kwargs):
    arch = arch_of(digits, **arch_kwargs)
    seeds = [3, 1, 4]
    mv, hv = train_ensemble(arch, digits, seeds=seeds, epochs=3, method="vmap", **train_kwargs)
    ml, hl = train_ensemble(arch, digits, seeds=seeds, epochs=3, method="loop", **train_kwargs)
    assert_same(mv, hv, ml, hl)
    assert hv["seed"].tolist() == [s for s in seeds for _ in range(3)]
    assert all(not m.training for m in mv)


def test_loop_is_train_with_each_seed(digits):
    arch = arch_of(digits)
    models, history = train_ensemble(arch, digits, seeds=[2, 5], epochs=2, method="loop")
    for k, s in enumerate([2, 5]):
        alone = build_model(arch, seed=s)
        h = train(alone, digits, epochs=2, seed=s)
        assert all(
            torch.equal(a, b)
            for a, b in zip(alone.state_dict().values(), models[k].state_dict().values(), strict=True)
        )
        mine = history[history["seed"] == s].drop(columns=["seed", "seconds"]).reset_index(drop=True)
        assert mine.equals(h.drop(columns="seconds"))


def test_per_model_labels_until_and_selectivity(digits):
    """Per-seed corrupted labels, early stopping at different epochs, the regulariser: all under vmap."""
    arch = arch_of(digits)
    labels = [digits.y_train, corrupt_labels(digits.y_train, 0.3, seed=1)]
    kw = {"seeds": [0, 1], "train_labels": labels, "until_train_acc": 0.9, "max_epochs": 6, "lr": 5e-3}
    kw |= {"select_reg": -0.3}
    mv, hv = train_ensemble(arch, digits, method="vmap", **kw)
    ml, hl = train_ensemble(arch, digits, method="loop", **kw)
    assert_same(mv, hv, ml, hl)
    ends = hv.groupby("seed")["epoch"].max()
    assert ends[0] < ends[1]  # the clean-label model reached the target sooner and was frozen there


def test_checkpoints_per_seed(digits, tmp_path):
    arch = arch_of(digits)
    calls = []
    kw = {
        "seeds": [7, 8],
        "epochs": 2,
        "checkpoints": [0, 1.5, 2],
        "callback": lambda s, e, m: calls.append((s, e)),
    }
    train_ensemble(arch, digits, method="vmap", directory=tmp_path / "v", **kw)
    assert sorted(calls) == [(s, e) for s in (7, 8) for e in (0, 1.5, 2)]
    train_ensemble(arch, digits, method="loop", directory=tmp_path / "l", **kw)
    for s in (7, 8):
        names = sorted(p.name for p in (tmp_path / "v" / f"seed_{s}").iterdir())
        assert names == sorted(p.name for p in (tmp_path / "l" / f"seed_{s}").iterdir())
        assert names == [
            "epoch_0000.safetensors", "epoch_0001.5.safetensors", "epoch_0002.safetensors", "history.csv",
            "model.safetensors",
        ]  # fmt: skip
        for name in ("epoch_0001.5.safetensors", "model.safetensors"):
            (a, ia), (b, ib) = (load_model(tmp_path / m / f"seed_{s}" / name) for m in ("v", "l"))
            assert ia["metadata"]["seed"] == s and torch.equal(ia["extra"]["train_labels"], digits.y_train)
            assert_same([a], _h(ia), [b], _h(ib))


def _h(info):
    import pandas as pd

    return pd.DataFrame(info["metadata"]["history"]).assign(seed=info["metadata"]["seed"])


def test_dropout_under_vmap_is_seeded(digits):
    arch = arch_of(digits, dropout=0.3)
    a, _ = train_ensemble(arch, digits, seeds=[0, 1], epochs=1, method="vmap")
    b, _ = train_ensemble(arch, digits, seeds=[0, 1], epochs=1, method="vmap")
    for m, n in zip(a, b, strict=True):
        assert all(
            torch.equal(x, y) for x, y in zip(m.state_dict().values(), n.state_dict().values(), strict=True)
        )
    assert not torch.equal(a[0].fc1.weight, a[1].fc1.weight)


def test_batchnorm_convnet_under_vmap(digits):
    arch = {"kind": "convnet", "input_shape": [1, 8, 8], "n_classes": 10, "width_mult": 0.0625}
    sub = Dataset("sub", digits.x_train[:256], digits.y_train[:256], digits.x_test[:64], digits.y_test[:64],
                  digits.classes)  # fmt: skip
    kw = {"seeds": [0, 1], "epochs": 1, "batch_size": 64, "optimizer": "sgd", "lr": 0.01}
    mv, hv = train_ensemble(arch, sub, method="vmap", **kw)
    ml, hl = train_ensemble(arch, sub, method="loop", **kw)
    assert_same(mv, hv, ml, hl)


def test_auto_method(digits):
    assert choose_method(build_model(arch_of(digits)), 8) == "vmap"
    assert choose_method(build_model(arch_of(digits)), 1) == "loop"
    conv = {"kind": "convnet", "input_shape": [1, 8, 8], "n_classes": 10, "width_mult": 0.0625}
    assert choose_method(build_model(conv), 8) == "loop"
    wide = {"kind": "mlp", "input_shape": [1, 28, 28], "widths": [512, 512], "n_classes": 10}
    assert choose_method(build_model(wide), 8) == "loop"  # measured slower under vmap on CPU
    models, history = train_ensemble(arch_of(digits), digits, seeds=[0, 1], epochs=1)
    assert len(models) == 2 and history["seed"].tolist() == [0, 1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seeds": []}, LesionError, "non-empty list"),
        ({"seeds": [1, 1]}, LesionError, "distinct"),
        ({"seeds": [0], "method": "threads"}, LesionError, "expected one of auto, vmap, loop"),
        (
            {"seeds": [0, 1], "train_labels": [torch.zeros(1437, dtype=torch.long)] * 3},
            DataError,
            "one per seed",
        ),
        ({"seeds": [0], "lr": -1}, LesionError, "lr"),
    ],
)
def test_bad_arguments(digits, kwargs, error, match):
    with pytest.raises(error, match=match):
        train_ensemble(arch_of(digits), digits, epochs=1, **kwargs)
