"""Token data for language models: a text file tokenised with the model's tokenizer, a file of token
ids, or a built-in synthetic corpus, cut into fixed-length sequences ``{"input_ids": (n, seq_len)}``
that ``NextTokenLoss`` scores.

Token-id files: ``.npy``, ``.npz`` (the array ``input_ids``, ``tokens`` or ``ids``, or the only one),
``.safetensors`` (likewise) of integer ids, or text of whitespace-separated integers. The ids are read
as one stream (a 2-D array row after row) and cut into consecutive sequences; a last piece shorter
than ``seq_len`` is dropped.

>>> d = token_sequences(np.arange(10), seq_len=4, vocab_size=10, context=8)
>>> d["input_ids"].tolist()
[[0, 1, 2, 3], [4, 5, 6, 7]]
"""

from __future__ import annotations

import codecs
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesion.data._formats import MAX_DATA_BYTES, open_data, read_bytes
from lesion.data._npy import read_npy_bytes, read_npz
from lesion.errors import DataError

DEFAULT_SEQ_LEN = 64
ID_KEYS = ("input_ids", "tokens", "ids")
CORPORA = ("markov", "repeat")  # built-in synthetic token corpora (see ``builtin_tokens``)


def default_seq_len(context: int | None) -> int:
    """``min(64, context)``."""
    return DEFAULT_SEQ_LEN if context is None else min(DEFAULT_SEQ_LEN, context)


def token_sequences(
    ids,
    *,
    seq_len: int | None = None,
    vocab_size: int | None = None,
    context: int | None = None,
    tokenizer: str = "token ids",
    max_sequences: int | None = None,
) -> dict[str, torch.Tensor]:
    """Cut a stream of token ids into ``{"input_ids": (n, seq_len)}`` (int64).

    DataError for: ``seq_len`` longer than the model's ``context`` (naming both), an id outside
    ``0..vocab_size - 1`` (naming the id, the vocabulary size and ``tokenizer``, i.e. where the ids
    came from), fewer than 2 tokens. Fewer tokens than ``seq_len``: one shorter sequence of them all.
    """
    stream = np.asarray(ids).reshape(-1)
    if stream.dtype.kind not in "iu":
        raise DataError(f"token ids have dtype {stream.dtype}; expected integers")
    seq_len = default_seq_len(context) if seq_len is None else seq_len
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise DataError(f"seq_len={seq_len!r}; expected an int >= 2 (a next token needs a token before it)")
    check_token_ids(stream, seq_len=seq_len, vocab_size=vocab_size, context=context, tokenizer=tokenizer)
    if stream.size < 2:
        raise DataError(f"the data holds {stream.size} token(s); expected at least 2 (the text is empty?)")
    n = max(1, stream.size // seq_len)
    if max_sequences is not None:
        n = min(n, max_sequences)
    width = min(seq_len, stream.size)
    seqs = stream[: n * width].reshape(n, width).astype(np.int64)
    return {"input_ids": torch.from_numpy(np.ascontiguousarray(seqs))}


def check_token_ids(
    ids,
    *,
    seq_len: int | None = None,
    vocab_size: int | None = None,
    context: int | None = None,
    tokenizer: str = "token ids",
) -> None:
    """DataError for sequences longer than the model's ``context`` or ids outside ``0..vocab_size - 1``
    (naming where the ids came from); the one check of ``lesion analyze`` and of the Python API (a GPT-2
    would fail with "index out of range", a Llama would silently run past its positions)."""
    if context is not None and seq_len is not None and seq_len > context:
        raise DataError(
            f"sequences of {seq_len} tokens are longer than the model's context of {context} positions; "
            f"expected --seq-len at most {context}"
        )
    ids = ids if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if (ids.numel() if isinstance(ids, torch.Tensor) else ids.size) == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        raise DataError(f"token id {low} is negative; expected ids >= 0 ({tokenizer})")
    if vocab_size is not None and high >= vocab_size:
        raise DataError(
            f"token id {high} is outside the model's vocabulary of {vocab_size} "
            f"(ids 0..{vocab_size - 1}); the ids come from {tokenizer}: a tokenizer/vocabulary mismatch"
        )


def read_token_ids(path: str | Path) -> np.ndarray:
    """The token ids of a ``.npy`` / ``.npz`` / ``.safetensors`` file or a text file of integers."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no token file at {path}; expected .npy, .npz, .safetensors or a text file of ids")
    suffix = path.suffix.lower()
    raw = read_bytes(path, limit=MAX_DATA_BYTES)
    if suffix == ".npy":
        arr = _npy(raw, path)
    elif suffix == ".npz":
        arr = _npz(raw, path)
    elif suffix == ".safetensors":
        arr = _safetensors(raw, path)
    else:
        arr = _text_ids(raw, path)
    if arr.dtype.kind not in "iu":
        raise DataError(f"{path}: token ids have dtype {arr.dtype}; expected integers")
    return arr.reshape(-1)


TEXT_CHUNK = 1 << 20  # characters of text tokenised at a time


def tokenize_file(path: str | Path, tokenizer: Any, *, max_tokens: int | None = None) -> np.ndarray:
    """The token ids of a UTF-8 text file (gzipped or not), by a Hugging Face tokenizer; DataError for an
    empty text. With ``max_tokens`` the file is read and tokenised in chunks (cut before whitespace)
    only until that many tokens are there, so a large file costs what is used."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no text file at {path}")
    decoder, ids, pending, read = codecs.getincrementaldecoder("utf-8")(), [], "", 0
    with open_data(path) as f:
        while max_tokens is None or len(ids) < max_tokens:
            raw = f.read(TEXT_CHUNK)
            read += len(raw)
            if read > MAX_DATA_BYTES:
                raise DataError(
                    f"{path}: more than {MAX_DATA_BYTES:,} bytes of text (lesion.data.MAX_DATA_BYTES)"
                )
            try:
                text = pending + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text ({e})") from None
            cut = len(text) if not raw else max(text.rfind(" "), text.rfind("\n"), 0)
            cut = len(text) if cut == 0 and len(text) > 4 * TEXT_CHUNK else cut  # no whitespace at all
            chunk, pending = text[:cut], text[cut:]
            if chunk.strip():
                ids += tokenizer(chunk, add_special_tokens=False)["input_ids"]
            if not raw:
                break
    if not ids:
        raise DataError(f"{path} holds no text; expected some text to tokenise")
    return np.asarray(ids[:max_tokens] if max_tokens else ids, dtype=np.int64)


