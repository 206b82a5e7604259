"""Optimal ablation (Li & Janson 2024): the constant that minimises the expected loss with a unit deleted.

For each lesion, the constants of its units are fitted by gradient descent (Adam) on reference data,
starting from the better of zero and the units' means, and the best constants seen are kept, so the
loss on the reference data is never above that of zero or mean ablation. Many single-unit lesions of
a layer are fitted at once: the batch is repeated, one copy per lesion, each copy with its own unit
set to its own constant.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lesion.core.batch import Batch, batches, output_tensor
from lesion.core.replacements import Replacement
from lesion.core.sites import hook_site
from lesion.errors import LesionError
from lesion.util.modules import eval_mode, model_device

LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]  # (k, batch, ...) outputs -> (k,) mean losses


@dataclass(frozen=True)
class Optimal(Replacement):
    """The per-unit constant minimising the mean loss on ``reference`` (default: the sweep's data).

    ``loss(outputs (k, batch, ...), batch) -> (k,)``: by default the sweep's metric's own differentiable
    loss (``Metric.loss``, its ``main`` value); without a metric, cross-entropy for integer targets
    (next-token cross-entropy when there is none), mean squared error for float targets. Fitted on at
    most ``examples`` examples, ``steps`` Adam steps of learning rate ``lr``.
    """

    steps: int = 60
    lr: float = 0.05
    examples: int = 2000
    reference: Any = None
    loss: LossFn | None = None
    constants: dict | None = field(default=None, repr=False, compare=False)
    paths: dict | None = field(default=None, repr=False, compare=False)  # per layer: how the fit ran
    constant = True

    fitted_field = "constants"

    def fit(self, model, data, sites, lesions, metric=None) -> Optimal:
        if self.constants is not None:
            return self
        if self.loss is None and metric is not None:
            return replace(self, loss=metric_loss(metric)).fit(model, data, sites, lesions)
        ref = self.reference if self.reference is not None else data
        if ref is None:
            raise LesionError("Optimal() needs reference data: Optimal(reference=data), or use it in a sweep")
        batch = _head(ref, self.examples, model_device(model))
        jobs: dict[str, list[tuple[int, ...]]] = {}
        for les in lesions:
            if les.units.positional:
                raise LesionError(
                    "Optimal() fits constants for units at every position; drop the '@' positions"
                )
            for layer, idx in les.units.items():
                jobs.setdefault(layer, []).append(tuple(idx))
        constants, paths = {}, {}
        for layer, sets in jobs.items():
            unique = list(dict.fromkeys(sets))
            for (layer_, idx), c in _fit_layer(self, model, sites[layer], unique, batch, paths).items():
                constants[(layer_, idx)] = c
        return replace(self, constants=constants, paths=paths)

    def values(self, cur, ctx):
        key = (ctx.site.name, tuple(ctx.units.tolist()))
        if self.constants is None or key not in self.constants:
            raise LesionError(
                f"Optimal() was not fitted for units {list(key[1])[:5]} of {key[0]!r}; fit it first"
            )
        return self.constants[key].reshape(-1, ctx.site.group).to(device=cur.device, dtype=cur.dtype)

    def fill(self, site, lesion=None):
        idx = tuple(lesion.units[site.name]) if lesion is not None else None
        if self.constants is None or (site.name, idx) not in self.constants:
            raise LesionError(f"Optimal() was not fitted for this lesion of {site.name!r}")
        out = torch.zeros(site.width)
        out[list(idx)] = self.constants[(site.name, idx)].float().cpu()
        return out


def _head(data, n: int, device) -> Batch:
    """The first ``n`` examples of ``data`` as one batch on ``device``."""
    parts, got = [], 0
    for b in batches(data, batch_size=min(n, 1000)):
        parts.append(b.slice(0, n - got))
        got += len(parts[-1])
        if got >= n:
            break
    first = parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return Batch(
        tuple(torch.cat([p.args[i] for p in parts]) for i in range(len(first.args))),
        {k: torch.cat([p.kwargs[k] for p in parts]) for k in first.kwargs},
        None if first.target is None else cat("target"),
        {k: torch.cat([p.fields[k] for p in parts]) for k in first.fields},
        cat("ids"),
    ).to(device)


# memory the fit may hold for the copies of one block (autograd's saved tensors and the outputs): the
# block of copies is sized by the bytes one copy measured on its first pass, not by the input size
FIT_BYTES = 1 << 30


def _fit_layer(opt: Optimal, model, site, sets: list[tuple[int, ...]], batch: Batch, paths: dict) -> dict:
    """Constants for each unit set of ``site`` (fitted in blocks of copies of the batch); which forward
    path ran goes to ``paths[site.name]``."""
    from lesion.core.stats import collect_stats

    means = collect_stats(model, batch, [site], histograms=False, labels=False)[site.name].mean
    g = site.group  # a head view: each unit owns g channels, each with its own constant
    channels = [tuple(u * g + j for u in s for j in range(g)) for s in sets]
    out = {}
    with _frozen(model), eval_mode(model):
        forward = _Forward(model, site, batch)
        # one copy first: the bytes it holds size the blocks of copies that follow
        c, per_copy = _fit_block(opt, forward, channels[:1], batch, means, measure=True)
        out[(site.name, sets[0])] = c[0]
        block = max(1, min(64, FIT_BYTES // max(1, per_copy)))
        for i in range(1, len(sets), block):
            fitted, _ = _fit_block(opt, forward, channels[i : i + block], batch, means)
            for idx, c in zip(sets[i : i + block], fitted, strict=True):
                out[(site.name, idx)] = c
    paths[site.name] = forward.path
    return out


@contextmanager
def _frozen(model):
    """The model's parameters without gradients during the fit (restored after): autograd then keeps
    only what the constants' gradient needs, the layers after the site."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


class _Forward:
    """The model's output for k copies of the batch with the site's output edited.

    Where ``torch.fx`` traces the model (one tensor input, an output-hooked site), the layers before the
    site run once, without gradients, and each step runs only the layers after it on k copies of their
    cached inputs. Otherwise (a transformer, keyword inputs, a head view) the modules that finish before
    the site return their recorded outputs (``PrefixEngine.stubbing``) and the rest runs with a hook.
    Every fit checks its fast path against the hooked full model on its first pass and uses the full
    model where they disagree or the fast path fails (``path`` records which ran and why).
    """

    def __init__(self, model, site, batch: Batch):
        from lesion.engine.graph import Plan, Unsupported
        from lesion.engine.prefix import PrefixEngine

        self.model, self.site, self.batch = model, site, batch
        self.plan = self.stubs = None
        self.checked = False
        self.input_bytes = _bytes([*batch.args, *batch.kwargs.values()])
        self.copy_bytes = self.input_bytes  # what each copy repeats: the inputs, or the cached values
        try:
            if site.hook != "output" or batch.kwargs or len(batch.args) != 1:
                raise Unsupported("the site or the input is not one the traced graph handles")
            self.plan = Plan(model, [site.target])
            self.node = self.plan.site[site.target]
            self.front = self.plan.frontier([self.node])
            self.down = self.plan.downstream(self.node)
            with torch.no_grad():
                self.cache = self.plan.run_until(batch.args[0], set(self.front))
            self.copy_bytes = _bytes([self.cache[f] for f in self.front if f in self.plan.batched])
            self.path = "layers after the site"
            return
        except Unsupported as exc:
            self.plan, why = None, str(exc)
        try:  # the modules that finish before the site return their recorded output
            self.stubs, stubbed = PrefixEngine(model, lambda: [batch], [site]).stubbing(site, batch)
            self.copy_bytes = self.input_bytes + stubbed
            self.path = "modules before the site stubbed"
        except Unsupported as exc:
            self.path = f"full model: {why}; {exc}"

    def __call__(self, k: int, edit) -> torch.Tensor:
        if self.plan is None and self.stubs is None:
            return self._full(k, edit)
        try:
            out = self._suffix(k, edit) if self.plan is not None else self._stubbed(k, edit)
        except Exception as exc:  # any failure of the fast path: the full model
            return self._fall_back(f"the fast path failed ({exc})", k, edit)
        if self.checked:
            return out
        self.checked = True
        with torch.no_grad():
            full = self._full(k, edit)
        if full.shape != out.shape or not torch.allclose(out.detach(), full, rtol=1e-4, atol=1e-5):
            return self._fall_back("it disagreed with the full model on the first pass", k, edit)
        self.path += " (checked against the full model)"
        return out

    def _fall_back(self, why: str, k: int, edit) -> torch.Tensor:
        self.path = f"full model: {self.path} was refused, {why}"
        self.plan = self.stubs = None
        self.copy_bytes = self.input_bytes
        return self._full(k, edit)

    def _stubbed(self, k: int, edit) -> torch.Tensor:
        with self.stubs(k):
            return self._full(k, edit)

    def _full(self, k: int, edit) -> torch.Tensor:
        big = self.batch.map(lambda v: v.repeat(k, *[1] * (v.ndim - 1)))
        handle = hook_site(dict(self.model.named_modules())[self.site.target], self.site, edit)
        try:
            return output_tensor(big.run(self.model))
        finally:
            handle.remove()

    def _suffix(self, k: int, edit) -> torch.Tensor:
        env = self.plan.expand(self.cache, self.front, k, len(self.batch))
        env[self.node] = edit(env[self.node])
        self.plan.run(env, self.down)
        return output_tensor(env[self.plan.output])


def _fit_block(
    opt, forward: _Forward, sets, batch: Batch, means, measure: bool = False
) -> tuple[list[torch.Tensor], int]:
    """The fitted constants of each channel set, and (``measure``) the bytes one copy held on a pass."""
    site = forward.site
    k, m = len(sets), max(len(s) for s in sets)
    index = torch.tensor([list(s) + [s[-1]] * (m - len(s)) for s in sets])  # (k, m), padded by repeats
    device = model_device(forward.model)
    loss_fn = opt.loss or _default_loss

    sizes: list[int] = []  # bytes of the last output

    def losses(c: torch.Tensor) -> torch.Tensor:  # (k, m) constants -> (k,) mean losses
        def edit(raw):
            h = site.view(raw)
            u = h.movedim(site.unit_dim, -1).unflatten(0, (k, -1))  # (k, batch, ..., channels)
            mask = torch.zeros(k, u.shape[-1], dtype=torch.bool, device=h.device)
            mask[torch.arange(k)[:, None], index] = True
            vals = torch.zeros(k, u.shape[-1], dtype=h.dtype, device=h.device)
            vals = vals.scatter(1, index.to(h.device), c.to(h.dtype))
            shape = (k, *[1] * (u.ndim - 2), u.shape[-1])
            u = torch.where(mask.reshape(shape), vals.reshape(shape), u)
            return site.unview(u.flatten(0, 1).movedim(-1, site.unit_dim), raw)

        out = forward(k, edit)
        sizes[:] = [out.numel() * out.element_size()]
        return loss_fn(out.reshape(k, len(batch), *out.shape[1:]), batch)

    with torch.no_grad():
        zero = torch.zeros(k, m, device=device)
        mean = means[index].to(device)
        l0, l1 = losses(zero), losses(mean)
    saved_bytes = 0
    start = torch.where((l1 < l0)[:, None], mean, zero)
    best, best_loss = start.clone(), torch.minimum(l0, l1)
    c = start.clone().requires_grad_(True)
    optim = torch.optim.Adam([c], lr=opt.lr)
    for step in range(opt.steps):
        with _saved_bytes(measure and step == 0) as saved:
            lo = losses(c)
        saved_bytes = max(saved_bytes, saved[0])
        better = lo.detach() < best_loss
        best = torch.where(better[:, None], c.detach(), best)
        best_loss = torch.minimum(best_loss, lo.detach())
        (c.grad,) = torch.autograd.grad(lo.sum(), [c])  # the model's own .grad is never touched
        optim.step()
    with torch.no_grad():
        lo = losses(c)
        best = torch.where((lo < best_loss)[:, None], c.detach(), best)
    held = saved_bytes + forward.copy_bytes * k + 2 * sizes[0]  # autograd's, the copies', the output
    return [best[j, : len(s)].detach().cpu() for j, s in enumerate(sets)], held // k


def _bytes(values) -> int:
    return sum(v.numel() * v.element_size() for v in values if torch.is_tensor(v))


@contextmanager
def _saved_bytes(on: bool = True):
    """``[bytes]`` of the tensors autograd saves for the backward pass inside the block (``on``)."""
    total = [0]
    if not on:
        yield total
        return

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def metric_loss(metric) -> LossFn:
    """A metric's differentiable loss as a ``LossFn``: the mean ``main`` value of each of k copies, as
    ``metric.harm`` turns it (negated where higher is better: the optimal constant seeks the better end)."""

    def loss(out: torch.Tensor, batch: Batch) -> torch.Tensor:  # (k, batch, ...) -> (k,)
        return metric.harm(metric.losses(out, batch))

    return loss


def _default_loss(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean loss per copy without a metric: cross-entropy (integer targets), MSE (float targets), or
    next-token loss (no targets), each as its metric computes it (``Metric.losses``)."""
    from lesion.core.metric import MSE, Classification
    from lesion.core.metric_lm import NextTokenLoss

    y = batch.target
    metric = NextTokenLoss() if y is None else MSE() if y.dtype.is_floating_point else Classification()
    return metric.losses(out, batch)
