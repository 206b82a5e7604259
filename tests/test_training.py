"""The training loop: determinism, RNG hygiene, the history table, accuracy on digits, evaluate()."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lesion.data import Dataset, load_dataset
from lesion.errors import DataError, LesionError
from lesion.models import mlp
from lesion.training import _batch_bounds, evaluate, seed_everything, train


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
        "epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"
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