def _npy(raw: bytes, path: Path) -> np.ndarray:
    return read_npy_bytes(raw, str(path), MAX_DATA_BYTES)


def _npz(raw: bytes, path: Path) -> np.ndarray:
    arrays = read_npz(io.BytesIO(raw), str(path), MAX_DATA_BYTES)
    return arrays[_pick(list(arrays), path)]


def _safetensors(raw: bytes, path: Path) -> np.ndarray:
    from safetensors.numpy import load

    try:
        arrays = load(raw)
    except Exception as e:  # safetensors has its own error types
        raise DataError(f"{path}: not a readable safetensors file ({e})") from None
    return arrays[_pick(list(arrays), path)]


def _pick(names: list[str], path: Path) -> str:
    for k in ID_KEYS:
        if k in names:
            return k
    if len(names) == 1:
        return names[0]
    raise DataError(f"{path} holds arrays {names}; expected one array, or one named {' / '.join(ID_KEYS)}")


def _text_ids(raw: bytes, path: Path) -> np.ndarray:
    words = raw.decode("utf-8", errors="replace").split()
    try:
        return np.array([int(w) for w in words], dtype=np.int64)
    except ValueError:
        bad = next(w for w in words if not w.lstrip("-").isdigit())
        raise DataError(
            f"{path}: {bad[:30]!r} is not a token id; expected whitespace-separated integers (for plain "
            "text use --text with a model directory that has a tokenizer)"
        ) from None


def builtin_tokens(name: str, *, n: int = 512, seq_len: int = 32, seed: int = 0) -> tuple[np.ndarray, int]:
    """A deterministic synthetic corpus: ``n`` sequences (n, seq_len) and its vocabulary size.

    ``markov``: a 32-token Markov chain in which each token has 2 likely successors (a bigram task:
    the best next-token loss is about log 2). ``repeat``: 16 random tokens, then the same 16 again
    (an induction task over a vocabulary of 32; the second half is predictable from the first).

    >>> ids, vocab = builtin_tokens("repeat", n=2, seq_len=8)
    >>> ids.shape, vocab, bool((ids[:, :4] == ids[:, 4:]).all())
    ((2, 8), 32, True)
    """
    rng = np.random.default_rng([seed, CORPORA.index(name) if name in CORPORA else 99])
    vocab = 32
    if name == "markov":
        succ = rng.integers(0, vocab, size=(vocab, 2))  # two successors per token
        out = np.empty((n, seq_len), dtype=np.int64)
        out[:, 0] = rng.integers(0, vocab, n)
        for t in range(1, seq_len):
            out[:, t] = succ[out[:, t - 1], rng.integers(0, 2, n)]
        return out, vocab
    if name == "repeat":
        half = rng.integers(0, vocab, size=(n, seq_len // 2))
        return np.concatenate([half, half], axis=1).astype(np.int64), vocab
    raise DataError(f"unknown token corpus {name!r}; built-in corpora: {', '.join(CORPORA)}")
