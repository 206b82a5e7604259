"""Readers of the official dataset file formats: IDX (MNIST, Fashion-MNIST) and CIFAR batches.

Every reader validates what it reads (magic numbers, dimensions, exact lengths, label ranges) and
refuses a malformed file with a ``DataError`` that names the file, what it found and what it expected.
CIFAR's "python version" batches are pickles: they are read with an unpickler that can build numpy
arrays and nothing else, so a tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lesion.errors import DataError
from lesion.util.files import open_regular

IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # uint8 with 3 dimensions / with 1 dimension
CIFAR_PIXELS = 3 * 32 * 32  # bytes per image: 1,024 red, then 1,024 green, then 1,024 blue
CIFAR_LABELS = {"label": 10, "coarse": 20, "fine": 100}  # label kind -> number of classes
_GZIP_MAGIC = b"\x1f\x8b"
MAX_DATA_BYTES = 1 << 30  # largest dataset file, once inflated (CIFAR-100's train batch is 150 MB)


def read_bytes(path: str | Path, *, limit: int = MAX_DATA_BYTES) -> bytes:
    """The contents of ``path``, decompressed when it is gzip (told by its magic bytes, not its name).

    At most ``limit`` bytes are inflated: a small gzip that would inflate past it is refused while
    inflating, not after.
    """
    path = Path(path)
    with _open(path) as f:
        data = _read(f, path, limit + 1)
    if len(data) > limit:
        raise DataError(
            f"{path}: more than {limit:,} bytes{' once decompressed' if _is_gzip(path) else ''}; "
            f"expected a dataset file of at most {limit:,} bytes (lesion.data.MAX_DATA_BYTES)"
        )
    return data


@contextmanager
def _open(path: Path) -> Iterator[BinaryIO]:
    """A binary stream of ``path``'s contents, inflated lazily when it is gzip; only regular files are
    opened (a FIFO or device would block or never end)."""
    try:
        raw = open_regular(path, DataError, "data file")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    with raw:
        if raw.read(2) == _GZIP_MAGIC:
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield f
        else:
            raw.seek(0)
            yield raw


open_data = _open


def _is_gzip(path: Path) -> bool:
    try:
        with open_regular(path, DataError, "data file") as f:
            return f.read(2) == _GZIP_MAGIC
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e


def _read(f: BinaryIO, path: Path, n: int) -> bytes:
    try:
        return f.read(n)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e}); expected a complete gzip file") from e


def read_idx(path: str | Path, *, limit: int = MAX_DATA_BYTES) -> np.ndarray:
    """An IDX file of uint8 images ``(N, rows, cols)`` or labels ``(N,)``, gzipped or not.

    The header is the magic number (``0x00000803`` for images, ``0x00000801`` for labels) and one
    big-endian uint32 per dimension; the payload must hold exactly the product of the dimensions,
    which is checked against ``limit`` from the header, before the payload is read or inflated.
    """
    path = Path(path)
    with _open(path) as f:
        head = _read(f, path, 4)
        if len(head) < 4:
            n = len(head)
            raise DataError(f"{path}: {n} bytes; expected an IDX file (at least a 4-byte magic number)")
        magic = int.from_bytes(head, "big")
        if magic not in (IDX_IMAGES, IDX_LABELS):
            raise DataError(
                f"{path}: IDX magic number 0x{magic:08x}; expected 0x{IDX_IMAGES:08x} (uint8 images) "
                f"or 0x{IDX_LABELS:08x} (uint8 labels)"
            )
        ndim = magic & 0xFF
        header = 4 + 4 * ndim
        raw_dims = _read(f, path, 4 * ndim)
        if len(raw_dims) < 4 * ndim:
            raise DataError(f"{path}: {4 + len(raw_dims)} bytes; expected an IDX header of {header} bytes")
        dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
        expected = math.prod(dims)  # a Python int: no overflow
        shape = "x".join(str(d) for d in dims)
        if expected > limit:
            raise DataError(
                f"{path}: IDX header says {shape} = {expected:,} bytes of data; expected at most "
                f"{limit:,} (lesion.data.MAX_DATA_BYTES); nothing was inflated"
            )
        data = _read(f, path, expected + 1)
    if len(data) != expected:
        held = f"{len(data):,}"
        if len(data) > expected:  # only one byte too many was read: say how many there are, if cheap
            held = f"at least {held}" if _is_gzip(path) else f"{path.stat().st_size - header:,}"
        raise DataError(
            f"{path}: IDX header says {shape} = {expected:,} bytes of data; "
            f"the file holds {held} bytes after the {header}-byte header"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims).copy()


def read_cifar_binary(path: str | Path, *, label: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR "binary version" batch: images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64.

    ``label="label"`` reads CIFAR-10 records (1 label byte + 3,072 pixel bytes); ``"coarse"`` or
    ``"fine"`` read CIFAR-100 records (coarse label byte, fine label byte, 3,072 pixel bytes).
    """
    n_classes = _check_label_kind(label)
    n_label_bytes = 1 if label == "label" else 2
    record = n_label_bytes + CIFAR_PIXELS
    path = Path(path)
    data = read_bytes(path)
    if not data or len(data) % record:
        kind = "CIFAR-10" if label == "label" else "CIFAR-100"
        raise DataError(
            f"{path}: {len(data):,} bytes is not a positive whole number of {record:,}-byte records "
            f"({n_label_bytes} label byte{'s' * (n_label_bytes > 1)} + {CIFAR_PIXELS:,} pixel bytes); "
            f"expected a {kind} binary batch"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)  # (N, record)
    labels = rows[:, 0 if label in ("label", "coarse") else 1].astype(np.int64)
    _check_labels(path, labels, n_classes, label)
    return rows[:, n_label_bytes:].reshape(-1, 3, 32, 32).copy(), labels


