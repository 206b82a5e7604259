"""The runner: a model, fixed data and a metric, evaluating any lesions; the slow path that defines them.

For each lesion, ``with`` its hooks applied and one full forward pass per batch, scored by the metric.
The fast engine (``lesion.engine.dispatch``) is checked against this path before it is trusted.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from lesion.core.batch import Batch, Data, batches, check_tokens, output_tensor, reusable, token_limits
from lesion.core.lesions import Applied, Lesion, apply, aside, fit_lesions
from lesion.core.metric import Classification, Metric
from lesion.core.sites import Site
from lesion.errors import DataError, LesionError, LesionNote
from lesion.util import Precision
from lesion.util.modules import eval_mode, model_device

CHECKS = 2  # lesions per layer (and per cumulative order) re-run on the slow path before trusting the engine
SPREAD = 8  # a check on a spread subset (check_examples) re-runs 1 example in SPREAD of every batch, at least
# SPREAD of each (all of a smaller batch)


def check_examples(b: Batch) -> torch.Tensor:
    """Positions of the spread subset of batch ``b`` that a subset check re-runs: ``max(SPREAD,
    ceil(len(b) / SPREAD))`` examples evenly spaced from the first to the last (every example of a batch of
    ``SPREAD`` or fewer)."""
    n = len(b)
    m = min(n, max(SPREAD, -(-n // SPREAD)))
    return torch.linspace(0, n - 1, m).round().long().unique() if n else torch.zeros(0, dtype=torch.long)


class Mismatch(Exception):
    """The engine disagreed with the reference on a check."""


class Runner:
    """A model, fixed data and a metric: evaluates any lesions, on the engine where it is exact.

    ``measured``: statistics gathered with this metric on the same data (``collect_stats(...,
    metric=)``), whose intact values stand in for the runner's own intact pass."""

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        sites: Sequence[Site],
        *,
        metric: Metric | None = None,
        batch_size: int = 1000,
        engine: bool = True,
        precision: Precision = "fp32",
        measured=None,
    ):
        if precision not in ("fp32", "bf16"):
            raise LesionError(f"unknown precision {precision!r}; expected 'fp32' or 'bf16'")
        self.model, self.metric = model, metric if metric is not None else Classification()
        self.sites = {s.name: s for s in sites}
        self.device = model_device(model)
        self.batch_size, self.use_engine, self.precision = batch_size, engine, precision
        self.data = reusable(data)  # re-iterable data streams on every pass; one-shot iterators are kept
        self.tokens = token_limits(model)  # (context, vocabulary) of a language model, checked per batch
        self.n: int | None = None
        reuse = measured_intact(measured, self.data, self.metric, batch_size)
        if reuse is not None:  # measured in the statistics pass over the same data: no pass of our own
            self.intact, self.n = reuse.values, reuse.n
        else:
            self.intact = self.run([None])
        self.intact_values = {k: v[0] for k, v in self.intact.items()}
        self.deviation: dict[str, float] = {}  # bf16 only: largest |loss - fp32 loss| seen in checks
        self.fallbacks: dict[str, str] = {}  # why the engine was not used, by layer or sweep
        self._engine = None
        self.served = {"graph": 0, "prefix": 0}  # lesions each engine evaluated (after its checks)
        self._prefix = None  # the module-prefix engine (lesion.engine.prefix), made when first needed
        self._closed: dict = {}  # the closed-form last block's plan by layer (None: it does not apply)
        self._closed_memo: dict = {}  # its one recorded pass (2 examples), shared by every site
        self.shard_skip: float | None = None  # skipped(), as the shards of a ray sweep reported it
        self.cache_bytes: int | None = None  # a memory budget's cap on the engine's recorded outputs

    def batches(self) -> Iterator[Batch]:
        """The data's validated batches, on the model's device, streamed anew on every call."""
        for k, b in enumerate(batches(self.data, batch_size=self.batch_size)):
            check_tokens(b, self.tokens, k)
            yield b.to(self.device)

    def fresh(self, n: int) -> Metric:
        m = copy.copy(self.metric)  # the metric's settings; reset gives it its own sums
        m.reset(n)
        return m

    def fit(self, lesions: Sequence[Lesion]) -> list[Lesion]:
        """Resolve the lesions against the sites and fit their replacements on this data."""
        resolved = [les.resolve(list(self.sites.values())) for les in lesions]
        self._note_unscored(resolved)
        return fit_lesions(self.model, self.data, self.sites, resolved, metric=self.metric)

    def _note_unscored(self, lesions: Sequence[Lesion]) -> None:
        """A LesionNote for lesions only at the last position under a metric that does not score it
        (``unscored_last``: next-token loss, where no token follows), so in a causal model such a lesion
        cannot change the metric (it is always 0)."""
        if not self.metric.unscored_last or not any(les.units.positional for les in lesions):
            return
        first = next(iter(batches(self.data, batch_size=self.batch_size)), None)
        ids = None if first is None else first.kwargs.get("input_ids", first.args[0] if first.args else None)
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            return
        t = ids.shape[1]

        def last_only(les: Lesion) -> bool:
            where = [les.units.positions(layer) for layer in les.units]
            return all(p is not None and all(q % t == t - 1 for q in p) for p in where)

        idle = [str(les) for les in lesions if les.units.positional and last_only(les)]
        if idle:
            warnings.warn(
                f"{len(idle)} lesion(s), e.g. {', '.join(idle[:3])}, change only the last position (of {t}), "
                f"whose prediction {type(self.metric).__name__} does not score (no token follows it): in a "
                "causal model they "
                "cannot change the loss; choose a position that predicts a scored token, e.g. @-2",
                LesionNote,
                stacklevel=4,
            )

    def run(
        self, lesions: Sequence[Lesion | Sequence[Lesion] | None], *, bar=None, subset: bool = False
    ) -> dict[str, np.ndarray]:
        """The slow path: each lesion (None: intact; a list: applied together) with hooks, one full pass;
        the intact model is measured once per runner, and a None among ``lesions`` takes those values.
        ``subset``: on the spread subset of every batch only (``check_examples``; a subset check of an
        engine, which scores the same examples; constant replacements only, since a replacement drawn from
        the batch would draw from other examples)."""
        if subset:
            if not all(isinstance(les, Lesion) and les.replacement.constant for les in lesions):
                raise LesionError("a subset check takes single lesions with constant replacements")
            metric = self.fresh(len(lesions))
            for i, les in enumerate(lesions):
                self._into(metric, les, i, subset=True)
            return metric.compute()
        intact = getattr(self, "intact", None)
        if intact is not None and any(les is None for les in lesions):
            keep = [i for i, les in enumerate(lesions) if les is not None]
            got = self.run([lesions[i] for i in keep], bar=bar) if keep else {}
            if bar is not None:
                bar.update(len(lesions) - len(keep))
            out = {}
            for key, whole in intact.items():
                part = got.get(key, whole[:0])
                if part.shape[1:] != whole.shape[1:]:
                    break  # shapes that grew with the data seen (more classes): measure them all anew
                values = np.repeat(whole[:1], len(lesions), axis=0).astype(np.result_type(whole, part))
                values[keep] = part
                out[key] = values
            else:
                return out
        metric = self.fresh(len(lesions))
        for i, les in enumerate(lesions):
            for r, draw in enumerate(_draws(les)):
                if r == 0:
                    self._into(metric, draw, i)
                else:
                    metric.merge(self._one(draw, i, len(lesions)))
            if bar is not None:
                bar.update(1)
        return metric.compute()  # merged draws add sums and counts alike: values average over draws

    def _into(self, metric: Metric, lesion: Lesion | None, i: int, *, subset: bool = False) -> None:
        state = Applied()
        state.sites = dict(self.sites)
        n = 0
        together = [] if lesion is None else list(lesion) if isinstance(lesion, list | tuple) else [lesion]
        with torch.no_grad(), eval_mode(self.model), apply(self.model, together, state):
            for k, b in enumerate(self.batches()):
                n += len(b)  # every example of the data, also where only a subset is scored
                if subset:
                    b = b.take(check_examples(b))
                state.batch, state.batch_index = b, k
                out = output_tensor(self._forward(b, k))
                intact = None
                if metric.needs_intact:
                    with aside():
                        intact = output_tensor(self._forward(b, k))
                metric.update(out[None], b, slice(i, i + 1), intact=intact)
        if self.n is not None and n != self.n:
            raise DataError(
                f"the data yielded {n} examples on this pass and {self.n} before; expected the same"
            )
        self.n = n

    def _one(self, lesion, i, n) -> Metric:
        m = self.fresh(n)
        self._into(m, lesion, i)
        return m

    def _forward(self, b: Batch, k: int):
        try:
            return b.run(self.model)
        except (RuntimeError, TypeError) as exc:
            raise DataError(f"batch {k}: the model failed on inputs of shape {b.shapes()}: {exc}") from exc

    # ------------------------------------------------------------------------------------------ engine
    def skipped(self) -> float | None:
        """The fraction of (lesion, example) pairs the graph engine left out as unchanged (exact
        sparsity: the unit already held its replacement value), or None where it did no work."""
        eng = self._engine
        if eng is None or not getattr(eng, "examples", 0):
            return self.shard_skip
        return 1 - eng.computed / eng.examples

    def autocast(self):
        """bf16 autocast for the engine's work when asked for (AMX on CPUs, tensor cores on GPUs)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def agree(self, ref: dict[str, np.ndarray], fast: dict[str, np.ndarray], n: int | None = None) -> None:
        """Check fast results against the reference (on ``n`` examples, default all); in bf16 record the
        deviation instead."""
        if self.precision == "bf16":
            d = max(
                (float(np.nanmax(np.abs(ref[k] - fast[k]))) for k in ref if ref[k].ndim == 1), default=0.0
            )
            self.deviation["loss"] = max(self.deviation.get("loss", 0.0), d)
            return
        why = self.metric.close(ref, fast, self.n if n is None else n)
        if why is not None:
            raise Mismatch(why)


def measured_intact(measured, data, metric: Metric, batch_size: int):
    """``measured.intact`` (``lesion.core.stats.Intact``) where it was measured on these very tensors
    with an equal metric; else None."""
    from lesion.core.stats import data_key, same_metric

    intact = getattr(measured, "intact", None)
    if (
        intact is None
        or intact.batch_size != batch_size
        or intact.source != data_key(data)
        or not same_metric(intact.metric, metric)
    ):
        return None
    return intact


def _draws(lesion: Lesion | None) -> list[Lesion | None]:
    """A lesion once, or once per draw of a replacement with repeats (resample)."""
    if lesion is None or isinstance(lesion, list | tuple) or lesion.replacement.repeats <= 1:
        return [lesion]
    r = lesion.replacement
    return [lesion.with_replacement(r.draw(k)) for k in range(r.repeats)]
