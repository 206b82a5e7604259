"""Label corruption: exact histogram under shuffling, identity at 0, seeded, masks, errors."""

from __future__ import annotations

import pytest
import torch

from lesion.errors import DataError, LesionError
from lesion.training.corruption import corrupt_labels


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.arange(1000) % 10  # balanced, 100 per class


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_shuffle_keeps_the_histogram_and_changes_only_the_chosen(labels, fraction):
    before = labels.clone()
    y, mask = corrupt_labels(labels, fraction, seed=3, return_mask=True)
    assert torch.equal(labels, before)  # the input is left alone
    assert y.dtype == labels.dtype and y.shape == labels.shape
    assert torch.equal(torch.bincount(y, minlength=10), torch.bincount(labels, minlength=10))
    assert mask.dtype == torch.bool and int(mask.sum()) == round(fraction * len(labels))
    assert torch.equal(y[~mask], labels[~mask])
    assert torch.equal(torch.sort(y[mask]).values, torch.sort(labels[mask]).values)


def test_fraction_zero_is_identity_but_a_new_tensor(labels):
    for mode in ("shuffle", "random"):
        y = corrupt_labels(labels, 0.0, mode=mode)
        assert torch.equal(y, labels) and y.data_ptr() != labels.data_ptr()


@pytest.mark.parametrize("mode", ["shuffle", "random"])
def test_fraction_one_changes_about_nine_in_ten(labels, mode):
    y, mask = corrupt_labels(labels, 1.0, mode=mode, seed=0, return_mask=True)
    assert bool(mask.all())
    changed = float((y != labels).float().mean())
    assert 0.85 < changed < 0.95  # 10 balanced classes: a random label is right 1 time in 10


def test_random_mode_draws_uniform_labels_in_range(labels):
    y, mask = corrupt_labels(labels, 0.5, mode="random", n_classes=12, seed=1, return_mask=True)
    assert int(y.min()) >= 0 and int(y.max()) <= 11
    assert int((y >= 10).sum()) > 0  # classes beyond those present can be drawn
    assert torch.equal(y[~mask], labels[~mask])
    counts = torch.bincount(y[mask], minlength=12)
    assert int(counts.min()) > 20  # 500 draws over 12 classes: about 42 each


def test_seeded(labels):
    a = corrupt_labels(labels, 0.4, seed=5)
    assert torch.equal(a, corrupt_labels(labels, 0.4, seed=5))
    assert not torch.equal(a, corrupt_labels(labels, 0.4, seed=6))
    r = corrupt_labels(labels, 0.4, mode="random", seed=5)
    assert torch.equal(r, corrupt_labels(labels, 0.4, mode="random", seed=5))


def test_global_rng_untouched(labels):
    state = torch.get_rng_state()
    corrupt_labels(labels, 0.5, mode="random")
    assert torch.equal(torch.get_rng_state(), state)


def test_rounding_of_the_count():
    y = torch.arange(7) % 2
    assert int(corrupt_labels(y, 0.5, return_mask=True)[1].sum()) == round(3.5)
    assert int(corrupt_labels(y, 0.1, return_mask=True)[1].sum()) == 1


def test_empty_labels():
    y = torch.zeros(0, dtype=torch.long)
    assert corrupt_labels(y, 1.0).numel() == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fraction": -0.1}, LesionError, r"fraction=-0.1; expected a number in \[0, 1\]"),
        ({"fraction": 1.5}, LesionError, "fraction"),
        ({"fraction": True}, LesionError, "fraction"),
        ({"mode": "flip"}, LesionError, "expected one of shuffle, random"),
        ({"seed": -1}, LesionError, "seed"),
        ({"mode": "random", "n_classes": 5}, LesionError, "n_classes=5; expected an int >= 10"),
    ],
)
def test_bad_arguments(labels, kwargs, error, match):
    args = {"fraction": 0.5} | kwargs
    with pytest.raises(error, match=match):
        corrupt_labels(labels, **args)


@pytest.mark.parametrize(
    "y", [torch.rand(10), torch.zeros(2, 5, dtype=torch.long), torch.tensor([0, -1, 2]), [0, 1, 2]]
)
def test_bad_labels(y):
    with pytest.raises(DataError):
        corrupt_labels(y, 0.5)
