"""Evaluate a model, intact or lesioned, on a dataset: loss, accuracy, per-class accuracy.

``Evaluator`` holds validated batches on the model's device so that a sweep evaluates many lesions over
the same data without re-reading it. This is the obvious implementation, one full forward pass per
lesion; it is the reference that faster engines are checked against.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesion import interventions as iv
from lesion._batches import Data, batches, check_labels, reusable
from lesion._util import eval_mode, model_device
from lesion.errors import DataError, LesionError
from lesion.lesioning import Edit, hooks
from lesion.sites import Site
from lesion.stats import forward
from lesion.units import Unit


@dataclass(frozen=True)
class Evaluation:
    """Mean cross-entropy loss, accuracy and per-class accuracy over ``n`` examples."""

    n: int
    loss: float
    accuracy: float
    per_class_accuracy: np.ndarray  # (classes,), NaN for a class absent from the data
    confusion: np.ndarray  # (classes, classes): rows true class, columns predicted


class Evaluator:
    """Evaluate ``model`` on fixed ``data`` under any number of lesions.

    ``run`` is the reference: one full forward pass per lesion, with hooks. ``single_units`` and
    ``cumulative`` use the fast engine (``lesion.engine``) where the model allows it and it agrees
    with the reference on a check, and fall back to ``run`` otherwise (``engine=False`` forces that).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        sites: Sequence[Site],
        *,
        batch_size: int = 1000,
        engine: bool = True,
        precision: str = "fp32",
    ):
        self.model = model
        self.sites = {s.name: s for s in sites}
        self.device = model_device(model)
        self.batch_size = batch_size
        # re-iterable data (tensors, DataLoaders, lists) streams on every pass; one-shot iterators are kept
        self.data = reusable(data)
        self.n = 0
        self.intact = self.run(None)
        self.use_engine = engine
        if precision not in ("fp32", "bf16"):
            raise LesionError(f"unknown precision {precision!r}; expected 'fp32' or 'bf16'")
        self.precision = precision
        self.deviation: dict[str, float] = {}  # bf16 only: largest |loss - fp32 loss| seen in checks
        self._engine = None
        self._cumulative_checked = False
        self.fallbacks: dict[str, str] = {}  # why the engine was not used, by layer or sweep

    @property
    def n_classes(self) -> int:
        return self.intact.confusion.shape[0]

    def run(self, edits: Mapping[str, Edit] | None) -> Evaluation:
        """Evaluate with the given output edits applied (None: intact)."""
        loss, conf = 0.0, None
        with torch.no_grad(), eval_mode(self.model), hooks(self.model, edits or {}):
            n = 0
            for k, (x, y) in enumerate(self.batches()):
                n += len(y)
                logits = forward(self.model, x, k)
                c = logits.shape[1]
                check_labels(y, c, k)
                loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                pairs = y * c + logits.argmax(1)
                counts = torch.bincount(pairs, minlength=c * c).reshape(c, c).cpu()
                conf = counts if conf is None else conf + counts
        if self.n and n != self.n:
            raise DataError(
                f"the data yielded {n} examples on this pass and {self.n} before; expected the same"
            )
        self.n = n
        return _summarise(loss, conf.numpy(), n)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The data's validated batches, on the model's device, streamed anew on every call."""
        for x, y in batches(self.data, batch_size=self.batch_size):
            yield x.to(self.device), y.to(self.device)

    def clamp_edits(self, selection, value, means=None) -> dict[str, Edit]:
        """Edits that clamp the units of ``selection`` to ``value`` (or to their ``means`` per layer)."""
        edits = {}
        for layer, idx in selection.items():
            if len(idx) == 0:
                continue
            site = self.sites[layer]
            if means is not None:
                vals = means[layer][list(idx)]
                edits[layer] = lambda h, i=list(idx), v=vals, d=site.unit_dim: iv.clamp(h, i, v, d)
            elif value == 0.0:
                keep = torch.ones(site.width, device=model_device(self.model))
                keep[list(idx)] = 0.0
                edits[layer] = lambda h, m=keep, d=site.unit_dim: iv.mask(h, m, d)
            else:
                edits[layer] = lambda h, i=list(idx), v=value, d=site.unit_dim: iv.clamp(h, i, v, d)
        return edits

    # ------------------------------------------------------------------------------------- sweeps
    def engine(self):
        """The fast engine for this model and data, or None where it cannot be used."""
        if self.use_engine and self._engine is None and "*" not in self.fallbacks:
            from lesion.engine import Engine, Unsupported

            try:
                self._engine = Engine(self.model, self.batches, list(self.sites.values()))
            except Unsupported as exc:
                self.fallbacks["*"] = str(exc)
        return self._engine

    def single_units(
        self, units: Sequence[Unit], value: float | str, means=None, *, bar=None
    ) -> list[Evaluation]:
        """Evaluate each unit deleted alone (clamped to ``value`` or its mean)."""
        results: dict[Unit, Evaluation] = {}
        for layer, idx in _by_layer(units).items():
            done = self._engine_single(layer, idx, value, means, bar)
            if done is None:
                done = []
                for i in idx:
                    done.append(self.run(self.clamp_edits({layer: [i]}, value, means)))
                    if bar is not None:
                        bar.update(1)
            results.update({Unit(layer, i): r for i, r in zip(idx, done, strict=True)})
        return [results[u] for u in units]

    def _engine_single(self, layer, idx, value, means, bar) -> list[Evaluation] | None:
        from lesion.engine import Unsupported

        eng = self.engine()
        if eng is None or layer in self.fallbacks:
            return None
        fill = self._fill(layer, value, means)
        out: list[Evaluation] = []
        block = 256
        try:
            with torch.no_grad(), eval_mode(self.model), self._autocast():
                for i in range(0, len(idx), block):
                    loss, conf = eng.single_units(layer, idx[i : i + block], fill, self.n_classes)
                    out += [_summarise(lo, c, self.n) for lo, c in zip(loss, conf, strict=True)]
                    if i == 0:
                        self._check_single(layer, idx[:2], out[:2], value, means)
                    if bar is not None:
                        bar.update(len(idx[i : i + block]))
        except (Unsupported, _Mismatch) as exc:
            self.fallbacks[layer] = str(exc)
            return None
        return out

    def _check_single(self, layer, idx, fast, value, means) -> None:
        for i, f in zip(idx, fast, strict=False):
            self._agree(self.run(self.clamp_edits({layer: [i]}, value, means)), f.loss, f.accuracy)

    def cumulative(
        self, seq: Sequence[Unit], counts: Sequence[int], value: float | str, means=None
    ) -> list[tuple[float, float]]:
        """(accuracy, loss) after deleting the first k units of ``seq``, for each k in ``counts``."""
        from lesion.engine import Unsupported

        eng = self.engine()
        key = "cumulative"
        if eng is not None and key not in self.fallbacks:
            layers = {u.layer for u in seq}
            fills = None if value == 0 else {n: self._fill(n, value, means) for n in layers}
            try:
                with torch.no_grad(), eval_mode(self.model), self._autocast():
                    loss, correct = eng.cumulative(
                        [(u.layer, u.index) for u in seq], counts, fills, self.n_classes
                    )
                out = [(c / self.n, lo / self.n) for c, lo in zip(correct, loss, strict=True)]
                if not self._cumulative_checked:
                    for k, (acc, lo) in list(zip(counts, out, strict=True))[-2:]:
                        ref = self._naive_cumulative(seq, k, value, means)
                        self._agree(ref, lo, acc)
                    self._cumulative_checked = True
                return out
            except (Unsupported, _Mismatch) as exc:
                self.fallbacks[key] = str(exc)
        return [(r.accuracy, r.loss) for r in (self._naive_cumulative(seq, k, value, means) for k in counts)]

    def _autocast(self):
        """bf16 autocast for the engine's work when asked for (AMX on CPUs, tensor cores on GPUs)."""
        device = model_device(self.model).type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _agree(self, ref: Evaluation, loss: float, accuracy: float) -> None:
        """Check a fast result against the reference; in bf16 record the deviation instead."""
        if self.precision == "bf16":
            worst = max(self.deviation.get("loss", 0.0), abs(ref.loss - loss))
            self.deviation["loss"] = worst
            return
        _agree(ref, loss, accuracy, self.n)

    def _naive_cumulative(self, seq, k, value, means) -> Evaluation:
        return self.intact if k == 0 else self.run(self.clamp_edits(_by_layer(seq[:k]), value, means))

    def _fill(self, layer: str, value, means) -> torch.Tensor | None:
        if means is not None:
            return torch.as_tensor(means[layer], dtype=torch.float32)
        if value == 0:
            return None
        return torch.full((self.sites[layer].width,), float(value))


