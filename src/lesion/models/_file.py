"""The model file: one safetensors file of the state_dict plus the arch and metadata as JSON strings.

Extra tensors that belong with the model (e.g. the possibly corrupted labels it was trained on) are
stored beside the weights under the reserved prefix ``__extra__.``; they are not part of the model.

Nothing is ever unpickled: a pickled ``torch.save`` file is recognised and refused, because loading a
pickle runs whatever code it names.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lesion.errors import LesionError, ModelFileError
from lesion.models._arch import build_model
from lesion.util.files import open_regular
from lesion.util.limits import brief
from lesion.util.outputs import replace_into

FORMAT, VERSION = "lesion-model", "1"
_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}  # fmt: skip
EXTRA_PREFIX = "__extra__."  # tensor names under it are extras, not weights


def save_model(
    model: nn.Module,
    path: str | Path,
    *,
    arch: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write ``model``'s state_dict to one safetensors file at ``path``, with ``arch`` (how to rebuild
    it, see ``build_model``), JSON-able ``metadata`` and ``extra`` tensors by name (e.g.
    ``{"train_labels": y}``; ``load_model`` returns them in ``info["extra"]``). The write is atomic:
    readers never see half a file. Raises ModelFileError when the state_dict does not fit ``arch``.
    """
    path = Path(path)
    try:
        header = {"format": FORMAT, "version": VERSION, "arch": json.dumps(arch)}
        header["metadata"] = json.dumps(metadata or {})
    except (TypeError, ValueError) as e:
        raise LesionError(f"arch and metadata must be JSON-serialisable dicts: {e}") from None
    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:  # shared storage (tied weights): safetensors refuses
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    _check_fits({k: tuple(v.shape) for k, v in tensors.items()}, arch, f"cannot save to {path}")
    tensors |= _extras(extra)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        replace_into(Path(tmp), path)  # never over a device, FIFO or directory
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_model(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model saved at ``path``; returns it in eval mode on ``map_location`` and
    ``{"arch": ..., "metadata": ...}``, plus ``"extra"`` (name -> CPU tensor) when the file holds
    extra tensors. Raises ModelFileError for a missing, corrupt, foreign or pickled file, or weights
    that do not fit the saved arch.
    """
    path = Path(path)
    header = _read_header(path)
    arch, metadata = _lesion_metadata(header.get("__metadata__"), path)
    shapes = {
        k: tuple(v.get("shape", ()))
        for k, v in header.items()
        if k != "__metadata__" and not k.startswith(EXTRA_PREFIX)
    }
    _check_fits(shapes, arch, str(path))  # before reading any weights
    try:
        state = load_file(path, device="cpu")
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None
    extra = {k[len(EXTRA_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(EXTRA_PREFIX)}
    try:  # seeded, so the throwaway initial weights leave the caller's global RNG alone
        model = build_model(arch, seed=0)
    except LesionError as e:
        raise ModelFileError(f"{path}: the saved arch cannot be built: {e}") from None
    model.load_state_dict(state, strict=True)
    info = {"arch": arch, "metadata": metadata} | ({"extra": extra} if extra else {})
    return model.to(map_location).eval(), info


def _extras(extra: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """``extra`` as safetensors entries under ``EXTRA_PREFIX``, contiguous, on the CPU, unaliased."""
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise LesionError(f"extra is a {type(extra).__name__}; expected a dict of name -> tensor")
    out = {}
    for name, t in extra.items():
        if not isinstance(name, str) or not name:
            raise LesionError(f"extra tensor name {name!r}; expected a non-empty string")
        if not isinstance(t, torch.Tensor):
            raise LesionError(f"extra[{name!r}] is a {type(t).__name__}; expected a tensor")
        out[EXTRA_PREFIX + name] = t.detach().to("cpu").contiguous().clone()
    return out


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors header (tensor entries and ``__metadata__``), checked enough to explain garbage."""
    try:
        with open_regular(path, ModelFileError, "model file") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
            n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else None
            looks_safetensors = n is not None and 2 <= n <= min(size - 8, _MAX_HEADER) and head[8:9] == b"{"
            raw = f.read(n - 1) if looks_safetensors else b""
    except FileNotFoundError:
        raise ModelFileError(
            f"no model file at {path}; expected a file written by lesion.models.save_model"
        ) from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory; expected a model file") from None
    except OSError as e:
        raise ModelFileError(f"cannot read model file {path}: {e.strerror or e}") from None
    if n is not None and head[8:9] == b"{" and size - 8 < n <= _MAX_HEADER:  # larger: not a header at all
        raise ModelFileError(
            f"{path}: the safetensors header claims {n} bytes but the file holds {size} in all; "
            "the file is truncated"
        )
    if not looks_safetensors:  # a safetensors header length may begin with 0x80, so check pickles second
        if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
            raise ModelFileError(
                f"{path} looks like a pickled torch.save file; lesion refuses to load pickles because "
                "unpickling runs code. To convert a file you trust: state = torch.load(path, "
                "weights_only=True), load it into the model, then call lesion.models.save_model(model, "
                "new_path, arch=...)"
            )
        raise ModelFileError(
            f"{path} is not a safetensors model file ({size} bytes, no valid header); "
            "expected a file written by lesion.models.save_model"
        )
    try:
        header = json.loads(b"{" + raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: corrupt safetensors header ({e.__class__.__name__}: {e})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: corrupt safetensors header; JSON nested too deeply") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header; expected a JSON object")
    _check_entries(header, size - 8 - n, path)
    return header


def _check_entries(header: dict[str, Any], data_size: int, path: Path) -> None:
    """Every tensor needs a shape and a byte range inside the file; a truncated file fails here, and so
    do ranges with gaps or overlaps (safetensors itself refuses those, with a less clear message)."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ModelFileError(
                f"{path}: corrupt safetensors header; tensor {brief(name, 80)} has no valid shape"
            )
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelFileError(
                f"{path}: corrupt safetensors header; tensor {brief(name, 80)} has no data_offsets"
            )
        if not 0 <= offsets[0] <= offsets[1] <= data_size:
            raise ModelFileError(
                f"{path}: tensor {brief(name, 80)} needs bytes {offsets[0]}..{offsets[1]} but the file holds "
                f"{data_size} bytes of data; the file is truncated or corrupt"
            )
        itemsize = _DTYPE_BYTES.get(entry.get("dtype"))
        need, span = math.prod(shape) * (itemsize or 0), offsets[1] - offsets[0]  # Python ints: no overflow
        if itemsize is not None and span != need:
            raise ModelFileError(
                f"{path}: tensor {brief(name, 80)} of shape {shape} ({entry['dtype']}) takes {need:,} bytes, "
                f"but its data_offsets span {span:,}; the file is corrupt"
            )
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            raise ModelFileError(
                f"{path}: tensor {brief(name, 80)} starts at byte {start:,} of the data, where the previous "
                f"tensor ends at {end:,}; expected contiguous tensors (the file is corrupt)"
            )
        end = stop
    if spans and end != data_size:
        raise ModelFileError(
            f"{path}: the tensors end at byte {end:,} of {data_size:,} bytes of data; "
            "expected them to fill it (the file is corrupt)"
        )


def _lesion_metadata(meta: Any, path: Path) -> tuple[dict, dict]:
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{path} is a safetensors file without lesion metadata (format={meta.get('format')!r}); "
            f"expected format {FORMAT!r} as written by lesion.models.save_model"
        )
    if meta.get("version") != VERSION:
        raise ModelFileError(f"{path}: lesion model file version {meta.get('version')!r}; expected {VERSION}")
    try:
        arch, metadata = json.loads(meta["arch"]), json.loads(meta.get("metadata", "{}"))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: unreadable arch/metadata in the header ({e})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: arch/metadata in the header are JSON nested too deeply") from None
    if not isinstance(arch, dict) or not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: arch and metadata in the header must be JSON objects")
    return arch, metadata


def _check_fits(shapes: dict[str, tuple[int, ...]], arch: dict[str, Any], where: str) -> None:
    """The tensor names and shapes must be exactly those of the state_dict of the model ``arch`` builds."""
    try:
        with torch.device("meta"):  # no memory, no random draws
            expected = {k: tuple(v.shape) for k, v in build_model(arch).state_dict().items()}
    except LesionError as e:
        raise ModelFileError(f"{where}: arch {brief(arch)} cannot be built: {e}") from None
    got = shapes
    if got == expected:
        return
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = [
        f"{k} {got[k]} (expected {expected[k]})"
        for k in expected.keys() & got.keys()
        if got[k] != expected[k]
    ]
    parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(extra)}" if extra else ""]
    parts.append(f"wrong shapes: {_few(sorted(wrong), listed=False)}" if wrong else "")
    raise ModelFileError(
        f"{where}: weights do not fit arch {arch.get('kind')!r}: {'; '.join(p for p in parts if p)}"
    )


def _few(names: list[str], n: int = 10, *, listed: bool = True) -> str:
    """At most ``n`` names, each cut short, and how many in all: messages stay short for any file."""
    cut = [x if len(x) <= 100 else x[:100] + "..." for x in names[:n]]
    shown = repr(cut) if listed else ", ".join(cut)
    return shown + (f" ... ({len(names):,} in all)" if len(names) > n else "")
