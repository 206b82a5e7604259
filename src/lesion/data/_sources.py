"""The official datasets read from files: where their files come from, where they are looked for, and
what they hold (class names, per-channel normalisation constants of the training set).

Each SHA-256 below was checked against several independent public sources (torchvision's and
TensorFlow Datasets' checksum tables, Keras, and projects that pin the same files); none was guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lesion.data._formats import read_cifar_binary, read_cifar_python, read_idx
from lesion.errors import DataError

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class Source:
    """Where a dataset's official files are published, with their expected SHA-256 digests.

    ``files`` pairs each file name with its digest (None would mean "not verified": ``download``
    refuses such a file). ``archive_dir`` is the directory a tar archive unpacks to.
    """

    base_url: str
    files: tuple[tuple[str, str | None], ...]
    archive_dir: str | None = None


SOURCES: dict[str, Source] = {
    "mnist": Source(  # CVDF's mirror of yann.lecun.com/exdb/mnist (the original host now refuses bots)
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        (
            (
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ),
    ),
    "fashion-mnist": Source(  # the files in Zalando's repository (same bytes as their S3 bucket)
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        (
            (
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            ),
            ("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            ("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ),
    ),
    "cifar10": Source(  # the "binary version": no pickle involved
        "https://www.cs.toronto.edu/~kriz/",
        (("cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),),
        archive_dir="cifar-10-batches-bin",
    ),
    "cifar100": Source(
        "https://www.cs.toronto.edu/~kriz/",
        (("cifar-100-binary.tar.gz", "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"),),
        archive_dir="cifar-100-binary",
    ),
}

_PYTHON_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}  # the pickled versions

# per-channel mean and standard deviation of each training set's pixels in [0, 1]
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

FASHION_CLASSES = (
    *("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"),
    *("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
    can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
    pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
    seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table
    tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
    worm""".split()  # noqa: SIM905 (100 names read better as text)
)  # the fine labels, in label order (alphabetical)


class Raw(NamedTuple):
    """A dataset as read, before splitting and normalising."""

    x_train: np.ndarray  # (N, C, H, W): uint8 in 0..255, or floats in [0, 1]
    y_train: np.ndarray  # (N,) integer labels
    x_test: np.ndarray | None  # (M, C, H, W); None: no official test set, split x_train
    y_test: np.ndarray | None  # (M,)
    classes: tuple[str, ...]


def read_idx_dataset(name: str, root: str | None) -> Raw:
    """MNIST or Fashion-MNIST from the four official IDX files (gzipped or not) in ``root``."""
    if root is None and name == "fashion-mnist":
        root = str(FASHION_MNIST_DEBIAN)
    folder = _require_root(name, root)
    # the files themselves, or torchvision's layout under root
    dirs = [folder, folder / ("FashionMNIST" if name == "fashion-mnist" else "MNIST") / "raw"]
    paths = []
    for stem in IDX_STEMS:
        found = [d / f for d in dirs for f in (f"{stem}.gz", stem) if (d / f).is_file()]
        if not found:
            raise DataError(f"{name}: no {stem}.gz (or {stem}) in {folder}; {_how_to_get(name, folder)}")
        paths.append(found[0])
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    for x, y, px, py in ((x_train, y_train, *paths[:2]), (x_test, y_test, *paths[2:])):
        if x.ndim != 3 or y.ndim != 1:
            raise DataError(
                f"{name}: {px} holds {x.ndim}-d data and {py} {y.ndim}-d data; "
                "expected 3-d images (IDX magic 0x00000803) and 1-d labels (0x00000801)"
            )
        if len(x) != len(y):
            raise DataError(
                f"{name}: {px} holds {len(x):,} images but {py} {len(y):,} labels; expected equal"
            )
        if y.size and y.max() >= 10:
            raise DataError(f"{name}: {py} holds label {y.max()}; expected labels 0..9")
    classes = FASHION_CLASSES if name == "fashion-mnist" else tuple("0123456789")
    return Raw(x_train[:, None], y_train, x_test[:, None], y_test, classes)


def read_cifar10(root: str | None) -> Raw:
    """CIFAR-10 from its binary batches (preferred: no pickle) or its python batches under ``root``."""
    folder = _require_root("cifar10", root)
    train = [f"data_batch_{i}" for i in range(1, 6)]
    for sub in (SOURCES["cifar10"].archive_dir, _PYTHON_DIRS["cifar10"], "."):
        d = folder / sub
        if all((d / f"{f}.bin").is_file() for f in [*train, "test_batch"]):
            return _cifar(d, [f"{f}.bin" for f in train], "test_batch.bin", "label", CIFAR10_CLASSES)
        if all((d / f).is_file() for f in [*train, "test_batch"]):
            return _cifar(d, train, "test_batch", "label", CIFAR10_CLASSES)
    raise DataError(f"cifar10: no CIFAR-10 batches in {folder}; {_how_to_get('cifar10', folder)}")


def read_cifar100(root: str | None) -> Raw:
    """CIFAR-100 (fine labels) from its binary files (preferred) or its python files under ``root``."""
    folder = _require_root("cifar100", root)
    for sub in (SOURCES["cifar100"].archive_dir, _PYTHON_DIRS["cifar100"], "."):
        d = folder / sub
        if (d / "train.bin").is_file() and (d / "test.bin").is_file():
            return _cifar(d, ["train.bin"], "test.bin", "fine", CIFAR100_CLASSES)
        if (d / "train").is_file() and (d / "test").is_file():
            return _cifar(d, ["train"], "test", "fine", CIFAR100_CLASSES)
    raise DataError(f"cifar100: no CIFAR-100 files in {folder}; {_how_to_get('cifar100', folder)}")


def _cifar(folder: Path, train: list[str], test: str, label: str, classes: tuple[str, ...]) -> Raw:
    read = read_cifar_binary if test.endswith(".bin") else read_cifar_python
    parts = [read(folder / f, label=label) for f in train]
    x_test, y_test = read(folder / test, label=label)
    x_train = np.concatenate([x for x, _ in parts])  # (N, 3, 32, 32) uint8
    y_train = np.concatenate([y for _, y in parts])
    return Raw(x_train, y_train, x_test, y_test, classes)


def _require_root(name: str, root: str | None) -> Path:
    if root is None:
        raise DataError(
            f"{name}: no root given; expected root= a directory of its files: {_how_to_get(name)}"
        )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"{name}: root {folder} is not a directory; {_how_to_get(name, folder)}")
    return folder


def _how_to_get(name: str, folder: Path | None = None) -> str:
    """One sentence on where the dataset's files come from and where to put them."""
    source = SOURCES[name]
    where = str(folder) if folder is not None else "root"
    files = ", ".join(f for f, _ in source.files)
    unpack = ""
    if source.archive_dir:
        unpack = (
            f" and unpack it there (it holds {source.archive_dir}/; "
            f"the python version's {_PYTHON_DIRS[name]}/ works too)"
        )
    text = (
        f"put the official files {files} from {source.base_url} in {where}{unpack}, "
        f"or run lesion.data.download({name!r}, {where!r})"
    )
    if name == "fashion-mnist":
        text = (
            f"install Debian's package (apt-get install dataset-fashion-mnist: files in "
            f"{FASHION_MNIST_DEBIAN}), or {text}"
        )
    return text
