"""Data files are untrusted input too (issue 30, items 3, 5 and 7): a reader costs in proportion to what
is used, refuses what it cannot read with a DataError that says why, and never blocks on a FIFO."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest
import torch

from lesion.data import from_arrays, from_npz, read_token_ids, tokenize_file
from lesion.errors import DataError, LesionNote
from tests.hostile_support import finishes, python_code

BOMBS = """
import json, sys, time
import numpy as np
from lesion.data import from_npz, read_token_ids
from lesion.errors import LesionError
out = {}
for name, fn, path in [("labels", from_npz, "labels.npz"), ("npy_header", read_token_ids, "bomb.npy"),
                       ("npz_header", read_token_ids, "bomb.npz"), ("npz_x_header", from_npz, "xbomb.npz")]:
    start = time.perf_counter()
    try:
        fn(path)
        result = "ok"
    except LesionError as e:
        result = "refused: " + str(e)[:300]
    except BaseException as e:
        result = "RAW " + type(e).__name__
    out[name] = [result, time.perf_counter() - start, peak_mb()]  # peak_mb: see hostile_support.PEAK
print("RESULT", json.dumps(out))
"""


def npy_claiming(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """A valid .npy header claiming ``shape``, followed by 16 bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(16)


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_data_bombs_are_refused_under_a_gigabyte(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    y = np.arange(40) % 2
    y[:2] = 10**9  # one label of a billion: one more class, not a billion class names
    np.savez(tmp_path / "labels.npz", x=x, y=y)
    (tmp_path / "bomb.npy").write_bytes(npy_claiming((10**12,)))  # ~100 bytes claiming 8 TB
    (tmp_path / "bomb.npz").write_bytes(zip_of({"input_ids.npy": npy_claiming((10**12,), "<i8")}))
    (tmp_path / "xbomb.npz").write_bytes(
        zip_of({"x.npy": npy_claiming((10**6, 10**6)), "y.npy": npy_claiming((2,))})
    )
    ran = python_code(BOMBS, cwd=tmp_path, timeout=120)
    line = next((s for s in ran.out.splitlines() if s.startswith("RESULT ")), None)
    assert line is not None and not ran.timed_out, ran.out[-3000:]
    results = json.loads(line.removeprefix("RESULT "))
    assert results["labels"][0] == "ok"  # read, with a LesionNote (warnings are not errors in the child)
    for name in ("npy_header", "npz_header", "npz_x_header"):
        assert results[name][0].startswith("refused:") and "header claims shape" in results[name][0], results
    for name, (_, seconds, peak_mb) in results.items():
        assert seconds < 5 and peak_mb < 1024, (name, seconds, peak_mb)
    assert ran.rss_mb < 1024


def test_labels_are_their_distinct_values():
    x = np.zeros((6, 2), dtype=np.float32) + np.arange(6)[:, None]
    with pytest.warns(
        LesionNote, match=r"3 distinct values between 0 and 1000000000; they are classes 0\.\.2"
    ):
        d = from_arrays(x, np.array([0, 7, 10**9, 0, 7, 10**9]), test_fraction=0.5, normalise=False)
    assert d.classes == ("0", "7", "1000000000") and d.n_classes == 3
    assert sorted(torch.cat([d.y_train, d.y_test]).tolist()) == [0, 0, 1, 1, 2, 2]
    d = from_arrays(x, np.array([0, 1, 2, 0, 1, 2]), test_fraction=0.5)  # 0..K-1: no note, unchanged
    assert d.classes == ("0", "1", "2")


def test_an_over_limit_npz_says_it_is_over_the_limit(tmp_path, monkeypatch):
    import lesion.data._arrays as arrays

    np.savez(tmp_path / "d.npz", x=np.zeros((10, 100), np.float32), y=np.zeros(10, np.int64))
    monkeypatch.setattr(arrays, "MAX_DATA_BYTES", 1000)
    with pytest.raises(DataError, match=r"over the limit of 1,000 bytes") as e:
        from_npz(tmp_path / "d.npz")
    assert "pickled" not in str(e.value)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((0, 3)), r"shape \(0, 3\); expected at least one example"),
        (np.zeros((4, 0)), r"shape \(4, 0\); expected at least one example of at least one value"),
        (np.ones((4, 2)) * (1 + 2j), "complex dtype complex128; expected real numbers"),
    ],
    ids=["no-examples", "zero-width", "complex"],
)
def test_empty_zero_width_and_complex_inputs(x, message):
    with pytest.raises(DataError, match=message):
        from_arrays(x, np.zeros(len(x), dtype=np.int64))
    with pytest.raises(DataError, match="holds no labels"):
        from_arrays(np.zeros((2, 2)), np.zeros(0, dtype=np.int64))