def read_cifar_python(path: str | Path, *, label: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR "python version" batch: images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64.

    ``label`` picks the labels: ``"label"`` (CIFAR-10's ``labels``), ``"coarse"`` or ``"fine"``
    (CIFAR-100's ``coarse_labels`` / ``fine_labels``). The pickle is read by an unpickler that can
    only rebuild numpy arrays (see ``_ArrayUnpickler``); anything else in it is refused.
    """
    n_classes = _check_label_kind(label)
    path = Path(path)
    data = read_bytes(path)
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # a malformed pickle can fail in many ways; none of them is usable data
        raise DataError(f"{path}: not a readable CIFAR python batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: holds a {type(batch).__name__}; expected a dict (a CIFAR python batch)")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    key = {"label": "labels", "coarse": "coarse_labels", "fine": "fine_labels"}[label]
    missing = [k for k in ("data", key) if k not in batch]
    if missing:
        raise DataError(
            f"{path}: no {' or '.join(repr(k) for k in missing)} entry; holds {sorted(map(str, batch))}; "
            f"expected 'data' and {key!r} (label={label!r})"
        )
    x = batch["data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != CIFAR_PIXELS:
        found = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{path}: 'data' is {found}; expected a uint8 array of shape (N, {CIFAR_PIXELS})")
    try:
        labels = np.asarray(batch[key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{path}: {key!r} is not a list of integers ({e})") from None
    if labels.shape != (len(x),):
        raise DataError(f"{path}: {key!r} has shape {labels.shape}; expected ({len(x)},) to match 'data'")
    _check_labels(path, labels, n_classes, label)
    return x.reshape(-1, 3, 32, 32).copy(), labels


def _check_label_kind(label: str) -> int:
    if label not in CIFAR_LABELS:
        raise DataError(f"label={label!r}; expected one of {', '.join(map(repr, CIFAR_LABELS))}")
    return CIFAR_LABELS[label]


def _check_labels(path: Path, labels: np.ndarray, n_classes: int, label: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(
            f"{path}: {label} labels span {labels.min()}..{labels.max()}; expected 0..{n_classes - 1}"
        )


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` restricted to what pickle protocol 2 uses it for: bytes stored as latin-1."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise DataError(f"pickle calls _codecs.encode with encoding {encoding!r}; only latin1 is allowed")
    return text.encode("latin1")


def _numpy_reconstructors() -> dict[tuple[str, str], object]:
    # Take the functions from numpy itself, not by importing their module path: numpy 2 moved
    # numpy.core to numpy._core, and importing the old path warns. Both names appear in real files.
    reconstruct = np.array(0).__reduce__()[0]  # numpy's _reconstruct (pickle protocols 0-4)
    frombuffer = np.array(0).__reduce_ex__(5)[0]  # numpy's _frombuffer (pickle protocol 5)
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array-building names; every other global is refused.

    Dicts, lists, strings and numbers need no globals. Refusing in ``find_class`` happens before the
    name is looked up, so a pickle naming ``os.system`` fails without importing or calling anything.
    """

    _ALLOWED = _numpy_reconstructors()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in self._ALLOWED)
            raise DataError(
                f"pickle refers to {module}.{name}, which is refused; "
                f"a CIFAR python batch needs only {allowed}"
            ) from None

    def persistent_load(self, pid: object) -> object:
        raise DataError("pickle uses persistent ids, which are refused; expected a plain CIFAR python batch")
