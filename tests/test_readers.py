"""Readers of the official formats (IDX, CIFAR python and binary, image folders) and the datasets read
from files: exact round trips through fixture files, and clear refusals of malformed or hostile ones."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lesion.data import (
    DATASETS,
    load_dataset,
    load_image_folder,
    read_cifar_binary,
    read_cifar_python,
    read_idx,
    read_image_folder,
)
from lesion.errors import DataError
from tests.fixtures.dataset_files import (
    cifar_binary_bytes,
    cifar_python_bytes,
    gz,
    idx_bytes,
    write_cifar10,
    write_cifar100,
    write_image_folder,
    write_mnist,
)

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(7, 5, 3), (11,)])
def test_idx_round_trip(tmp_path, rng, compress, shape):
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    data = idx_bytes(a)
    path = tmp_path / "f-ubyte"
    path.write_bytes(gz(data) if compress else data)
    b = read_idx(path)
    assert b.dtype == np.uint8 and b.shape == shape and np.array_equal(a, b)
    b[0] = 1  # a writable array of its own


def test_idx_gzip_is_told_by_magic_not_name(tmp_path, rng):
    a = rng.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    (tmp_path / "zipped-without-suffix").write_bytes(gz(idx_bytes(a)))
    (tmp_path / "raw-with-suffix.gz").write_bytes(idx_bytes(a))
    assert np.array_equal(read_idx(tmp_path / "zipped-without-suffix"), a)
    assert np.array_equal(read_idx(tmp_path / "raw-with-suffix.gz"), a)


@pytest.mark.parametrize("magic", [0x00000802, 0x00000D03, 0x08030000])
def test_idx_bad_magic(tmp_path, magic):
    path = tmp_path / "bad.gz"
    path.write_bytes(gz(idx_bytes(np.zeros((2, 2, 2), np.uint8), magic=magic)))
    with pytest.raises(DataError, match=rf"bad\.gz: IDX magic number 0x{magic:08x}; expected 0x00000803"):
        read_idx(path)


@pytest.mark.parametrize(("extra", "holds"), [(b"\x00", "61"), (b"", "59")])
def test_idx_payload_must_match_header_exactly(tmp_path, extra, holds):
    data = idx_bytes(np.zeros((3, 4, 5), np.uint8)) + extra
    if not extra:
        data = data[:-1]
    path = tmp_path / "images"
    path.write_bytes(data)
    with pytest.raises(DataError, match=rf"images: IDX header says 3x4x5 = 60 bytes .* holds {holds} bytes"):
        read_idx(path)


def test_idx_too_short_for_its_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes.fromhex("00000803 00000002"))  # 3 dims announced, one given
    with pytest.raises(DataError, match="short: 8 bytes; expected an IDX header of 16 bytes"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="at least a 4-byte magic number"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path, rng):
    data = gz(idx_bytes(rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"cannot read .*nothing-here"):
        read_idx(tmp_path / "nothing-here")


# ---------------------------------------------------------------- CIFAR python batches


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("compress", [False, True])
def test_cifar10_python_round_trip(tmp_path, rng, protocol, compress):
    x = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 6)
    data = cifar_python_bytes(x, {"labels": y}, protocol=protocol)
    (tmp_path / "data_batch_1").write_bytes(gz(data) if compress else data)
    x2, y2 = read_cifar_python(tmp_path / "data_batch_1")
    assert x2.dtype == np.uint8 and x2.shape == (6, 3, 32, 32) and np.array_equal(x2, x)
    assert y2.dtype == np.int64 and np.array_equal(y2, y)


def test_cifar100_python_fine_and_coarse(tmp_path, rng):
    x = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    fine, coarse = rng.integers(0, 100, 5), rng.integers(0, 20, 5)
    path = tmp_path / "train"
    path.write_bytes(cifar_python_bytes(x, {"fine_labels": fine, "coarse_labels": coarse}, str_keys=True))
    assert np.array_equal(read_cifar_python(path, label="fine")[1], fine)
    assert np.array_equal(read_cifar_python(path, label="coarse")[1], coarse)
    with pytest.raises(DataError, match=r"no 'labels' entry; .* expected 'data' and 'labels'"):
        read_cifar_python(path)  # CIFAR-10's key
    with pytest.raises(DataError, match="label='fine_labels'; expected one of 'label', 'coarse', 'fine'"):
        read_cifar_python(path, label="fine_labels")


class _System:
    """Pickles as a call of os.system: what a hostile "dataset" would hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Call:
    """Pickles as a call of any named global."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("where", ["data", "labels", "top"])
def test_cifar_pickle_calling_os_system_is_refused_and_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = _System(f"touch {marker}")
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}
    if where == "top":
        batch = evil
    else:
        batch[where.encode()] = evil
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(
        DataError, match=r"data_batch_1: pickle refers to (posix|nt)\.system, which is refused"
    ):
        read_cifar_python(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (_Call(eval, "1 + 1"), "builtins.eval"),
        (_Call(getattr, "text", "upper"), "builtins.getattr"),
        (_Call(gzip.open, "x"), "gzip.open"),
    ],
)
def test_cifar_pickle_refuses_every_other_global(tmp_path, payload, named):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": payload}, protocol=4))
    with pytest.raises(DataError, match=rf"pickle refers to {named}, which is refused"):
        read_cifar_python(path)


def test_cifar_pickle_names_a_module_that_is_never_imported(tmp_path):
    # GLOBAL 'nonexistent_module_xyz boom', then call it: refused by name, no import attempted
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02cnonexistent_module_xyz\nboom\n)R.")
    with pytest.raises(DataError, match=r"nonexistent_module_xyz\.boom, which is refused"):
        read_cifar_python(path)


def test_cifar_pickle_codecs_only_latin1(tmp_path):
    import codecs

    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": _Call(codecs.encode, "abc", "rot13")}, protocol=2))
    with pytest.raises(DataError, match="encoding 'rot13'; only latin1 is allowed"):
        read_cifar_python(path)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ([1, 2, 3], "holds a list; expected a dict"),
        ({b"labels": [0]}, "no 'data' entry"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, r"'data' is float32 \(1, 3072\)"),
        (
            {b"data": np.zeros((1, 1024), np.uint8), b"labels": [0]},
            r"expected a uint8 array of shape \(N, 3072\)",
        ),
        ({b"data": b"raw", b"labels": [0]}, "'data' is bytes"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"shape \(1,\); expected \(2,\)"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "labels span 10..10; expected 0..9"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [b"x"]}, "not a list of integers"),
    ],
)
def test_cifar_python_malformed(tmp_path, batch, match):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=match):
        read_cifar_python(path)


def test_cifar_python_truncated_pickle(tmp_path, rng):
    data = cifar_python_bytes(rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8), {"labels": [1, 2, 3]})
    path = tmp_path / "test_batch"
    path.write_bytes(data[:-100])
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR python batch"):
        read_cifar_python(path)


# ---------------------------------------------------------------- CIFAR binary batches


def test_cifar10_binary_round_trip(tmp_path, rng):
    x = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 7)
    (tmp_path / "data_batch_1.bin").write_bytes(cifar_binary_bytes(x, y))
    x2, y2 = read_cifar_binary(tmp_path / "data_batch_1.bin")
    assert np.array_equal(x2, x) and np.array_equal(y2, y) and y2.dtype == np.int64


def test_cifar_binary_layout_is_label_then_planes(tmp_path):
    record = bytes([3]) + bytes([10]) * 1024 + bytes([20]) * 1024 + bytes([30]) * 1024
    (tmp_path / "b.bin").write_bytes(record)
    x, y = read_cifar_binary(tmp_path / "b.bin")
    assert y.tolist() == [3] and x[0, :, 5, 7].tolist() == [10, 20, 30]


def test_cifar100_binary_coarse_and_fine(tmp_path, rng):
    x = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    coarse, fine = rng.integers(0, 20, 4), rng.integers(0, 100, 4)
    (tmp_path / "train.bin").write_bytes(cifar_binary_bytes(x, coarse, fine))
    xf, yf = read_cifar_binary(tmp_path / "train.bin", label="fine")
    xc, yc = read_cifar_binary(tmp_path / "train.bin", label="coarse")
    assert np.array_equal(xf, x) and np.array_equal(xc, x)
    assert np.array_equal(yf, fine) and np.array_equal(yc, coarse)


@pytest.mark.parametrize(
    ("size", "label", "match"),
    [
        (3073 * 2 + 1, "label", r"6,147 bytes is not a positive whole number of 3,073-byte records"),
        (3073 * 3, "fine", r"9,219 bytes is not a positive whole number of 3,074-byte records"),
        (0, "label", r"0 bytes is not a positive whole number"),
    ],
)
def test_cifar_binary_wrong_length(tmp_path, size, label, match):
    (tmp_path / "x.bin").write_bytes(bytes(size))
    with pytest.raises(DataError, match=match):
        read_cifar_binary(tmp_path / "x.bin", label=label)


def test_cifar_binary_label_out_of_range(tmp_path):
    x = np.zeros((2, 3, 32, 32), np.uint8)
    (tmp_path / "x.bin").write_bytes(cifar_binary_bytes(x, np.array([1, 12])))
    with pytest.raises(DataError, match=r"x\.bin: label labels span 1..12; expected 0..9"):
        read_cifar_binary(tmp_path / "x.bin")
    (tmp_path / "y.bin").write_bytes(cifar_binary_bytes(x, np.array([20, 0]), np.array([5, 99])))
    with pytest.raises(DataError, match=r"coarse labels span 0\.\.20; expected 0\.\.19"):
        read_cifar_binary(tmp_path / "y.bin", label="coarse")


# ---------------------------------------------------------------- image folders


def test_image_folder_round_trip_rgb(tmp_path, rng):
    cats = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    dogs = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(2)]
    write_image_folder(tmp_path, {"dogs": dogs, "cats": cats})
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / "cats" / ".hidden.png").write_bytes(b"")
    x, y, classes = read_image_folder(tmp_path)
    assert classes == ("cats", "dogs") and y.tolist() == [0, 0, 0, 1, 1]
    assert x.shape == (5, 3, 6, 5) and x.dtype == np.uint8
    assert np.array_equal(x, np.stack(cats + dogs).transpose(0, 3, 1, 2))


def test_image_folder_greyscale_and_modes(tmp_path, rng):
    a = [rng.integers(0, 256, (4, 4), dtype=np.uint8) for _ in range(2)]
    write_image_folder(tmp_path, {"a": a, "b": a})
    x, _, _ = read_image_folder(tmp_path)
    assert x.shape == (4, 1, 4, 4) and np.array_equal(x[:2, 0], np.stack(a))
    x3, _, _ = read_image_folder(tmp_path, mode="RGB")
    assert x3.shape == (4, 3, 4, 4) and np.array_equal(x3[:, 0], x3[:, 2])
    with pytest.raises(DataError, match="mode='CMYK'; expected 'L'"):
        read_image_folder(tmp_path, mode="CMYK")


def test_image_folder_sizes(tmp_path, rng):
    write_image_folder(tmp_path, {"a": [np.zeros((8, 6), np.uint8)], "b": [np.zeros((4, 4), np.uint8)]})
    with pytest.raises(DataError, match=r"images differ in size: .*000\.png is 6x8, .*000\.png is 4x4"):
        read_image_folder(tmp_path)
    x, _, _ = read_image_folder(tmp_path, size=(3, 5))
    assert x.shape == (2, 1, 3, 5)
    with pytest.raises(DataError, match=r"size=\(3, 0\); expected \(height, width\)"):
        read_image_folder(tmp_path, size=(3, 0))


def test_image_folder_refusals(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        read_image_folder(tmp_path / "absent")
    with pytest.raises(DataError, match="has no class subdirectories"):
        read_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty holds no images; expected files ending in"):
        read_image_folder(tmp_path)
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        read_image_folder(tmp_path)


def test_folder_dataset_split_and_normalisation(tmp_path, rng):
    images = {c: [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(10)] for c in "xyz"}
    write_image_folder(tmp_path, images)
    d = load_dataset("folder", root=tmp_path, seed=1, test_fraction=0.3)
    assert d.classes == ("x", "y", "z") and d.input_shape == (3, 4, 4)
    assert d.y_train.bincount().tolist() == [7, 7, 7] and d.y_test.bincount().tolist() == [3, 3, 3]
    per_channel = d.x_train.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1, correction=0), torch.ones(3), atol=1e-4)
    assert load_dataset("folder", root=tmp_path, seed=1, test_fraction=0.3) is d  # cached
    again = load_image_folder(tmp_path, seed=1, test_fraction=0.3)
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_train, d.y_train)
    assert not torch.equal(load_image_folder(tmp_path, seed=2).y_train, again.y_train)
    small = load_image_folder(tmp_path, size=(2, 2), mode="L")
    assert small.input_shape == (1, 2, 2) and small.name == tmp_path.name


def test_folder_dataset_too_small_to_stratify(tmp_path):
    write_image_folder(tmp_path, {"a": [np.zeros((2, 2), np.uint8)] * 3, "b": [np.zeros((2, 2), np.uint8)]})
    with pytest.raises(DataError, match="smallest class has 1; expected at least 2 per class"):
        load_dataset("folder", root=tmp_path)
    with pytest.raises(DataError, match="folder: no root given"):
        load_dataset("folder")


# ---------------------------------------------------------------- datasets read from files


def test_dataset_names():
    assert DATASETS == ("digits", "mnist5k", "mnist", "fashion-mnist", "cifar10", "cifar100", "folder")


def test_mnist_from_files(tmp_path, rng):
    arrays = write_mnist(tmp_path, rng)
    d = load_dataset("mnist", root=tmp_path, seed=5, test_fraction=0.5)  # official split: no effect
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_test.shape == (10, 1, 28, 28)
    assert d.classes == tuple("0123456789") and d.x_train.dtype == torch.float32
    raw = d.x_train * 0.3081 + 0.1307
    assert torch.allclose(
        raw * 255, torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()[:, None], atol=1e-3
    )
    assert d.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert load_dataset("mnist", root=tmp_path) is d  # one cache entry whatever the split arguments


def test_mnist_uncompressed_in_torchvision_layout(tmp_path, rng):
    raw = tmp_path / "MNIST" / "raw"
    arrays = write_mnist(raw, rng)
    for stem in arrays:  # decompressed copies only
        (raw / stem).write_bytes(gzip.decompress((raw / f"{stem}.gz").read_bytes()))
        (raw / f"{stem}.gz").unlink()
    assert load_dataset("mnist", root=tmp_path).y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_mnist_mismatched_counts(tmp_path, rng):
    write_mnist(tmp_path, rng)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gz(idx_bytes(np.zeros(9, np.uint8))))
    with pytest.raises(DataError, match=r"holds 10 images but .*t10k-labels-idx1-ubyte\.gz 9 labels"):
        load_dataset("mnist", root=tmp_path)
    # images where labels belong: the magic number tells
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gz(idx_bytes(np.zeros((10, 28, 28), np.uint8))))
    with pytest.raises(DataError, match=r"ubyte\.gz 3-d data; expected 3-d images \(IDX magic 0x00000803\)"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("binary", [True, False])
def test_cifar10_from_files(tmp_path, rng, binary):
    sub = "cifar-10-batches-bin" if binary else "cifar-10-batches-py"
    written = write_cifar10(tmp_path / sub, rng, binary=binary)
    d = load_dataset("cifar10", root=tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.classes[:3] == ("airplane", "automobile", "bird") and d.n_classes == 10
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    pixels = (d.x_test * std[:, None, None] + mean[:, None, None]) * 255
    assert torch.allclose(pixels, torch.from_numpy(written["test_batch"][0]).float(), atol=1e-3)
    y_train = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert d.y_train.tolist() == y_train.tolist()


@pytest.mark.parametrize("binary", [True, False])
def test_cifar100_from_files(tmp_path, rng, binary):
    written = write_cifar100(tmp_path, rng, binary=binary)  # the files straight in root
    d = load_dataset("cifar100", root=tmp_path)
    assert d.n_classes == 100 and d.classes[0] == "apple" and d.classes[-1] == "worm"
    assert d.y_train.tolist() == written["train"][2].tolist()  # fine labels
    assert d.x_train.shape == (6, 3, 32, 32)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("mnist", r"mnist: no root given.* lesion\.data\.download\('mnist', 'root'\)"),
        ("cifar10", r"cifar-10-binary\.tar\.gz from https://www\.cs\.toronto\.edu/~kriz/ in root and unpack"),
        ("cifar100", "cifar100: no root given"),
    ],
)
def test_missing_dataset_says_how_to_get_it(name, match):
    with pytest.raises(DataError, match=match):
        load_dataset(name)


def test_missing_files_in_root_say_how_to_get_them(tmp_path):
    with pytest.raises(
        DataError, match=r"mnist: no train-images-idx3-ubyte\.gz \(or train-images-idx3-ubyte\) in"
    ):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(DataError, match=r"no CIFAR-10 batches in .*put the official files cifar-10-binary"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*download\('fashion-mnist'"):
        load_dataset("fashion-mnist", root=tmp_path)
    with pytest.raises(DataError, match="is not a directory"):
        load_dataset("cifar100", root=tmp_path / "absent")


@pytest.mark.skipif(
    not (FASHION_DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package():
    d = load_dataset("fashion-mnist")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.y_train.bincount().tolist() == [6000] * 10 and d.y_test.bincount().tolist() == [1000] * 10
    assert d.classes[0] == "T-shirt/top" and d.classes[-1] == "Ankle boot"
    # the published constants are this training set's: normalised pixels have mean 0 and SD 1
    assert float(d.x_train.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(d.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    assert float(d.x_train.min()) == pytest.approx(-0.2860 / 0.3530, abs=1e-6)  # pixel 0
    assert float(d.x_train.max()) == pytest.approx(0.7140 / 0.3530, abs=1e-6)  # pixel 255
