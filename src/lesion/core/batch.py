"""The one adapter between what a user passes as data and what a model and a metric need.

Accepted data: an ``(inputs, targets)`` pair of tensors or numpy arrays (inputs may be a tuple of
tensors for a model with several inputs), a dict of arrays with one leading example axis
(``input_ids``, ``attention_mask``, ``labels``), a bare tensor of inputs (no targets, e.g. token ids),
or any iterable of such batches (a DataLoader, a list). Every batch becomes a ``Batch``: positional
inputs, keyword inputs, the target, every named field, and the global ids of its examples (their
positions in the data), which resample and patch replacements use. Model outputs may be tensors,
tuples, dicts or Hugging Face ``ModelOutput`` objects; ``output_tensor`` takes the logits.

>>> import torch
>>> [len(b) for b in batches((torch.zeros(5, 3), torch.arange(5)), batch_size=2)]
[2, 2, 1]
>>> b = next(batches({"input_ids": torch.zeros(4, 7, dtype=torch.long), "labels": torch.ones(4, 7)}))
>>> sorted(b.kwargs), tuple(b.target.shape), b.ids.tolist()
(['input_ids'], (4, 7), [0, 1, 2, 3])
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from lesion.errors import DataError, LesionNote

Data = Any  # see the module docstring
TARGET_KEYS = ("labels", "label", "y", "target", "targets")


@dataclass
class Batch:
    """One batch: model inputs (positional and keyword), the target, named fields and example ids."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    target: torch.Tensor | None = None
    fields: dict[str, torch.Tensor] = field(default_factory=dict)
    ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.ids.numel())

    @property
    def x(self) -> torch.Tensor:
        """The single tensor input (the fast engine's case); DataError otherwise."""
        if len(self.args) != 1 or self.kwargs or not isinstance(self.args[0], torch.Tensor):
            raise DataError("this batch does not have exactly one tensor input")
        return self.args[0]

    def run(self, model: nn.Module) -> Any:
        """The model's raw output on this batch."""
        return model(*self.args, **self.kwargs)

    def map(self, fn) -> Batch:
        """Apply ``fn`` to every tensor of the batch (inputs, target, fields); ids stay as they are."""
        f = lambda v: fn(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return replace(
            self, args=tuple(f(a) for a in self.args), kwargs={k: f(v) for k, v in self.kwargs.items()},
            target=f(self.target), fields={k: f(v) for k, v in self.fields.items()},
        )  # fmt: skip

    def to(self, device: torch.device) -> Batch:
        return self.map(lambda v: v.to(device)).with_ids(self.ids)

    def slice(self, i: int, j: int) -> Batch:
        return self.map(lambda v: v[i:j]).with_ids(self.ids[i:j])

    def take(self, idx: torch.Tensor) -> Batch:
        """The examples at positions ``idx`` (a 1-D index tensor)."""
        return self.map(lambda v: v[idx.to(v.device)]).with_ids(self.ids[idx.to(self.ids.device)])

    def with_ids(self, ids: torch.Tensor) -> Batch:
        return replace(self, ids=ids)

    def shapes(self) -> str:
        """The inputs' shapes, for error messages: ``(4, 7)`` or ``input_ids=(4, 7)``."""
        parts = [str(tuple(a.shape)) for a in self.args if isinstance(a, torch.Tensor)]
        parts += [f"{k}={tuple(v.shape)}" for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)]
        return ", ".join(parts)

    def field(self, name: str) -> torch.Tensor:
        """A named field (``attention_mask``, ``labels``, ``target``, a keyword input such as
        ``input_ids``, or ``x`` for a single tensor input); a clear DataError when the batch lacks it."""
        if name == "target" and self.target is not None:
            return self.target
        if name in self.fields:
            return self.fields[name]
        if name in self.kwargs and isinstance(self.kwargs[name], torch.Tensor):
            return self.kwargs[name]
        if name == "x" and len(self.args) == 1 and isinstance(self.args[0], torch.Tensor):
            return self.args[0]
        have = ", ".join(sorted(self.names())) or "none"
        raise DataError(f"the batch has no field {name!r}; it has: {have}")

    def names(self) -> set[str]:
        """The names ``batch[name]`` answers to."""
        out = set(self.fields) | {k for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)}
        if self.target is not None:
            out.add("target")
        if len(self.args) == 1 and isinstance(self.args[0], torch.Tensor):
            out.add("x")
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        """``batch["target"]``, ``batch["attention_mask"]``...: the batch's fields by name, as a user who
        passed dict batches wrote them."""
        if not isinstance(name, str):
            have = sorted(self.names())
            raise DataError(f"batch[{name!r}]: expected a field name (str); the batch has {have}")
        return self.field(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()


def as_batch(item: Any, k: int = 0, *, start: int = 0) -> Batch:
    """One batch from a tensor, an ``(inputs, target)`` pair, a tuple of inputs, or a dict."""
    if isinstance(item, Batch):
        return item
    if isinstance(item, torch.Tensor | np.ndarray):
        x = _tensor(item, "inputs", k)
        return _made(Batch((x,)), _n(x, k), start)
    if isinstance(item, Mapping):
        return _from_dict(item, k, start)
    if isinstance(item, tuple | list) and len(item) == 2 and _is_target(item[1]):
        x, y = item
        args = tuple(_tensor(a, "inputs", k) for a in x) if isinstance(x, tuple | list) else None
        if isinstance(x, Mapping):
            b = _from_dict(x, k, start)
            return _with_target(b, _tensor(y, "targets", k), k)
        args = args if args is not None else (_tensor(x, "inputs", k),)
        b = _made(Batch(args), _n(args[0], k), start)
        return _with_target(b, None if y is None else _tensor(y, "targets", k), k)
    if isinstance(item, tuple | list) and item and all(_is_array(a) for a in item):
        args = tuple(_tensor(a, "inputs", k) for a in item)
        return _made(Batch(args), _n(args[0], k), start)
    raise DataError(
        f"batch {k} is a {type(item).__name__}; expected an (inputs, targets) pair, a tensor of inputs, "
        "or a dict such as {'input_ids': ..., 'attention_mask': ..., 'labels': ...}"
    )


def batches(data: Data, *, batch_size: int = 1000) -> Iterator[Batch]:
    """Yield validated batches with global example ids; DataError for malformed data or no examples."""
    start = 0
    shape = None
    for k, item in enumerate(_raw(data, batch_size)):
        b = as_batch(item, k, start=start)
        first = b.args[0] if b.args else next(iter(b.kwargs.values()))
        now = tuple(first.shape[1:]) if isinstance(first, torch.Tensor) else None
        if shape is not None and now is not None and now != shape and first.dtype.is_floating_point:
            raise DataError(f"batch {k}: inputs shaped {now} per example; earlier batches had {shape}")
        shape = shape or now
        start += len(b)
        if len(b):
            yield b
    if start == 0:
        raise DataError("the data holds no examples; expected at least one (inputs, targets) batch")


def reusable(data: Data) -> Data:
    """Data that can be passed over more than once: a one-shot iterator is read into a list."""
    return list(data) if isinstance(data, Iterator) else data


def first_batch(data: Data, n: int = 2) -> Batch:
    """The first ``n`` examples of ``data``, for a dry run (finding sites)."""
    b = next(batches(data, batch_size=n))
    return b.slice(0, n)


def token_limits(model: nn.Module) -> tuple[int | None, int | None]:
    """(context, vocabulary size) of a language model: a Hugging Face ``config`` (``n_positions`` /
    ``max_position_embeddings`` / ``n_ctx``, ``vocab_size``) or lesion's gpt (``context``,
    ``vocab_size``); (None, None) for other models."""
    config = getattr(model, "config", None)
    source = config if config is not None else model
    names = ("n_positions", "max_position_embeddings", "n_ctx") if config is not None else ("context",)
    context = next((v for n in names if _positive(v := getattr(source, n, None))), None)
    vocab = getattr(source, "vocab_size", None)
    return context, vocab if _positive(vocab) else None


def check_tokens(b: Batch, limits: tuple[int | None, int | None], k: int = 0) -> None:
    """DataError for a batch of token ids longer than the model's context or outside its vocabulary:
    the Python API checks what ``lesion analyze`` checks (``lesion.data.check_token_ids``)."""
    context, vocab = limits
    ids = b.kwargs.get("input_ids", b.args[0] if len(b.args) == 1 else None)
    if (context is None and vocab is None) or not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        return
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        return
    from lesion.data._text import check_token_ids

    check_token_ids(ids, seq_len=ids.shape[1], vocab_size=vocab, context=context, tokenizer=f"batch {k}")


def _positive(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def output_tensor(out: Any) -> torch.Tensor:
    """The tensor a metric scores: a tensor itself, ``logits`` of a dict or ModelOutput, or the first of
    a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) or hasattr(out, "logits"):
        logits = out.get("logits") if isinstance(out, Mapping) else out.logits
        if isinstance(logits, torch.Tensor):
            return logits
        values = [
            v for v in (out.values() if isinstance(out, Mapping) else ()) if isinstance(v, torch.Tensor)
        ]
        if values:
            return values[0]
    if isinstance(out, tuple | list) and out:
        return output_tensor(out[0])
    raise DataError(
        f"the model returned a {type(out).__name__}; expected a tensor, a tuple starting with one, or a dict "
        "or ModelOutput with 'logits'"
    )


def _raw(data: Data, batch_size: int) -> Iterable:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r}; expected a positive int")
    if isinstance(data, Batch):
        return (data.slice(i, i + batch_size) for i in range(0, len(data), batch_size))
    if _is_array(data) or (isinstance(data, tuple | list) and len(data) == 2 and _is_target(data[1])
                           and not _is_batch_list(data)):  # fmt: skip
        whole = as_batch(data)
        return (whole.slice(i, i + batch_size) for i in range(0, len(whole), batch_size))
    if isinstance(data, Mapping):
        whole = _from_dict(data, 0, 0)
        return (whole.slice(i, i + batch_size) for i in range(0, len(whole), batch_size))
    if _is_dataset(data):
        raise DataError(
            f"got a lesion Dataset ({data.name}); expected one split of it, e.g. (data.x_test, data.y_test)"
        )
    if isinstance(data, Iterable) and not isinstance(data, str | bytes):
        return data
    raise DataError(
        f"cannot read data from {type(data).__name__}; expected an (inputs, targets) pair of tensors, "
        "a dict of tensors, a DataLoader, or an iterable of batches"
    )


def _is_dataset(data) -> bool:
    return all(hasattr(data, a) for a in ("x_train", "y_train", "x_test", "y_test"))


def _is_array(v) -> bool:
    return isinstance(v, torch.Tensor | np.ndarray)


def _is_target(v) -> bool:
    return v is None or _is_array(v)


def _is_batch_list(data) -> bool:
    """True when ``data`` is a list of two (x, y) batches rather than one (inputs, targets) pair."""
    return all(isinstance(v, tuple | list | Mapping) for v in data)


def _from_dict(d: Mapping, k: int, start: int) -> Batch:
    fields = {str(key): _tensor(v, str(key), k) for key, v in d.items() if v is not None}
    if not fields:
        raise DataError(f"batch {k} is an empty dict; expected tensors such as input_ids")
    target_key = next((t for t in TARGET_KEYS if t in fields), None)
    inputs = {key: v for key, v in fields.items() if key != target_key}
    if not inputs:
        raise DataError(f"batch {k} holds only {target_key!r}; expected model inputs beside the targets")
    if set(inputs) <= {"x", "input"}:  # a dict form of an (x, y) pair
        b = Batch((next(iter(inputs.values())),), fields=fields)
    else:
        b = Batch((), inputs, fields=fields)
    b = _made(b, _n(next(iter(inputs.values())), k), start)
    return _with_target(b, fields.get(target_key) if target_key else None, k)


def _with_target(b: Batch, y: torch.Tensor | None, k: int) -> Batch:
    if y is not None and (y.ndim == 0 or y.shape[0] != len(b)):
        raise DataError(
            f"batch {k}: inputs of {len(b)} examples and targets of shape {tuple(y.shape)}; expected "
            "targets (batch, ...) of the same length, one entry per example"
        )
    return replace(b, target=y, fields={**b.fields, "target": y} if y is not None else b.fields)


def _made(b: Batch, n: int, start: int) -> Batch:
    for v in (*b.args, *b.kwargs.values()):
        if isinstance(v, torch.Tensor) and (v.ndim == 0 or v.shape[0] != n):
            raise DataError(f"model inputs have {tuple(v.shape)} and {n} examples; expected one leading axis")
    return b.with_ids(torch.arange(start, start + n))


def _n(x: torch.Tensor, k: int) -> int:
    if x.ndim == 0:
        raise DataError(f"batch {k}: inputs are a scalar; expected (batch, ...)")
    return int(x.shape[0])


def _tensor(v, what: str, k: int) -> torch.Tensor:
    if (isinstance(v, np.ndarray) and v.dtype.kind == "c") or (
        isinstance(v, torch.Tensor) and v.is_complex()
    ):
        raise DataError(
            f"batch {k}: {what} are complex ({v.dtype}); expected real numbers (pass x.real or abs(x))"
        )
    if isinstance(v, np.ndarray):
        if v.dtype == np.float64 or v.dtype == np.uint8:
            warnings.warn(
                f"{what}: numpy {v.dtype} converted to float32 (unscaled)", LesionNote, stacklevel=4
            )
            v = v.astype(np.float32)
        elif v.dtype == object or not (np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_):
            raise DataError(f"batch {k}: {what} have dtype {v.dtype}; expected numbers")
        return torch.from_numpy(np.ascontiguousarray(v))
    if not isinstance(v, torch.Tensor):
        raise DataError(f"batch {k}: {what} are a {type(v).__name__}; expected a tensor or numpy array")
    return v
