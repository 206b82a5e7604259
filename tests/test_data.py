"""Built-in datasets: shapes, normalisation, stratified seeded splits, caching, loaders."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lesion.data import DATASETS, Dataset, load_dataset, make_loader
from lesion.data._builtin import _load
from lesion.errors import DataError


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist5k")


def test_known_names():
    assert DATASETS == ("digits", "mnist5k", "mnist", "fashion-mnist", "cifar10", "cifar100", "folder")


def test_digits_shapes_and_dtypes(digits):
    assert digits.name == "digits"
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.input_shape == (1, 8, 8) and digits.n_classes == 10
    assert digits.classes == tuple("0123456789")


def test_digits_normalised_with_train_statistics(digits):
    assert abs(float(digits.x_train.mean())) < 1e-5
    assert abs(float(digits.x_train.std()) - 1.0) < 1e-3
    # scaled from 0..16 to [0, 1] before normalising: the 17 levels map to equally spaced values
    levels = torch.unique(torch.cat([digits.x_train.flatten(), digits.x_test.flatten()]))
    assert len(levels) == 17
    assert torch.allclose(levels.diff(), levels.diff()[:1].expand(16), atol=1e-5)


def test_mnist5k_shapes_normalisation_and_stratification(mnist):
    assert mnist.x_train.shape == (4000, 1, 28, 28) and mnist.x_test.shape == (1000, 1, 28, 28)
    assert mnist.input_shape == (1, 28, 28) and mnist.n_classes == 10
    raw = mnist.x_train * 0.3081 + 0.1307  # undo the MNIST constants: back to [0, 1]
    assert float(raw.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(raw.max()) == pytest.approx(1.0, abs=1e-6)
    assert mnist.y_train.bincount().tolist() == [400] * 10
    assert mnist.y_test.bincount().tolist() == [100] * 10
    # the source is sorted by label; the split must be shuffled
    assert (mnist.y_train.diff() != 0).sum() > 100


def test_digits_split_is_stratified(digits):
    total = torch.cat([digits.y_train, digits.y_test]).bincount()
    test = digits.y_test.bincount()
    assert ((test - 0.2 * total).abs() <= 1).all()


def test_test_fraction():
    d = load_dataset("digits", test_fraction=0.5)
    assert len(d.y_test) + len(d.y_train) == 1797 and abs(len(d.y_test) - len(d.y_train)) <= 1


def test_split_is_seeded():
    a = load_dataset("digits", seed=1)
    fresh = _load.__wrapped__("digits", None, 1, 0.2)  # recompute, bypassing the cache
    assert torch.equal(a.x_train, fresh.x_train) and torch.equal(a.y_test, fresh.y_test)
    b = load_dataset("digits", seed=2)
    assert not torch.equal(a.y_train, b.y_train)


def test_cached_instance_is_shared(digits):
    assert load_dataset("digits") is digits
    assert load_dataset("digits", root="/nonexistent") is not digits  # root is part of the key


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(DataError, match=r"unknown dataset 'mnist6k'; closest: mnist5k; known datasets: "):
        load_dataset("mnist6k")
    with pytest.raises(DataError, match="digits, mnist5k, mnist, fashion-mnist, cifar10, cifar100, folder"):
        load_dataset("svhn")


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, True, "0.2"])
def test_bad_test_fraction(fraction):
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset("digits", test_fraction=fraction)


def test_dataset_is_frozen(digits):
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.name = "other"


def test_with_train_labels_returns_a_copy(digits):
    y = torch.zeros(len(digits.y_train), dtype=torch.int32)
    d = digits.with_train_labels(y)
    assert d.y_train.dtype == torch.int64 and int(d.y_train.sum()) == 0
    assert d.x_train is digits.x_train and d.y_test is digits.y_test
    assert int(digits.y_train.sum()) > 0  # the original is untouched


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.zeros(5, dtype=torch.int64), "expected int64 of shape"),
        (torch.full((1437,), 10), "expected 0..9"),
        (torch.full((1437,), -1), "expected 0..9"),
        (torch.zeros(1437), "integer class indices"),
    ],
)
def test_with_train_labels_validates(digits, labels, match):
    with pytest.raises(DataError, match=match):
        digits.with_train_labels(labels)


def test_loader_in_order_without_shuffle():
    x, y = torch.arange(10.0).reshape(10, 1), torch.arange(10)
    batches = list(make_loader(x, y, batch_size=4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert torch.equal(torch.cat([b[0] for b in batches])[:, 0], x[:, 0])


def test_loader_shuffle_is_seeded():
    x, y = torch.arange(100.0).reshape(100, 1), torch.arange(100)

    def order(seed: int) -> torch.Tensor:
        return torch.cat([b[1] for b in make_loader(x, y, batch_size=7, shuffle=True, seed=seed)])

    a = order(3)
    assert torch.equal(a, order(3)) and not torch.equal(a, order(4))
    assert torch.equal(a.sort().values, y) and not torch.equal(a, y)

    def epochs(loader) -> list[torch.Tensor]:
        return [torch.cat([b[1] for b in loader]) for _ in range(2)]

    first, second = epochs(make_loader(x, y, batch_size=7, shuffle=True, seed=3))
    assert torch.equal(first, a) and not torch.equal(first, second)  # a new order each epoch ...
    again = epochs(make_loader(x, y, batch_size=7, shuffle=True, seed=3))
    assert torch.equal(second, again[1])  # ... and the same sequence of orders from the same seed


def test_loader_pairs_stay_aligned(digits):
    for xb, yb in make_loader(digits.x_train, digits.y_train, batch_size=100, shuffle=True):
        assert xb.shape == (len(yb), 1, 8, 8)
    xb, yb = next(iter(make_loader(digits.x_train, torch.arange(1437), batch_size=50, shuffle=True)))
    assert torch.equal(xb, digits.x_train[yb])


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_loader_bad_batch_size(batch_size):
    with pytest.raises(DataError, match="batch_size"):
        make_loader(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64), batch_size=batch_size)


def test_loader_length_mismatch():
    with pytest.raises(DataError, match="same length"):
        make_loader(torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64))
