"""``.npy`` arrays (alone or inside an ``.npz``) read only after their header is checked: the header's
shape times the item size must equal the bytes that follow it and stay under the limit, so a 1 kB
header claiming 10^12 elements is refused before numpy allocates anything."""

from __future__ import annotations

import io
import math
import zipfile
from typing import BinaryIO

import numpy as np

from lesion.errors import DataError


def read_npy(stream: BinaryIO, size: int, where: str, limit: int) -> np.ndarray:
    """The array in ``stream`` (``size`` bytes in all), its header checked first; no pickles."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{where}: not a readable .npy array ({e})") from None
    if dtype.hasobject:
        raise DataError(
            f"{where}: holds Python objects (dtype {dtype}); expected numbers (pickles are refused)"
        )
    need = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    left = size - stream.tell()
    if need > limit:
        raise DataError(
            f"{where}: its header claims shape {shape} of {dtype} = {need:,} bytes, over the limit of "
            f"{limit:,} (lesion.data.MAX_DATA_BYTES); nothing was read"
        )
    if need != left:
        raise DataError(
            f"{where}: its header claims shape {shape} ({need:,} bytes) but {left:,} bytes follow it"
        )
    data = stream.read(need)
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
    return array.reshape(shape, order="F" if fortran else "C").copy()


def read_npz(source, where: str, limit: int) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (a path or a binary stream), each member's header checked before it is
    inflated; the zip directory's sizes are checked against ``limit`` first."""
    try:
        with zipfile.ZipFile(source) as z:
            members = [i for i in z.infolist() if not i.is_dir()]
            total = sum(i.file_size for i in members)
            if total > limit:
                raise DataError(
                    f"{where}: its arrays take {total:,} bytes, over the limit of {limit:,} bytes "
                    "(lesion.data.MAX_DATA_BYTES); nothing was inflated"
                )
            out = {}
            for info in members:
                name = info.filename.removesuffix(".npy")
                with z.open(info) as f:
                    out[name] = read_npy(f, info.file_size, f"{where}[{name}]", limit)
            return out
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        raise DataError(f"{where}: not a readable .npz file ({e})") from None


def read_npy_bytes(raw: bytes, where: str, limit: int) -> np.ndarray:
    return read_npy(io.BytesIO(raw), len(raw), where, limit)
