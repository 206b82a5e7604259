"""The training loop: determinism, RNG hygiene, the history table, accuracy on digits, evaluate()."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lesion.data import Dataset, load_dataset
from lesion.errors import DataError, LesionError
from lesion.models import build_model, load_model, mlp
from lesion.training.corruption import corrupt_labels
from lesion.training.loop import _batch_bounds, evaluate, lr_at, seed_everything, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and lose 100x when another process holds a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def small(digits: Dataset, **kwargs) -> torch.nn.Module:
    return mlp(digits.input_shape, [32], digits.n_classes, seed=0, **kwargs)


def test_history_table(digits):
    model = small(digits)
    history = train(model, digits, epochs=3, lr=1e-2)
    assert list(history.columns) == [
        "epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "seconds"
    ]  # fmt: skip
    assert history["epoch"].tolist() == [1, 2, 3] and history["epoch"].dtype == "int64"
    assert history["train_loss"].is_monotonic_decreasing
    assert ((history["test_accuracy"] >= 0) & (history["test_accuracy"] <= 1)).all()
    assert (history["seconds"] > 0).all()
    assert not model.training
    last = history.iloc[-1]
    assert (last["train_loss"], last["train_accuracy"]) == evaluate(model, digits.x_train, digits.y_train)
    assert (last["test_loss"], last["test_accuracy"]) == evaluate(model, digits.x_test, digits.y_test)


def test_zero_epochs(digits):
    model = small(digits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = train(model, digits, epochs=0)
    assert history.empty and "test_accuracy" in history.columns
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs", [{}, {"dropout": 0.3, "batchnorm": True}])
def test_same_seed_gives_bit_identical_weights(digits, kwargs):
    a, b = small(digits, **kwargs), small(digits, **kwargs)
    ha = train(a, digits, epochs=1, seed=5)
    hb = train(b, digits, epochs=1, seed=5)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ha.drop(columns="seconds").equals(hb.drop(columns="seconds"))
    c = small(digits, **kwargs)
    train(c, digits, epochs=1, seed=6)
    assert not torch.equal(c.fc1.weight, a.fc1.weight)


def test_training_leaves_global_rng_alone(digits):
    state = torch.get_rng_state()
    train(small(digits, dropout=0.5), digits, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_small_mlp_learns_digits(digits):
    model = mlp(digits.input_shape, [64], digits.n_classes, seed=0)
    history = train(model, digits, epochs=10)
    assert history["test_accuracy"].iloc[-1] > 0.9


def test_sgd(digits):
    history = train(small(digits), digits, epochs=3, optimizer="sgd", lr=0.05, weight_decay=1e-4)
    assert history["test_accuracy"].iloc[-1] > 0.8


def test_train_labels_are_what_is_learned_and_scored(digits):
    constant = torch.full_like(digits.y_train, 3)
    history = train(small(digits), digits, epochs=3, lr=1e-2, train_labels=constant)
    assert history["train_accuracy"].iloc[-1] == 1.0  # scored against the labels trained on
    assert history["test_accuracy"].iloc[-1] == pytest.approx(float((digits.y_test == 3).float().mean()))
    with pytest.raises(DataError, match="expected int64 of shape"):
        train(small(digits), digits, epochs=1, train_labels=constant[:10])


def test_batchnorm_survives_a_last_batch_of_one(digits):
    assert _batch_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert _batch_bounds(9, 3) == [(0, 3), (3, 6), (6, 9)]
    assert _batch_bounds(1, 4) == [(0, 1)] and _batch_bounds(0, 4) == []
    train(small(digits, batchnorm=True), digits, epochs=1, batch_size=1436)  # 1437 = 1436 + 1


def test_progress_bar_goes_to_stderr(digits, capsys):
    train(small(digits), digits, epochs=1, progress=True)
    out = capsys.readouterr()
    assert out.out == "" and "train" in out.err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": -1}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "rmsprop"}, "expected one of adam, sgd"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"seed": -3}, "seed"),
        ({"schedule": "linear"}, "expected one of constant, cosine, step"),
        ({"schedule": "step", "step_size": 0}, "step_size"),
        ({"gamma": 0}, "gamma"),
        ({"until_train_acc": 1.5}, "until_train_acc"),
        ({"until_train_acc": 0.9, "epochs": 3}, "not both"),
        ({"until_train_acc": 0.9, "max_epochs": 0}, "max_epochs"),
        ({"max_epochs": 3}, "max_epochs caps until_train_acc"),
        ({"select_reg": float("nan")}, "select_reg"),
        ({"select_reg": 1.0, "select_sites": ["relu9"]}, "unknown layer 'relu9'"),
        ({"checkpoints": [1]}, "checkpoints need directory= .* or callback="),
        ({"checkpoints": [-1], "callback": print}, "checkpoint epoch -1"),
        ({"checkpoints": "1,2", "callback": print}, "expected a list of epochs"),
        ({"directory": "somewhere"}, "needs arch="),
    ],
)
def test_bad_arguments(digits, kwargs, match):
    with pytest.raises(LesionError, match=match):
        train(small(digits), digits, **kwargs)


def test_evaluate_matches_hand_computation_and_restores_flags(digits):
    model = small(digits, dropout=0.5, batchnorm=True)
    model.train()
    model.bn1.eval()  # mixed flags must come back exactly
    x, y = digits.x_test[:250], digits.y_test[:250]
    loss, acc = evaluate(model, x, y, batch_size=64)
    assert model.training and not model.bn1.training and model.drop1.training
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert acc == int((logits.argmax(1) == y).sum()) / len(y)


def test_evaluate_rejects_mismatched_data(digits):
    with pytest.raises(DataError, match="same non-zero length"):
        evaluate(small(digits), digits.x_test[:5], digits.y_test[:4])


def test_seed_everything_is_reproducible():
    seed_everything(11)
    a = torch.rand(3)
    seed_everything(11)
    assert torch.equal(a, torch.rand(3))


# ------------------------------------------------------------------ schedules, stopping, checkpoints


def test_lr_schedules():
    assert [lr_at(e, 0.1, "constant", 5) for e in (1, 5)] == [0.1, 0.1]
    assert lr_at(1, 0.2, "cosine", 10) == 0.2
    assert lr_at(6, 0.2, "cosine", 10) == pytest.approx(0.1)
    assert lr_at(3, 1.0, "step", 9, step_size=2, gamma=0.5) == 0.5
    assert [lr_at(e, 1.0, "step", 9) for e in (3, 4, 7)] == [1.0, pytest.approx(0.1), pytest.approx(0.01)]


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_lr_column_follows_the_schedule(digits, schedule):
    history = train(small(digits), digits, epochs=4, lr=0.01, schedule=schedule, step_size=1, gamma=0.5)
    assert history["lr"].tolist() == [
        lr_at(e, 0.01, schedule, 4, step_size=1, gamma=0.5) for e in range(1, 5)
    ]


def test_until_train_acc_stops_as_soon_as_reached(digits):
    history = train(small(digits), digits, until_train_acc=0.95, max_epochs=50, lr=1e-2)
    acc = history["train_accuracy"].tolist()
    assert acc[-1] >= 0.95 and all(a < 0.95 for a in acc[:-1]) and len(acc) < 50
    capped = train(small(digits), digits, until_train_acc=1.0, max_epochs=2, lr=1e-4)
    assert capped["epoch"].tolist() == [1, 2] and capped["train_accuracy"].iloc[-1] < 1.0


def test_checkpoints_to_a_directory(digits, tmp_path):
    arch = {"kind": "mlp", "input_shape": list(digits.input_shape), "widths": [32], "n_classes": 10}
    labels = corrupt_labels(digits.y_train, 0.5, seed=0)
    model = build_model(arch, seed=0)
    history = train(model, digits, epochs=5, lr=1e-2, train_labels=labels, checkpoints=[0, 1, 2, 4, 8],
                    directory=tmp_path, arch=arch)  # fmt: skip
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "epoch_0000.safetensors", "epoch_0001.safetensors", "epoch_0002.safetensors",
        "epoch_0004.safetensors", "history.csv", "model.safetensors",
    ]  # fmt: skip
    fresh = build_model(arch, seed=0)
    first, info = load_model(tmp_path / "epoch_0000.safetensors")
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
    assert info["metadata"]["epoch"] == 0 and info["metadata"]["history"] == []
    four, info = load_model(tmp_path / "epoch_0004.safetensors")
    assert info["metadata"]["epoch"] == 4 and len(info["metadata"]["history"]) == 4
    assert torch.equal(info["extra"]["train_labels"], labels)
    assert evaluate(four, digits.x_test, digits.y_test) == tuple(
        history.iloc[3][["test_loss", "test_accuracy"]]
    )
    final, info = load_model(tmp_path / "model.safetensors")
    assert all(
        torch.equal(a, b)
        for a, b in zip(final.state_dict().values(), model.state_dict().values(), strict=True)
    )
    meta = info["metadata"]
    assert (
        meta["lr"] == 1e-2 and meta["seed"] == 0 and meta["dataset"] == "digits" and meta["epochs_run"] == 5
    )
    assert torch.equal(info["extra"]["train_labels"], labels)
    written = pd.read_csv(tmp_path / "history.csv")
    assert list(written.columns) == list(history.columns)
    pd.testing.assert_frame_equal(written, history, check_exact=False, rtol=1e-12)


def test_callback_at_fractional_and_whole_epochs(digits):
    seen = []

    def record(epoch, model):
        seen.append((epoch, model.training))

    train(small(digits), digits, epochs=3, batch_size=100, checkpoints=[0.5, 1, 2.25, 7], callback=record)
    assert seen == [(0.5, False), (1, False), (2.25, False)]  # eval mode; epoch 7 never comes
    seen.clear()
    train(small(digits), digits, epochs=2, callback=record)  # no checkpoints: after every epoch
    assert [e for e, _ in seen] == [1, 2]


def test_fractional_checkpoint_file_name(digits, tmp_path):
    arch = {"kind": "mlp", "input_shape": list(digits.input_shape), "widths": [32], "n_classes": 10}
    train(build_model(arch, seed=0), digits, epochs=1, checkpoints=[0.5], directory=tmp_path, arch=arch)
    assert (tmp_path / "epoch_0000.5.safetensors").exists()


def test_tiny_convnet_is_bit_identical_for_the_same_seed(digits):
    arch = {
        "kind": "convnet",
        "input_shape": [1, 8, 8],
        "n_classes": 10,
        "width_mult": 0.0625,
        "dropout": 0.2,
    }
    sub = digits.with_train_labels(digits.y_train)
    runs = []
    for _ in range(2):
        model = build_model(arch, seed=3)
        history = train(model, sub, epochs=1, batch_size=256, lr=1e-2, seed=2, select_reg=-0.5)
        runs.append((model.state_dict(), history.drop(columns="seconds")))
    (sa, ha), (sb, hb) = runs
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and ha.equals(hb)
    assert math.isfinite(ha["train_loss"].iloc[0])


def test_select_reg_sites_are_restored(digits):
    model = small(digits)
    train(model, digits, epochs=1, select_reg=1.0, select_sites=["relu1"])
    assert all(not m._forward_hooks for m in model.modules())


def test_device_argument_accepts_torch_devices(digits):
    model = small(digits)
    train(model, digits, epochs=1, device=torch.device("cpu"))
    assert model.fc1.weight.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda(digits):
    model = small(digits, batchnorm=True, dropout=0.1)
    history = train(model, digits, epochs=2, device="cuda", select_reg=-0.1)
    assert model.fc1.weight.is_cuda and history["test_accuracy"].iloc[-1] > 0.5