class CountingTokenizer:
    """Whitespace words as ids 1..9; counts the characters it was given."""

    def __init__(self) -> None:
        self.chars = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        self.chars += len(text)
        return {"input_ids": [1 + len(w) % 9 for w in text.split()]}


def test_text_is_tokenised_only_as_far_as_needed(tmp_path):
    path = tmp_path / "big.txt"
    words = " ".join(["lesion"] * 200_000) + "\n"  # 1.4 MB a line
    path.write_text(words * 20)  # 28 MB
    tok = CountingTokenizer()
    ids = tokenize_file(path, tok, max_tokens=64 * 16)
    assert len(ids) == 1024 and tok.chars <= 2 * (1 << 20)  # one or two chunks, never the 28 MB
    small = tmp_path / "small.txt"
    small.write_text("a bb ccc " * 1000)
    whole = tokenize_file(small, CountingTokenizer())
    assert whole.tolist() == CountingTokenizer()("a bb ccc " * 1000)["input_ids"]
    assert tokenize_file(small, CountingTokenizer(), max_tokens=5).tolist() == whole[:5].tolist()


def test_a_fifo_data_file_is_refused_without_blocking(tmp_path):
    fifos = [tmp_path / name for name in ("ids.npy", "ids.txt", "d.npz")]
    for f in fifos:
        os.mkfifo(f)
    calls = [lambda: read_token_ids(fifos[0]), lambda: read_token_ids(fifos[1]), lambda: from_npz(fifos[2]),
             lambda: tokenize_file(fifos[1], CountingTokenizer())]  # fmt: skip
    for fn in calls:
        error = finishes(fn, fifos)
        assert isinstance(error, DataError) and "FIFO" in str(error), error


def test_token_id_arrays_are_still_read(tmp_path):
    ids = np.arange(12, dtype=np.int32)
    np.save(tmp_path / "a.npy", ids)
    np.savez(tmp_path / "b.npz", input_ids=ids.reshape(3, 4))
    np.save(tmp_path / "f.npy", np.asfortranarray(ids.reshape(3, 4)))
    for name in ("a.npy", "b.npz"):
        assert read_token_ids(tmp_path / name).tolist() == list(range(12))
    assert read_token_ids(tmp_path / "f.npy").tolist() == ids.reshape(3, 4).reshape(-1).tolist()
    np.save(tmp_path / "o.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="Python objects"):
        read_token_ids(tmp_path / "o.npy")


@pytest.mark.parametrize("side", [5_000, 12_000, 100_000], ids=["lesion", "pillow-warning", "pillow-error"])
def test_one_pixel_limit_for_every_image(tmp_path, side):
    """Issue 30, item 7: one limit (lesion.data._folder.MAX_IMAGE_PIXELS, 2^24) and one message, whether
    lesion's header check or Pillow's bomb check fires; 5,000 x 5,000 passed Pillow's before."""
    from lesion.data import read_image_folder
    from lesion.data._folder import MAX_IMAGE_PIXELS
    from tests.test_bombs import png_claiming

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "big.png").write_bytes(png_claiming(side, side))
    with pytest.raises(DataError, match=rf"too large to decode safely.*at most {MAX_IMAGE_PIXELS:,} pixels"):
        read_image_folder(tmp_path)
