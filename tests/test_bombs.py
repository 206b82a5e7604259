"""Sizes read from files are bounded before anything is allocated (issue 12, item 7): model shapes and
widths, IDX/CIFAR headers against the inflated-size limit, Pillow's bomb check, deeply nested JSON."""

from __future__ import annotations

import gzip
import json
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from lesion.cli import app
from lesion.data import read_idx, read_image_folder
from lesion.data._formats import read_bytes
from lesion.errors import DataError, LesionError, ModelFileError
from lesion.models import MAX_INPUT_ELEMENTS, build_model, load_model

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


def refusing(fn, *args, **kwargs):
    def call() -> None:
        with pytest.raises(DataError):
            fn(*args, **kwargs)

    return call


def lesion_file(path: Path, state: dict, arch, metadata: str = "{}") -> Path:
    arch_text = arch if isinstance(arch, str) else json.dumps(arch)
    meta = {"format": "lesion-model", "version": "1", "arch": arch_text, "metadata": metadata}
    save_file(state, str(path), metadata=meta)
    return path


def test_an_input_shape_no_weight_ties_is_capped(tmp_path):
    arch = {"kind": "convnet", "input_shape": [1, 8, 8], "n_classes": 2, "channels": [2], "strides": [1]}
    state = build_model(arch).state_dict()
    path = lesion_file(tmp_path / "m.safetensors", state, {**arch, "input_shape": [1, 30000, 30000]})
    start = time.perf_counter()
    result = invoke("layers", path)
    assert result.exit_code == 2 and "900,000,000 elements per example" in result.output, result.output
    assert f"at most {MAX_INPUT_ELEMENTS:,}" in result.output and time.perf_counter() - start < 5
    with pytest.raises(ModelFileError, match="MAX_INPUT_ELEMENTS"):
        load_model(path)


@pytest.mark.parametrize(
    "flags",
    [["--widths", "1000000000"], ["--arch", "convnet", "--width-mult", "1e12"]],
    ids=["widths", "mult"],
)
def test_huge_widths_are_refused_before_allocation(tmp_path, flags):
    result = invoke("train", *flags, "--dataset", "digits", "--out", tmp_path / "m.safetensors")
    assert result.exit_code == 2, result.output
    assert "parameters; expected at most" in result.output or "too large to build" in result.output
    assert "Traceback" not in result.output


def test_build_model_counts_parameters_on_the_meta_device():
    with pytest.raises(LesionError, match="MAX_PARAMETERS"):
        build_model({"kind": "mlp", "input_shape": [784], "widths": [10**9], "n_classes": 10})


def idx_header(*dims: int) -> bytes:
    return struct.pack(">I", 0x0800 | len(dims)) + b"".join(struct.pack(">I", d) for d in dims)


def test_an_idx_gzip_bomb_is_refused_from_its_header_before_inflating(tmp_path):
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    payload = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = payload.compress(idx_header(16, 10000, 10000)) + payload.compress(bytes(50 << 20))
    path.write_bytes(body + payload.flush())  # ~50 KB on disk; 50 MB inflated; claims 1.6 GB
    assert path.stat().st_size < 1 << 20
    with pytest.raises(DataError, match="16x10000x10000 = 1,600,000,000 bytes of data; expected at most"):
        read_idx(path)
    assert peak_mb(refusing(read_idx, path)) < 2  # the old reader inflated all 50 MB first


def test_idx_dimensions_whose_product_overflows_int64_are_refused(tmp_path):
    path = tmp_path / "overflow-idx3-ubyte"
    path.write_bytes(idx_header(2**31, 2**31, 4))  # 2**64 bytes: np.prod wraps it to 0
    with pytest.raises(DataError, match="18,446,744,073,709,551,616 bytes of data; expected at most"):
        read_idx(path)


def test_inflating_stops_at_the_limit(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(gzip.compress(bytes(20 << 20)))
    with pytest.raises(DataError, match="more than 1,048,576 bytes once decompressed"):
        read_bytes(path, limit=1 << 20)
    assert peak_mb(refusing(read_bytes, path, limit=1 << 20)) < 4


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [100_000, 12_000], ids=["error", "warning"])
def test_a_png_decompression_bomb_is_a_data_error(tmp_path, side):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "bomb.png").write_bytes(png_claiming(side, side))
    with pytest.raises(DataError, match=r"too large to decode safely.*MAX_IMAGE_PIXELS"):
        read_image_folder(tmp_path)


def raw_safetensors(path: Path, header: bytes) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_deeply_nested_headers_are_model_file_errors(tmp_path):
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ModelFileError, match="nested too deeply"):
        load_model(raw_safetensors(tmp_path / "deep.safetensors", deep))
    arch = {"kind": "mlp", "input_shape": [2], "widths": [], "n_classes": 2}
    path = lesion_file(tmp_path / "a.safetensors", build_model(arch).state_dict(), "[" * 100_000)
    with pytest.raises(ModelFileError, match="nested too deeply"):
        load_model(path)


def test_a_tensor_whose_bytes_do_not_match_its_shape_is_refused(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4]}})
    path = tmp_path / "lie.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(4))
    with pytest.raises(ModelFileError, match="takes 4,000,000,000,000 bytes, but its data_offsets span 4"):
        load_model(path)


def test_ordinary_models_still_load(tmp_path):
    from lesion.models import save_model

    arch = {"kind": "mlp", "input_shape": [1, 8, 8], "widths": [16], "n_classes": 10}
    save_model(build_model(arch, seed=0), tmp_path / "ok.safetensors", arch=arch)
    model, _ = load_model(tmp_path / "ok.safetensors")
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