def _summarise(loss: float, conf: np.ndarray, n: int) -> Evaluation:
    totals = conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(totals > 0, np.diag(conf) / totals, np.nan)
    return Evaluation(n, loss / n, float(np.trace(conf)) / n, per_class, conf)


def evaluate(
    model: nn.Module, data: Data, *, edits: Mapping[str, Edit] | None = None, batch_size: int = 1000
) -> Evaluation:
    """Loss, accuracy, per-class accuracy and confusion matrix of ``model`` on ``data`` (eval mode).

    Use inside a lesioning context (``lesion.ablate``) to evaluate a lesioned model.
    """
    ev = Evaluator(model, data, [], batch_size=batch_size)
    return ev.run(edits) if edits else ev.intact


class _Mismatch(Exception):
    """The engine disagreed with the reference on a check."""


def _agree(ref: Evaluation, loss: float, accuracy: float, n: int) -> None:
    tol_examples = max(1, n // 1000)  # float rounding may flip a near-tie prediction
    if (
        abs(ref.loss - loss) > 1e-4 * max(1.0, abs(ref.loss))
        or abs(ref.accuracy - accuracy) * n > tol_examples
    ):
        raise _Mismatch(
            f"engine gave loss {loss:.6g}, accuracy {accuracy:.6g}; "
            f"reference {ref.loss:.6g}, {ref.accuracy:.6g}"
        )


def _by_layer(units: Sequence[Unit]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for u in units:
        out.setdefault(u.layer, []).append(u.index)
    return out
