"""A folder of images per class, ``root/<class name>/<image>``, read with Pillow."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lesion.errors import DataError

IMAGE_SUFFIXES = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)
MAX_IMAGE_PIXELS = 1 << 24  # one image's width x height, checked from its header before decoding
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def read_image_folder(
    root: str | Path, *, size: tuple[int, int] | None = None, mode: str | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images ``(N, C, H, W)`` uint8, labels ``(N,)`` int64 and class names from ``root/<class>/*``.

    Classes are the subdirectories of ``root`` sorted by name; a class's images (files with an image
    suffix, hidden files skipped) are read in name order. ``mode`` is ``"L"`` (1 channel) or ``"RGB"``
    (3 channels); by default ``"L"`` when every image is greyscale, else ``"RGB"``. Without ``size``
    all images must share one size; with ``size=(height, width)`` each is resized (bilinear).
    """
    from PIL import Image

    root = Path(root)
    files, labels, classes = _list_images(root)
    if mode is None:
        mode = "L" if all(_mode(Image, p) in _GREY_MODES for p in files) else "RGB"
    if mode not in ("L", "RGB"):
        raise DataError(f"mode={mode!r}; expected 'L' (greyscale) or 'RGB'")
    target = None if size is None else _check_size(size)[::-1]  # Pillow sizes are (width, height)
    arrays, first = [], None
    for path in files:
        img = _load(Image, path, mode, target)
        first = first or (path, img.size)
        if img.size != first[1]:
            raise DataError(
                f"images differ in size: {first[0]} is {_wxh(first[1])}, {path} is {_wxh(img.size)} "
                "(width x height); expected one size, or pass size=(height, width) to resize them"
            )
        arrays.append(np.asarray(img, dtype=np.uint8))
    x = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.asarray(labels, dtype=np.int64), classes


def _list_images(root: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory; expected root/<class name>/<image files>")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"image folder {root} has no class subdirectories; expected root/<class name>/<images>"
        )
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise DataError(
                f"class folder {class_dir} holds no images; expected files ending in "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}"
            )
        files += found
        labels += [label] * len(found)
    return files, labels, tuple(p.name for p in class_dirs)


def _mode(image_module, path: Path) -> str:
    """The image's mode, from its header alone."""
    with _opened(image_module, path) as img:
        return img.mode


def _load(image_module, path: Path, mode: str, size: tuple[int, int] | None):
    """The decoded image in ``mode``, resized to ``size`` (width, height) when given."""
    with _opened(image_module, path) as img:
        try:
            img = img.convert(mode)  # decodes the pixels, so the file can be closed
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {path}: {e}") from None
    if size is not None and img.size != size:
        img = img.resize(size, image_module.Resampling.BILINEAR)
    return img


@contextmanager
def _opened(image_module, path: Path) -> Iterator:
    """``Image.open(path)``, refusing an image whose header claims more than Pillow's
    ``MAX_IMAGE_PIXELS`` (a decompression bomb) before any pixel is decoded."""
    bomb = (image_module.DecompressionBombError, image_module.DecompressionBombWarning)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", image_module.DecompressionBombWarning)
            img = image_module.open(path)
    except bomb:
        raise DataError(_too_large(path, "more pixels than Pillow allows")) from None
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path}: {e}") from None
    with img:
        width, height = img.size  # from the header: nothing decoded yet
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(_too_large(path, f"{width} x {height} = {width * height:,} pixels"))
        yield img


def _too_large(path: Path, claim: str) -> str:
    return (
        f"image {path} is too large to decode safely: its header claims {claim}; expected at most "
        f"{MAX_IMAGE_PIXELS:,} pixels (lesion.data._folder.MAX_IMAGE_PIXELS, one limit for every image)"
    )


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    ok = (
        isinstance(size, tuple | list)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    )
    if not ok:
        raise DataError(f"size={size!r}; expected (height, width), two positive ints")
    return int(size[0]), int(size[1])


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
